//! `TransformOp`: one transform step built from Python, checked by the core when it is made (so a
//! bad argument raises where the transform is constructed), and picklable for DataLoader workers.
//! Every constructor is keyword-only; Python's transforms convert torchvision's argument forms
//! (an int or a pair, 1/2/4 paddings) and leave every check to `Op::validate` and the helpers here.
use std::str::FromStr;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::convert::unsigned;
use super::to_py;
use crate::transforms::{pixel_fill, Op, PadMode, ResizeTo};

/// One transform step, validated when it is made.
#[pyclass(frozen, name = "TransformOp", module = "fastcifar._native")]
#[derive(Clone)]
pub struct PyOp {
    pub(crate) op: Op,
}

fn op(op: Op) -> PyResult<PyOp> {
    op.validate().map_err(to_py)?;
    Ok(PyOp { op })
}

/// (h, w) as the core's unsigned sizes.
fn hw(param: &str, name: &str, (h, w): (i64, i64)) -> PyResult<(usize, usize)> {
    Ok((unsigned(param, name, h)?, unsigned(param, name, w)?))
}

/// (left, top, right, bottom) as the core's unsigned paddings.
fn ltrb(name: &str, padding: [i64; 4]) -> PyResult<[usize; 4]> {
    let mut out = [0; 4];
    for (o, p) in out.iter_mut().zip(padding) {
        *o = unsigned("padding", name, p)?;
    }
    Ok(out)
}

#[pymethods]
impl PyOp {
    /// Pads by (left, top, right, bottom), then crops `size` = (h, w) at a uniform offset.
    #[staticmethod]
    #[pyo3(signature = (*, size, padding, fill, padding_mode, pad_if_needed))]
    fn random_crop(
        size: (i64, i64),
        padding: [i64; 4],
        fill: Vec<f64>,
        padding_mode: &str,
        pad_if_needed: bool,
    ) -> PyResult<Self> {
        let name = "RandomCrop";
        let mode = PadMode::from_str(padding_mode).map_err(to_py)?;
        let fill = pixel_fill(&fill).map_err(to_py)?;
        op(Op::RandomCrop {
            size: hw("size", name, size)?,
            padding: ltrb(name, padding)?,
            fill,
            mode,
            pad_if_needed,
        })
    }
    #[staticmethod]
    #[pyo3(signature = (*, size))]
    fn center_crop(size: (i64, i64)) -> PyResult<Self> {
        op(Op::CenterCrop {
            size: hw("size", "CenterCrop", size)?,
        })
    }
    /// Pads by (left, top, right, bottom) with `fill` (one value or one per channel) or a mode.
    #[staticmethod]
    #[pyo3(signature = (*, padding, fill, padding_mode))]
    fn pad(padding: [i64; 4], fill: Vec<f64>, padding_mode: &str) -> PyResult<Self> {
        let mode = PadMode::from_str(padding_mode).map_err(to_py)?;
        let fill = pixel_fill(&fill).map_err(to_py)?;
        op(Op::Pad {
            padding: ltrb("Pad", padding)?,
            fill,
            mode,
        })
    }
    /// torchvision's RandomResizedCrop (bilinear): `size` = (h, w), `scale` and `ratio` ranges.
    #[staticmethod]
    #[pyo3(signature = (*, size, scale, ratio))]
    fn random_resized_crop(size: (i64, i64), scale: (f64, f64), ratio: (f64, f64)) -> PyResult<Self> {
        op(Op::RandomResizedCrop {
            size: hw("size", "RandomResizedCrop", size)?,
            scale,
            ratio,
        })
    }
    #[staticmethod]
    #[pyo3(signature = (*, p))]
    fn horizontal_flip(p: f64) -> PyResult<Self> {
        op(Op::RandomHorizontalFlip { p })
    }
    #[staticmethod]
    #[pyo3(signature = (*, p))]
    fn vertical_flip(p: f64) -> PyResult<Self> {
        op(Op::RandomVerticalFlip { p })
    }
    /// airbench's alternating flip (see `Op::AlternatingHorizontalFlip`).
    #[staticmethod]
    fn alternating_horizontal_flip() -> PyResult<Self> {
        op(Op::AlternatingHorizontalFlip)
    }
    /// `shorter`: the shorter side becomes this (keeping the aspect ratio); `exact`: (h, w).
    #[staticmethod]
    #[pyo3(signature = (*, shorter = None, exact = None))]
    fn resize(shorter: Option<i64>, exact: Option<(i64, i64)>) -> PyResult<Self> {
        match (shorter, exact) {
            (Some(s), None) => op(Op::Resize {
                size: ResizeTo::Shorter(unsigned("size", "Resize", s)?),
            }),
            (None, Some(size)) => {
                let (h, w) = hw("size", "Resize", size)?;
                op(Op::Resize {
                    size: ResizeTo::Exact(h, w),
                })
            }
            _ => Err(PyValueError::new_err("size: give an int or an (h, w) pair")),
        }
    }
    #[staticmethod]
    fn to_tensor() -> PyResult<Self> {
        op(Op::ToTensor)
    }
    /// transforms.v2's ToImage + ToDtype(torch.float32, scale=True): `x * float32(1 / 255)`.
    #[staticmethod]
    fn to_dtype_scaled() -> PyResult<Self> {
        op(Op::ToDtypeScaled)
    }
    #[staticmethod]
    #[pyo3(signature = (*, mean, std))]
    fn normalize(mean: Vec<f64>, std: Vec<f64>) -> PyResult<Self> {
        op(Op::Normalize { mean, std })
    }
    #[staticmethod]
    #[pyo3(signature = (*, p, scale, ratio, value))]
    fn random_erasing(p: f64, scale: (f64, f64), ratio: (f64, f64), value: Vec<f64>) -> PyResult<Self> {
        op(Op::RandomErasing { p, scale, ratio, value })
    }
    #[staticmethod]
    #[pyo3(signature = (*, size, p, value))]
    fn cutout(size: i64, p: f64, value: Vec<f64>) -> PyResult<Self> {
        op(Op::Cutout {
            size: unsigned("size", "Cutout", size)?,
            p,
            value,
        })
    }
    /// The transform's torchvision name ("RandomCrop", "ToTensor", ...).
    #[getter]
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn __repr__(&self) -> String {
        format!("{:?}", self.op)
    }

