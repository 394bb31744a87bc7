//! `NativeLoader` and its `BatchIter`: the core loader behind a keyword-only constructor, batches
//! handed to Python as torch tensors, with the GIL released while a batch is built or awaited.
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

use super::convert::{out_kind, unsigned, Device};
use super::dataset::PyDataset;
use super::transforms::PyOp;
use super::{hold, release, to_py};
use crate::loader::{BatchIter, Loader, LoaderOptions};

#[pyclass(frozen, name = "NativeLoader", module = "fastcifar._native")]
pub struct PyLoader {
    pub(crate) inner: Arc<Loader>,
}

#[pymethods]
impl PyLoader {
    /// Everything after `ops` is a keyword; the defaults are the core's (`LoaderOptions::default`),
    /// and the core checks every value (batch_size, prefetch, num_threads, rank / world_size,
    /// labels), so that its messages are the only ones.
    #[new]
    #[pyo3(signature = (
        dataset, ops, *, batch_size, shuffle = false, drop_last = false, seed = 0, prefetch = 2, dtype = "float32",
        device = None, pin_memory = false, num_threads = None, rank = 0, world_size = 1, pad_shards = true, labels = None
    ))]
    #[allow(
        clippy::too_many_arguments,
        reason = "the keyword-only arguments of torch's DataLoader, one each"
    )]
    fn new(
        py: Python<'_>,
        dataset: &PyDataset,
        ops: Vec<PyOp>,
        batch_size: i64,
        shuffle: bool,
        drop_last: bool,
        seed: u64,
        prefetch: i64,
        dtype: &str,
        device: Option<Device>,
        pin_memory: bool,
        num_threads: Option<i64>,
        rank: i64,
        world_size: i64,
        pad_shards: bool,
        labels: Option<Vec<i64>>,
    ) -> PyResult<Self> {
        let device = match device {
            Some(d) => d,
            None => Device::torch_default(py)?,
        }
        .device;
        let count = |param: &str, v: i64| unsigned(param, "DataLoader", v);
        let opts = LoaderOptions {
            batch_size: count("batch_size", batch_size)?,
            shuffle,
            drop_last,
            seed,
            prefetch: count("prefetch", prefetch)?,
            kind: out_kind(dtype)?,
            device,
            // On a CPU device, pinning needs CUDA to exist; the Python side says when it does not.
            pin_memory: pin_memory && (device.is_cuda() || tch::Cuda::is_available()),
            num_threads: num_threads.map(|n| count("num_threads", n)).transpose()?,
            rank: count("rank", rank)?,
            world_size: count("world_size", world_size)?,
            pad_shards,
            labels: labels.map(Arc::new),
            channels_last: false,
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
        PyBatchIter {
            inner: Mutex::new(Some(self.inner.iter(epoch))),
        }
    }

    /// The same loader with the data set copied to its output device once and batches built there
    /// (the same batches: the same draws). ValueError when the transform cannot run there.
    fn resident(&self, py: Python<'_>) -> PyResult<PyLoader> {
        let l = self.inner.clone();
        let r = release(py, move || l.with_resident())?;
        Ok(PyLoader { inner: Arc::new(r) })
    }

    #[getter]
    fn is_resident(&self) -> bool {
        self.inner.is_resident()
    }

    /// The same loader with batches in channels_last memory (or not): the same values.
    #[pyo3(signature = (on = true))]
    fn channels_last(&self, on: bool) -> PyLoader {
        PyLoader {
            inner: Arc::new(self.inner.with_channels_last(on)),
        }
    }

    /// Iterates the given batches of data set indices (from a sampler), with `epoch`'s randomness.
    #[pyo3(signature = (*, epoch, batches))]
    fn epoch_batches(&self, epoch: u64, batches: Vec<Vec<usize>>) -> PyBatchIter {
        let it = self.inner.iter_batches(epoch, batches, self.inner.pool().clone());
        PyBatchIter {
            inner: Mutex::new(Some(it)),
        }
    }
}

#[pyclass(name = "BatchIter", module = "fastcifar._native")]
pub struct PyBatchIter {
    // pyo3 needs Sync classes; only one thread iterates at a time anyway.
    inner: Mutex<Option<BatchIter>>,
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
            return Err(PyValueError::new_err(format!(
                "timeout: {seconds} must be a non-negative number of seconds"
            )));
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
