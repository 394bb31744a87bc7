//! The only pyo3 code: thin handles over the core, error translation, and GIL release around every
//! long call. Python-side conveniences live in `python/fastcifar/`.
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3_tch::PyTensor;

use crate::data::{cifar, folder, Dataset};
use crate::error::Error;
use crate::loader::{BatchIter, Loader, LoaderOptions, OutKind};
use crate::transforms::{Op, PadMode, ResizeTo};

mod distributed;
mod eval;
mod hooks;
mod locks;
mod model;
mod settings;
mod state;
mod trainer;

pub(crate) use locks::{hold, lock, Held};

pub(crate) fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(msg),
        // With the errno, Python picks the subclass (PermissionError, ...) and sets .errno / .filename.
        Error::Io { path, source } => match source.raw_os_error() {
            Some(code) => PyOSError::new_err((code, msg, path.display().to_string())),
            None => PyOSError::new_err(msg),
        },
        Error::Format { .. } | Error::Invalid { .. } => PyValueError::new_err(msg),
        Error::Torch(_) | Error::Distributed(_) | Error::Busy(_) => PyRuntimeError::new_err(msg),
        Error::Interrupted => PyKeyboardInterrupt::new_err(msg),
        Error::NonFinite(_) => pyo3::exceptions::PyFloatingPointError::new_err(msg),
        Error::External(inner) => match inner.downcast::<PyErr>() {
            Ok(original) => *original,
            Err(other) => PyRuntimeError::new_err(other.to_string()),
        },
    }
}

type R<T> = Result<T, Error>;

/// Runs a core call with the GIL released, catching panics so that none reaches Python as a crash.
fn release<T: Send>(py: Python<'_>, f: impl FnOnce() -> R<T> + Send) -> PyResult<T> {
    crate::pool::torch_after_fork();
    py.allow_threads(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|p| PyRuntimeError::new_err(format!("internal error: {}", crate::loader::panic_message(&p))))?
        .map_err(to_py)
}

pub(crate) fn parse_device(device: &str) -> PyResult<tch::Device> {
    let cuda = tch::Cuda::is_available();
    let d = match device {
        "auto" => {
            if cuda {
                tch::Device::Cuda(0)
            } else {
                tch::Device::Cpu
            }
        }
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        s if s.starts_with("cuda:") => tch::Device::Cuda(
            s[5..].parse().map_err(|_| PyValueError::new_err(format!("device: '{s}' is not 'cpu', 'cuda', 'cuda:N' or 'auto'")))?,
        ),
        s => return Err(PyValueError::new_err(format!("device: '{s}' is not 'cpu', 'cuda', 'cuda:N' or 'auto'"))),
    };
    if let tch::Device::Cuda(i) = d {
        if !cuda {
            return Err(PyRuntimeError::new_err(format!(
                "device: '{device}' was asked for, but CUDA is not available here (torch.cuda.is_available() is False)"
            )));
        }
        if i >= tch::Cuda::device_count() as usize {
            return Err(PyValueError::new_err(format!("device: '{device}' does not exist ({} CUDA devices)", tch::Cuda::device_count())));
        }
    }
    Ok(d)
}

/// A data set held in Rust: one uint8 (N, C, H, W) buffer, labels and class names.
#[pyclass(frozen, name = "NativeDataset", module = "fastcifar._native")]
pub struct PyDataset {
    pub(crate) inner: Arc<Dataset>,
}

#[pymethods]
impl PyDataset {
    /// Loads CIFAR-10 (`variant="cifar10"`) or CIFAR-100 (`"cifar100"`, `label` "fine" or "coarse").
    /// Returns (data set, layout name, path read).
    #[staticmethod]
    #[pyo3(signature = (root, variant, train, label = "fine", mmap = false))]
    fn cifar(py: Python<'_>, root: PathBuf, variant: &str, train: bool, label: &str, mmap: bool) -> PyResult<(Self, String, String)> {
        let v = match (variant, label) {
            ("cifar10", _) => cifar::Variant::Cifar10,
            ("cifar100", "fine") => cifar::Variant::Cifar100 { coarse: false },
            ("cifar100", "coarse") => cifar::Variant::Cifar100 { coarse: true },
            ("cifar100", l) => return Err(PyValueError::new_err(format!("label: '{l}' is not 'fine' or 'coarse'"))),
            (v, _) => return Err(PyValueError::new_err(format!("variant: '{v}' is not 'cifar10' or 'cifar100'"))),
        };
        let (ds, layout, path) = release(py, || cifar::load(&root, v, train, mmap))?;
        let layout = match layout {
            cifar::Layout::PythonDir => "python",
            cifar::Layout::BinaryDir => "binary",
            cifar::Layout::PythonArchive => "python-archive",
            cifar::Layout::BinaryArchive => "binary-archive",
        };
        Ok((PyDataset { inner: Arc::new(ds) }, layout.to_string(), path.display().to_string()))
    }