    /// Pickles as the keyword call of the constructor that made it (through
    /// `fastcifar.transforms._native_op`), so that transforms reach DataLoader workers started
    /// with spawn or forkserver.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let kw = PyDict::new(py);
        let ctor = match slf.get().op.clone() {
            Op::RandomCrop {
                size,
                padding,
                fill,
                mode,
                pad_if_needed,
            } => {
                kw.set_item("size", size)?;
                kw.set_item("padding", padding)?;
                kw.set_item("fill", fill)?;
                kw.set_item("padding_mode", mode.name())?;
                kw.set_item("pad_if_needed", pad_if_needed)?;
                "random_crop"
            }
            Op::Pad { padding, fill, mode } => {
                kw.set_item("padding", padding)?;
                kw.set_item("fill", fill)?;
                kw.set_item("padding_mode", mode.name())?;
                "pad"
            }
            Op::RandomResizedCrop { size, scale, ratio } => {
                kw.set_item("size", size)?;
                kw.set_item("scale", scale)?;
                kw.set_item("ratio", ratio)?;
                "random_resized_crop"
            }
            Op::CenterCrop { size } => {
                kw.set_item("size", size)?;
                "center_crop"
            }
            Op::RandomHorizontalFlip { p } => {
                kw.set_item("p", p)?;
                "horizontal_flip"
            }
            Op::RandomVerticalFlip { p } => {
                kw.set_item("p", p)?;
                "vertical_flip"
            }
            Op::Resize {
                size: ResizeTo::Shorter(s),
            } => {
                kw.set_item("shorter", s)?;
                "resize"
            }
            Op::Resize {
                size: ResizeTo::Exact(h, w),
            } => {
                kw.set_item("exact", (h, w))?;
                "resize"
            }
            Op::AlternatingHorizontalFlip => "alternating_horizontal_flip",
            Op::ToTensor => "to_tensor",
            Op::ToDtypeScaled => "to_dtype_scaled",
            Op::Normalize { mean, std } => {
                kw.set_item("mean", mean)?;
                kw.set_item("std", std)?;
                "normalize"
            }
            Op::RandomErasing { p, scale, ratio, value } => {
                kw.set_item("p", p)?;
                kw.set_item("scale", scale)?;
                kw.set_item("ratio", ratio)?;
                kw.set_item("value", value)?;
                "random_erasing"
            }
            Op::Cutout { size, p, value } => {
                kw.set_item("size", size)?;
                kw.set_item("p", p)?;
                kw.set_item("value", value)?;
                "cutout"
            }
        };
        let helper = py.import("fastcifar.transforms")?.getattr("_native_op")?;
        Ok((helper, (ctor, kw).into_pyobject(py)?))
    }
}
