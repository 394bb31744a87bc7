//! Bindings for models: a Python `nn.Module` captured as graphs (`fastcifar/engine/capture.py`) or run
//! through its own forward, over the module's own tensors.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3_tch::PyTensor;

use super::{lock, release, to_py};
use crate::error::Error;
use crate::nn::{device_name, Arg, BatchNormSync, Forward, Model, Node, Op};
use crate::torch_state::Precision;

/// A node argument as `engine/capture.py` writes it: `("x", 0)` the input, `("v", i)` node i, `("p", i)`
/// tensor i, a list, or a constant (bool, int, float, str, None).
struct PyArg(Arg);

impl<'py> FromPyObject<'py> for PyArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if ob.is_none() {
            return Ok(PyArg(Arg::None));
        }
        if let Ok(t) = ob.downcast::<PyTuple>() {
            let (tag, i): (String, usize) = t.extract()?;
            return Ok(PyArg(match tag.as_str() {
                "x" => Arg::Input,
                "v" => Arg::Node(i),
                "p" => Arg::Tensor(i),
                _ => return Err(PyValueError::new_err(format!("graph: unknown reference kind '{tag}'"))),
            }));
        }
        if let Ok(l) = ob.downcast::<PyList>() {
            return Ok(PyArg(Arg::List(
                l.iter()
                    .map(|v| v.extract::<PyArg>().map(|a| a.0))
                    .collect::<PyResult<_>>()?,
            )));
        }
        // bool before int: Python's bool is an int.
        if let Ok(b) = ob.downcast::<pyo3::types::PyBool>() {
            return Ok(PyArg(Arg::Bool(b.is_true())));
        }
        if let Ok(i) = ob.extract::<i64>() {
            return Ok(PyArg(Arg::Int(i)));
        }
        if let Ok(f) = ob.extract::<f64>() {
            return Ok(PyArg(Arg::Float(f)));
        }
        if let Ok(s) = ob.extract::<String>() {
            return Ok(PyArg(Arg::Str(s)));
        }
        Err(PyValueError::new_err(format!(
            "graph: cannot use {} as a node argument",
            ob.repr()?
        )))
    }
}

/// One program: `[(op, args, name), ...]` and its output; each op's arguments as `Op::layout`
/// lays them out (checked by `Graph::new`).
type PyProgram = (Vec<(String, Vec<PyArg>, String)>, PyArg);

fn program(p: PyProgram) -> PyResult<(Vec<Node>, Arg)> {
    let nodes =
        p.0.into_iter()
            .map(|(op, args, name)| {
                let op = Op::from_name(&op)
                    .ok_or_else(|| PyValueError::new_err(format!("graph: unknown op '{op}' at {name}")))?;
                Ok(Node {
                    op,
                    args: args.into_iter().map(|a| a.0).collect(),
                    name,
                })
            })
            .collect::<PyResult<_>>()?;
    Ok((nodes, p.1 .0))
}

/// The module's own forward, called with the GIL taken for the call only (the training thread
/// has released it). Its exception comes back to the caller as itself.
struct PyForward(PyObject);

impl Forward for PyForward {
    fn forward(&self, x: &tch::Tensor, train: bool) -> Result<tch::Tensor, Error> {
        Python::with_gil(|py| {
            self.0
                .call1(py, (PyTensor(x.shallow_clone()), train))
                .and_then(|y| y.extract::<PyTensor>(py))
                .map(|y| y.0)
                .map_err(|e| Error::External(Box::new(e)))
        })
    }
}

#[pyclass(frozen, name = "NativeModel", module = "fastcifar._native")]
pub struct PyModel {
    pub(crate) inner: Arc<Mutex<Model>>,
}

fn tensors(ts: Vec<PyTensor>) -> Vec<tch::Tensor> {
    ts.into_iter().map(|t| t.0).collect()
}

