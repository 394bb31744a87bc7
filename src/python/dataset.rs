//! `NativeDataset`: the data sets held in Rust (CIFAR in any layout, image folders, numpy arrays),
//! and the image decoder the Python side uses for single files. Loading runs with the GIL released.
use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::release;
use crate::data::{cifar, folder, Dataset};

/// A data set held in Rust: one uint8 (N, C, H, W) buffer, labels and class names.
#[pyclass(frozen, name = "NativeDataset", module = "fastcifar._native")]
pub struct PyDataset {
    pub(crate) inner: Arc<Dataset>,
}

/// What `NativeDataset.cifar` found: the data set, the layout it was read from, and the path read.
#[pyclass(frozen, get_all, name = "CifarFiles", module = "fastcifar._native")]
pub struct PyCifarFiles {
    dataset: Py<PyDataset>,
    /// "python", "binary", "python-archive" or "binary-archive".
    layout: &'static str,
    path: String,
}

#[pymethods]
impl PyCifarFiles {
    fn __repr__(&self) -> String {
        format!("CifarFiles(layout={:?}, path={:?})", self.layout, self.path)
    }
}

#[pymethods]
impl PyDataset {
    /// Loads CIFAR-10 (`variant="cifar10"`) or CIFAR-100 (`"cifar100"`, `label` "fine" or "coarse").
    #[staticmethod]
    #[pyo3(signature = (root, variant, train, *, label = "fine", mmap = false))]
    fn cifar(
        py: Python<'_>,
        root: PathBuf,
        variant: &str,
        train: bool,
        label: &str,
        mmap: bool,
    ) -> PyResult<PyCifarFiles> {
        let v = match (variant, label) {
            ("cifar10", _) => cifar::Variant::Cifar10,
            ("cifar100", "fine") => cifar::Variant::Cifar100 { coarse: false },
            ("cifar100", "coarse") => cifar::Variant::Cifar100 { coarse: true },
            ("cifar100", l) => return Err(PyValueError::new_err(format!("label: '{l}' is not 'fine' or 'coarse'"))),
            (v, _) => {
                return Err(PyValueError::new_err(format!(
                    "variant: '{v}' is not 'cifar10' or 'cifar100'"
                )))
            }
        };
        let (ds, layout, path) = release(py, || cifar::load(&root, v, train, mmap))?;
        let layout = match layout {
            cifar::Layout::PythonDir => "python",
            cifar::Layout::BinaryDir => "binary",
            cifar::Layout::PythonArchive => "python-archive",
            cifar::Layout::BinaryArchive => "binary-archive",
        };
        let dataset = Py::new(py, PyDataset { inner: Arc::new(ds) })?;
        Ok(PyCifarFiles {
            dataset,
            layout,
            path: path.display().to_string(),
        })
    }

    /// An image folder; images of more than `max_pixels` pixels are refused (None: no limit).
    #[staticmethod]
    #[pyo3(signature = (root, size = None, *, max_pixels = Some(folder::DEFAULT_MAX_PIXELS)))]
    fn image_folder(
        py: Python<'_>,
        root: PathBuf,
        size: Option<(usize, usize)>,
        max_pixels: Option<u64>,
    ) -> PyResult<Self> {
        let ds = release(py, || folder::load(&root, size, max_pixels))?;
        Ok(PyDataset { inner: Arc::new(ds) })
    }

    /// From a C-contiguous uint8 array (N, H, W, C) and int labels.
    #[staticmethod]
    fn from_numpy(
        py: Python<'_>,
        images: PyReadonlyArrayDyn<'_, u8>,
        labels: Vec<i64>,
        classes: Vec<String>,
    ) -> PyResult<Self> {
        let shape = images.shape().to_vec();
        if shape.len() != 4 {
            return Err(PyValueError::new_err(format!(
                "images: expected (N, H, W, C), got shape {shape:?}"
            )));
        }
        let slice = images
            .as_slice()
            .map_err(|_| PyValueError::new_err("images: array must be C-contiguous"))?;
        let ds = release(py, || {
            Dataset::from_hwc(slice, shape[0], shape[1], shape[2], shape[3], labels, classes)
        })?;
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

/// Decodes PNG / JPEG files to a uint8 (N, H, W, 3) array, resized to `size` = (h, w); images of
/// more than `max_pixels` pixels are refused (None: no limit).
#[pyfunction]
#[pyo3(signature = (paths, size, *, max_pixels = Some(folder::DEFAULT_MAX_PIXELS)))]
pub(crate) fn decode_images<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    size: (usize, usize),
    max_pixels: Option<u64>,
) -> PyResult<Bound<'py, numpy::PyArray4<u8>>> {
    if size.0 == 0 || size.1 == 0 {
        return Err(PyValueError::new_err("size: must be positive"));
    }
    let n = paths.len();
    let bytes = release(py, move || folder::decode_files(&paths, size, max_pixels))?;
    let arr = numpy::ndarray::Array4::from_shape_vec((n, size.0, size.1, 3), bytes)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(numpy::PyArray4::from_owned_array(py, arr))
}