    #[staticmethod]
    #[pyo3(signature = (root, size = None))]
    fn image_folder(py: Python<'_>, root: PathBuf, size: Option<(usize, usize)>) -> PyResult<Self> {
        let ds = release(py, || folder::load(&root, size))?;
        Ok(PyDataset { inner: Arc::new(ds) })
    }

    /// From a C-contiguous uint8 array (N, H, W, C) and int labels.
    #[staticmethod]
    fn from_numpy(py: Python<'_>, images: PyReadonlyArrayDyn<'_, u8>, labels: Vec<i64>, classes: Vec<String>) -> PyResult<Self> {
        let shape = images.shape().to_vec();
        if shape.len() != 4 {
            return Err(PyValueError::new_err(format!("images: expected (N, H, W, C), got shape {shape:?}")));
        }
        let slice = images.as_slice().map_err(|_| PyValueError::new_err("images: array must be C-contiguous"))?;
        let ds = release(py, || Dataset::from_hwc(slice, shape[0], shape[1], shape[2], shape[3], labels, classes))?;
        Ok(PyDataset { inner: Arc::new(ds) })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// (C, H, W) of every image.
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.inner.shape;
        (c, h, w)
    }

    /// Whether the images are the files' own pages (`mmap=True`) rather than a copy.
    #[getter]
    fn mapped(&self) -> bool {
        self.inner.images.is_file_backed()
    }

    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.classes.clone()
    }

    #[getter]
    fn targets<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.inner.labels)
    }

    fn class_counts(&self) -> Vec<usize> {
        self.inner.class_counts()
    }

    /// The image buffer as a flat read-only uint8 array that borrows this object's memory.
    fn buffer<'py>(slf: Bound<'py, Self>) -> Bound<'py, PyArray1<u8>> {
        let view = ArrayView1::from(&slf.get().inner.images[..]);
        // SAFETY: the array keeps `slf` alive as its base, and the buffer is never mutated (frozen, Arc).
        let arr = unsafe { PyArray1::borrow_from_array(&view, slf.clone().into_any()) };
        arr.readwrite().make_nonwriteable();
        arr
    }

    fn select(&self, py: Python<'_>, indices: Vec<usize>) -> PyResult<Self> {
        let ds = release(py, || self.inner.select(&indices))?;
        Ok(PyDataset { inner: Arc::new(ds) })
    }
}

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