#[pymethods]
impl PyModel {
    /// A model that runs `train` / `eval` graphs over `tensors` (the module's own, shared).
    #[staticmethod]
    #[pyo3(signature = (name, names, tensors, *, train, eval))]
    fn graph(
        py: Python<'_>,
        name: String,
        names: Vec<String>,
        tensors: Vec<PyTensor>,
        train: PyProgram,
        eval: PyProgram,
    ) -> PyResult<Self> {
        let (train, eval) = (program(train)?, program(eval)?);
        let ts = self::tensors(tensors);
        let m = release(py, move || Model::graph(name, names, ts, train, eval))?;
        Ok(PyModel {
            inner: Arc::new(Mutex::new(m)),
        })
    }

    /// A model whose forward is `forward(x, train) -> logits` (eager PyTorch).
    #[staticmethod]
    #[pyo3(signature = (name, names, tensors, *, forward))]
    fn eager(
        py: Python<'_>,
        name: String,
        names: Vec<String>,
        tensors: Vec<PyTensor>,
        forward: PyObject,
    ) -> PyResult<Self> {
        let ts = self::tensors(tensors);
        let f: Box<dyn Forward> = Box::new(PyForward(forward));
        let m = release(py, move || Model::eager(name, names, ts, f))?;
        Ok(PyModel {
            inner: Arc::new(Mutex::new(m)),
        })
    }

    /// Takes the module's current tensors (same names, same order) after it moved or changed.
    fn rebind(&self, py: Python<'_>, names: Vec<String>, tensors: Vec<PyTensor>) -> PyResult<()> {
        let (m, ts) = (self.inner.clone(), self::tensors(tensors));
        release(py, move || lock(&m)?.rebind(&names, ts))
    }

    /// Logits; `train` overrides the model's mode for this call.
    #[pyo3(signature = (x, *, train = None))]
    fn forward(&self, py: Python<'_>, x: PyTensor, train: Option<bool>) -> PyResult<PyTensor> {
        let m = self.inner.clone();
        let y = release(py, move || {
            let m = lock(&m)?;
            let t = train.unwrap_or(m.training);
            m.check_input(&x.0)?;
            m.check_finite(&x.0)?;
            m.forward_t(&x.0, t)
        })?;
        Ok(PyTensor(y))
    }

    /// Sets the SyncBatchNorm function every BatchNorm layer calls in training mode:
    /// `fn(x, weight, bias, running_mean, running_var, momentum, eps) -> y`; None restores local BN.
    #[pyo3(signature = (func = None))]
    fn set_sync_bn(&self, py: Python<'_>, func: Option<PyObject>) -> PyResult<()> {
        let hook = func.map(|f| Arc::new(PyBatchNormSync(f)) as Arc<dyn BatchNormSync>);
        let m = self.inner.clone();
        release(py, move || {
            lock(&m)?.set_batch_norm_sync(hook);
            Ok(())
        })
    }

    #[getter]
    fn device(&self, py: Python<'_>) -> PyResult<String> {
        let m = self.inner.clone();
        release(py, move || Ok(device_name(lock(&m)?.device())))
    }

    /// True when the graph runs in Rust; False for the eager fallback.
    #[getter]
    fn is_graph(&self, py: Python<'_>) -> PyResult<bool> {
        let m = self.inner.clone();
        release(py, move || Ok(lock(&m)?.is_graph()))
    }

    /// The precision of every forward: "float32", "bf16" or "fp16" (autocast on the model's device).
    #[getter]
    fn precision(&self, py: Python<'_>) -> PyResult<String> {
        let m = self.inner.clone();
        release(py, move || Ok(lock(&m)?.precision.name().to_string()))
    }

    #[setter]
    fn set_precision(&self, py: Python<'_>, v: &str) -> PyResult<()> {
        let p = Precision::parse(v).map_err(to_py)?;
        let m = self.inner.clone();
        release(py, move || {
            lock(&m)?.precision = p;
            Ok(())
        })
    }

    /// Whether the graph runs on channels_last activations (batches written so by the loader).
    #[getter]
    fn channels_last(&self, py: Python<'_>) -> PyResult<bool> {
        let m = self.inner.clone();
        release(py, move || Ok(lock(&m)?.channels_last))
    }

