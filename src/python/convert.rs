//! Conversions at the boundary: Python values into the core's types, each in one place. A device
//! is parsed here and nowhere else (the loader, and any other entry point that takes a device, use
//! `Device`; Python's `resolve_device` is the same parser), and so are the numbers that the core
//! keeps unsigned but that Python callers may give negative.
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::loader::OutKind;

/// `DeviceError`, raised for a device string fastcifar does not know: both a `ValueError` (a bad
/// argument, as fastcifar's API says) and a `RuntimeError` (what `torch.device("tpu")` raises), so
/// that code written against either keeps catching it.
static DEVICE_ERROR: GILOnceCell<Py<PyType>> = GILOnceCell::new();

pub(crate) fn device_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = DEVICE_ERROR.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(py, [py.get_type::<PyValueError>(), py.get_type::<PyRuntimeError>()])?;
        let ns = pyo3::types::PyDict::new(py);
        ns.set_item("__module__", "fastcifar._native")?;
        ns.set_item(
            "__doc__",
            "A device fastcifar does not know (a ValueError, and a RuntimeError as torch raises).",
        )?;
        let ty = py.get_type::<PyType>().call1(("DeviceError", bases, ns))?;
        Ok(ty.downcast_into::<PyType>()?.unbind())
    })?;
    Ok(ty.bind(py))
}

/// A device as the Python API takes it: 'cpu', 'cuda', 'cuda:N', 'auto' (CUDA when present), an int
/// N (torch's shorthand for 'cuda:N'), a `torch.device`, or None (torch's default device, as torch
/// functions read `device=None`). CUDA devices are checked to exist here.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) device: tch::Device,
    /// The resolved name: "cpu", "cuda" or "cuda:N", as given ("auto" becomes "cuda" or "cpu").
    pub(crate) name: String,
}

impl Device {
    /// Parses one device string; `shown` is what the caller gave, for the messages.
    fn parse(py: Python<'_>, s: &str, shown: &str) -> PyResult<Device> {
        let bad = || -> PyResult<Device> {
            Err(PyErr::from_type(
                device_error(py)?.clone(),
                format!("device: '{shown}' is not 'cpu', 'cuda', 'cuda:N' or 'auto'"),
            ))
        };
        let cuda = tch::Cuda::is_available();
        let device = match s {
            "auto" if cuda => tch::Device::Cuda(0),
            "auto" | "cpu" => tch::Device::Cpu,
            "cuda" => tch::Device::Cuda(0),
            s if s.starts_with("cuda:") => match s[5..].parse() {
                Ok(i) => tch::Device::Cuda(i),
                Err(_) => return bad(),
            },
            _ => return bad(),
        };
        if let tch::Device::Cuda(i) = device {
            if !cuda {
                return Err(PyRuntimeError::new_err(format!(
                    "device: '{shown}' was asked for, but CUDA is not available here (torch.cuda.is_available() is False)"
                )));
            }
            let n = tch::Cuda::device_count() as usize;
            if i >= n {
                return Err(PyValueError::new_err(format!(
                    "device: '{shown}' does not exist ({n} CUDA devices)"
                )));
            }
        }
        let name = match (s, device) {
            ("auto", tch::Device::Cuda(_)) => "cuda".to_string(),
            (_, tch::Device::Cpu) => "cpu".to_string(),
            (s, _) => s.to_string(),
        };
        Ok(Device { device, name })
    }

    /// torch's default device (`torch.get_default_device()`: the CPU unless the program set one).
    pub(crate) fn torch_default(py: Python<'_>) -> PyResult<Device> {
        let d = py.import("torch")?.call_method0("get_default_device")?.str()?;
        let s = d.to_cow()?;
        Device::parse(py, &s, &s)
    }
}

impl<'py> FromPyObject<'py> for Device {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = ob.py();
        if ob.is_none() {
            return Device::torch_default(py);
        }
        if let Ok(s) = ob.downcast::<PyString>() {
            let s = s.to_cow()?;
            return Device::parse(py, &s, &s);
        }
        if let Ok(i) = ob.extract::<i64>() {
            if ob.is_instance_of::<pyo3::types::PyBool>() || i < 0 {
                return Err(PyErr::from_type(
                    device_error(py)?.clone(),
                    format!("device: {i} is not a CUDA device index"),
                ));
            }
            return Device::parse(py, &format!("cuda:{i}"), &format!("cuda:{i}"));
        }
        // A torch.device: its str() is 'cpu', 'cuda' or 'cuda:N' (or another type, refused by parse).
        let ty = ob.get_type();
        if ty.name()? == "device" && ty.module()? == "torch" {
            let s = ob.str()?;
            let s = s.to_cow()?;
            return Device::parse(py, &s, &s);
        }
        Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "device: expected a str, an int, a torch.device or None, got {}",
            ty.name()?
        )))
    }
}

/// The device `device` names, resolved and checked as every native entry point does: "cpu",
/// "cuda" or "cuda:N" ("auto" picks CUDA when present).
#[pyfunction]
#[pyo3(signature = (device))]
pub(crate) fn resolve_device(device: Device) -> String {
    device.name
}

#[pyfunction]
pub(crate) fn cuda_is_available() -> bool {
    tch::Cuda::is_available()
}

/// A count the core keeps unsigned: a negative one is refused here, naming `param` and `op`,
/// in the words the core uses for its own range checks.
pub(crate) fn unsigned(param: &str, op: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{param}: {v} must not be negative ({op})")))
}

/// The loader's output dtype: "float32" or "uint8", also as `str(torch.float32)` / `str(torch.uint8)`.
pub(crate) fn out_kind(dtype: &str) -> PyResult<OutKind> {
    match dtype.strip_prefix("torch.").unwrap_or(dtype) {
        "float32" => Ok(OutKind::Float32),
        "uint8" => Ok(OutKind::Uint8),
        _ => Err(PyValueError::new_err(format!(
            "dtype: {dtype} is not torch.float32 or torch.uint8"
        ))),
    }
}