#[pymethods]
impl PyOp {
    #[staticmethod]
    fn random_crop(size: (usize, usize), padding: [usize; 4], fill: Vec<u8>, padding_mode: &str, pad_if_needed: bool) -> PyResult<Self> {
        let mode = PadMode::from_str(padding_mode).map_err(to_py)?;
        op(Op::RandomCrop { size, padding, fill, mode, pad_if_needed })
    }
    #[staticmethod]
    fn center_crop(size: (usize, usize)) -> PyResult<Self> {
        op(Op::CenterCrop { size })
    }
    /// Pads by (left, top, right, bottom) with `fill` (one value or one per channel) or a mode.
    #[staticmethod]
    #[pyo3(signature = (*, padding, fill, padding_mode))]
    fn pad(padding: [usize; 4], fill: Vec<u8>, padding_mode: &str) -> PyResult<Self> {
        let mode = PadMode::from_str(padding_mode).map_err(to_py)?;
        op(Op::Pad { padding, fill, mode })
    }
    /// torchvision's RandomResizedCrop (bilinear): `size` = (h, w), `scale` and `ratio` ranges.
    #[staticmethod]
    #[pyo3(signature = (*, size, scale, ratio))]
    fn random_resized_crop(size: (usize, usize), scale: (f64, f64), ratio: (f64, f64)) -> PyResult<Self> {
        op(Op::RandomResizedCrop { size, scale, ratio })
    }
    #[staticmethod]
    fn horizontal_flip(p: f64) -> PyResult<Self> {
        op(Op::RandomHorizontalFlip { p })
    }
    #[staticmethod]
    fn vertical_flip(p: f64) -> PyResult<Self> {
        op(Op::RandomVerticalFlip { p })
    }
    #[staticmethod]
    #[pyo3(signature = (shorter = None, exact = None))]
    fn resize(shorter: Option<usize>, exact: Option<(usize, usize)>) -> PyResult<Self> {
        match (shorter, exact) {
            (Some(s), None) => op(Op::Resize { size: ResizeTo::Shorter(s) }),
            (None, Some((h, w))) => op(Op::Resize { size: ResizeTo::Exact(h, w) }),
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
    fn normalize(mean: Vec<f64>, std: Vec<f64>) -> PyResult<Self> {
        op(Op::Normalize { mean, std })
    }
    #[staticmethod]
    fn random_erasing(p: f64, scale: (f64, f64), ratio: (f64, f64), value: Vec<f64>) -> PyResult<Self> {
        op(Op::RandomErasing { p, scale, ratio, value })
    }
    #[staticmethod]
    fn cutout(size: usize, p: f64, value: Vec<f64>) -> PyResult<Self> {
        op(Op::Cutout { size, p, value })
    }
    /// The transform's torchvision name ("RandomCrop", "ToTensor", ...).
    #[getter]
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn __repr__(&self) -> String {
        format!("{:?}", self.op)
    }

    /// Pickles as the constructor call that made it, so that transforms reach DataLoader workers
    /// started with spawn or forkserver.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let mode_name = |mode: PadMode| match mode {
            PadMode::Constant => "constant",
            PadMode::Reflect => "reflect",
            PadMode::Edge => "edge",
            PadMode::Symmetric => "symmetric",
        };
        // Keyword-only constructors go through a helper that calls them with keywords.
        let keywords = |ctor: &str, kw: Bound<'py, pyo3::types::PyDict>| -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
            let helper = py.import("fastcifar.transforms")?.getattr("_native_op")?;
            Ok((helper, (ctor, kw).into_pyobject(py)?))
        };
        let (ctor, args) = match slf.get().op.clone() {
            Op::RandomCrop { size, padding, fill, mode, pad_if_needed } => {
                ("random_crop", (size, padding, fill, mode_name(mode), pad_if_needed).into_pyobject(py)?)
            }
            Op::Pad { padding, fill, mode } => {
                let kw = pyo3::types::PyDict::new(py);
                kw.set_item("padding", padding)?;
                kw.set_item("fill", fill)?;
                kw.set_item("padding_mode", mode_name(mode))?;
                return keywords("pad", kw);
            }
            Op::RandomResizedCrop { size, scale, ratio } => {
                let kw = pyo3::types::PyDict::new(py);
                kw.set_item("size", size)?;
                kw.set_item("scale", scale)?;
                kw.set_item("ratio", ratio)?;
                return keywords("random_resized_crop", kw);
            }
            Op::ToDtypeScaled => ("to_dtype_scaled", PyTuple::empty(py)),
            Op::CenterCrop { size } => ("center_crop", (size,).into_pyobject(py)?),
            Op::RandomHorizontalFlip { p } => ("horizontal_flip", (p,).into_pyobject(py)?),
            Op::RandomVerticalFlip { p } => ("vertical_flip", (p,).into_pyobject(py)?),
            Op::Resize { size: ResizeTo::Shorter(s) } => ("resize", (Some(s), None::<(usize, usize)>).into_pyobject(py)?),
            Op::Resize { size: ResizeTo::Exact(h, w) } => ("resize", (None::<usize>, Some((h, w))).into_pyobject(py)?),
            Op::ToTensor => ("to_tensor", PyTuple::empty(py)),
            Op::Normalize { mean, std } => ("normalize", (mean, std).into_pyobject(py)?),
            Op::RandomErasing { p, scale, ratio, value } => ("random_erasing", (p, scale, ratio, value).into_pyobject(py)?),
            Op::Cutout { size, p, value } => ("cutout", (size, p, value).into_pyobject(py)?),
        };
        Ok((py.get_type::<PyOp>().getattr(ctor)?, args))
    }
}

#[pyclass(frozen, name = "NativeLoader", module = "fastcifar._native")]
pub struct PyLoader {
    pub(crate) inner: Arc<Loader>,
}