    #[setter]
    fn set_channels_last(&self, py: Python<'_>, v: bool) -> PyResult<()> {
        let m = self.inner.clone();
        release(py, move || {
            lock(&m)?.channels_last = v;
            Ok(())
        })
    }

    #[getter]
    fn training(&self, py: Python<'_>) -> PyResult<bool> {
        let m = self.inner.clone();
        release(py, move || Ok(lock(&m)?.training))
    }

    #[setter]
    fn set_training(&self, py: Python<'_>, v: bool) -> PyResult<()> {
        let m = self.inner.clone();
        release(py, move || {
            lock(&m)?.training = v;
            Ok(())
        })
    }
}

/// SyncBatchNorm through a Python function (an autograd.Function on torch.distributed). Its
/// backward runs inside libtorch's autograd, which takes the GIL for it; the training thread has
/// released the GIL, so this cannot deadlock.
struct PyBatchNormSync(PyObject);

impl BatchNormSync for PyBatchNormSync {
    fn forward(
        &self,
        x: &tch::Tensor,
        w: &tch::Tensor,
        b: &tch::Tensor,
        rm: &tch::Tensor,
        rv: &tch::Tensor,
        momentum: f64,
        eps: f64,
    ) -> Result<tch::Tensor, Error> {
        Python::with_gil(|py| {
            let args = (
                PyTensor(x.shallow_clone()),
                PyTensor(w.shallow_clone()),
                PyTensor(b.shallow_clone()),
                PyTensor(rm.shallow_clone()),
                PyTensor(rv.shallow_clone()),
                momentum,
                eps,
            );
            self.0
                .call1(py, args)
                .and_then(|y| y.extract::<PyTensor>(py))
                .map(|y| y.0)
                .map_err(|e| Error::Distributed(format!("sync_bn: {e}")))
        })
    }
}

/// Writes named tensors as safetensors (to `path` directly; the caller handles atomicity).
#[pyfunction]
#[pyo3(signature = (items, path))]
fn save_safetensors(py: Python<'_>, items: Vec<(String, PyTensor)>, path: PathBuf) -> PyResult<()> {
    let sd: Vec<(String, tch::Tensor)> = items.into_iter().map(|(k, v)| (k, v.0)).collect();
    release(py, move || {
        let sd: Vec<(String, tch::Tensor)> = sd
            .into_iter()
            .map(|(k, v)| (k, v.to_device(tch::Device::Cpu)))
            .collect();
        tch::Tensor::write_safetensors(&sd, &path).map_err(|e| os_error_in(&path, e))
    })
}

/// The safetensors writer reports an I/O failure as text ("... Os { code: 28, ... }"): give it
/// back as the OS error it is (errno and path), so that a full disk is an OSError(ENOSPC).
fn os_error_in(path: &std::path::Path, e: tch::TchError) -> Error {
    let msg = e.to_string();
    let code = msg
        .split("Os { code: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|c| c.trim().parse::<i32>().ok());
    match code {
        Some(code) => Error::io(path, std::io::Error::from_raw_os_error(code)),
        None => Error::from(e),
    }
}

/// Reads a safetensors file's named tensors (CPU).
#[pyfunction]
fn load_safetensors(py: Python<'_>, path: PathBuf) -> PyResult<Vec<(String, PyTensor)>> {
    if !path.exists() {
        return Err(to_py(Error::not_found(&path, "no such file")));
    }
    let sd = release(py, move || {
        tch::Tensor::read_safetensors(&path)
            .map_err(|e| Error::format(&path, format!("not a readable safetensors file: {e}")))
    })?;
    Ok(sd.into_iter().map(|(k, v)| (k, PyTensor(v))).collect())
}

/// Every canonical op's arguments, by name and kind: `{op: [(name, kind), ...]}`, the layout a
/// program's nodes must follow (`crate::nn::Op::layout`, the one definition).
#[pyfunction]
fn graph_ops() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    Op::ALL
        .iter()
        .map(|op| (op.name(), op.layout().iter().map(|(n, s)| (*n, s.describe())).collect()))
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(graph_ops, m)?)?;
    m.add_function(wrap_pyfunction!(save_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(load_safetensors, m)?)?;
    Ok(())
}