#[pymethods]
impl PyLoader {
    #[new]
    #[pyo3(signature = (dataset, ops, batch_size, shuffle, drop_last, seed, prefetch, dtype, device, pin_memory, num_threads=None, rank=0, world_size=1, pad_shards=true, *, labels=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dataset: &PyDataset,
        ops: Vec<PyOp>,
        batch_size: usize,
        shuffle: bool,
        drop_last: bool,
        seed: u64,
        prefetch: usize,
        dtype: &str,
        device: &str,
        pin_memory: bool,
        num_threads: Option<usize>,
        rank: usize,
        world_size: usize,
        pad_shards: bool,
        labels: Option<Vec<i64>>,
    ) -> PyResult<Self> {
        let kind = match dtype {
            "float32" => OutKind::Float32,
            "uint8" => OutKind::Uint8,
            d => return Err(PyValueError::new_err(format!("dtype: {d} is not torch.float32 or torch.uint8"))),
        };
        let device = parse_device(device)?;
        let opts = LoaderOptions {
            batch_size,
            shuffle,
            drop_last,
            seed,
            prefetch,
            kind,
            device,
            // On a CPU device, pinning needs CUDA to exist; the Python side says when it does not.
            pin_memory: pin_memory && (device.is_cuda() || tch::Cuda::is_available()),
            num_threads,
            rank,
            world_size,
            pad_shards,
            labels: labels.map(Arc::new),
        };
        let ds = dataset.inner.clone();
        let ops = ops.into_iter().map(|o| o.op).collect();
        let l = release(py, || Loader::new(ds, ops, opts))?;
        Ok(PyLoader { inner: Arc::new(l) })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// (C, H, W) of the output images.
    #[getter]
    fn out_shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.inner.pipeline().out_shape();
        (c, h, w)
    }

    /// The data set indices of one epoch for this rank, in order.
    fn indices(&self, epoch: u64) -> Vec<usize> {
        self.inner.indices(epoch)
    }

    /// One batch built now, from explicit data set indices.
    fn batch(&self, py: Python<'_>, indices: Vec<usize>, epoch: u64) -> PyResult<(PyTensor, PyTensor)> {
        let l = self.inner.clone();
        let (x, y) = release(py, move || l.batch(epoch, &indices))?;
        Ok((PyTensor(x), PyTensor(y)))
    }

    fn epoch(&self, epoch: u64) -> PyBatchIter {
        PyBatchIter { inner: std::sync::Mutex::new(Some(self.inner.iter(epoch))) }
    }

    /// Iterates the given batches of data set indices (from a sampler), with `epoch`'s randomness.
    #[pyo3(signature = (*, epoch, batches))]
    fn epoch_batches(&self, epoch: u64, batches: Vec<Vec<usize>>) -> PyBatchIter {
        let it = self.inner.iter_batches(epoch, batches, self.inner.pool().clone());
        PyBatchIter { inner: std::sync::Mutex::new(Some(it)) }
    }
}

#[pyclass(name = "BatchIter", module = "fastcifar._native")]
pub struct PyBatchIter {
    // pyo3 needs Sync classes; only one thread iterates at a time anyway.
    inner: std::sync::Mutex<Option<BatchIter>>,
}

#[pymethods]
impl PyBatchIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<(PyTensor, PyTensor)>> {
        // The GIL is released while waiting: the producer thread and the rest of Python run on.
        let next = py.allow_threads(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let r = guard.as_mut().and_then(|it| it.next());
            if !matches!(r, Some(Ok(_))) {
                *guard = None; // finished or failed: stop the producer now
            }
            r
        });
        match next {
            Some(Ok((x, y))) => Ok(Some((PyTensor(x), PyTensor(y)))),
            Some(Err(e)) => Err(to_py(e)),
            None => Ok(None),
        }
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(hold(py, &self.inner)?.as_ref().map_or(0, |i| i.remaining()))
    }

    /// Waiting longer than `seconds` for a batch raises (torch's DataLoader `timeout`); 0: no limit.
    #[pyo3(signature = (*, seconds))]
    fn set_timeout(&self, seconds: f64) -> PyResult<()> {
        if !(seconds >= 0.0 && seconds.is_finite()) {
            return Err(PyValueError::new_err(format!("timeout: {seconds} must be a non-negative number of seconds")));
        }
        let t = (seconds > 0.0).then(|| std::time::Duration::from_secs_f64(seconds));
        if let Some(it) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            it.set_timeout(t);
        }
        Ok(())
    }

    /// Stops the producer thread now (also done when the iterator is garbage-collected).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let it = hold(py, &self.inner)?.take();
        py.allow_threads(move || drop(it));
        Ok(())
    }
}

/// Decodes PNG / JPEG files to a uint8 (N, H, W, 3) array, resized to `size` = (h, w).
#[pyfunction]
fn decode_images<'py>(py: Python<'py>, paths: Vec<PathBuf>, size: (usize, usize)) -> PyResult<Bound<'py, numpy::PyArray4<u8>>> {
    if size.0 == 0 || size.1 == 0 {
        return Err(PyValueError::new_err("size: must be positive"));
    }
    let n = paths.len();
    let bytes = release(py, move || folder::decode_files(&paths, size))?;
    let arr = numpy::ndarray::Array4::from_shape_vec((n, size.0, size.1, 3), bytes).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(numpy::PyArray4::from_owned_array(py, arr))
}

#[pyfunction]
fn cuda_is_available() -> bool {
    tch::Cuda::is_available()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    crate::pool::torch_after_fork(); // notes this process, so that a forked child can tell

    m.add_class::<PyDataset>()?;
    m.add_class::<PyOp>()?;
    m.add_class::<PyLoader>()?;
    m.add_class::<PyBatchIter>()?;
    m.add_function(wrap_pyfunction!(cuda_is_available, m)?)?;
    m.add_function(wrap_pyfunction!(decode_images, m)?)?;
    model::register(m)?;
    settings::register(m)?;
    trainer::register(m)?;
    eval::register(m)?;
    Ok(())
}
