//! Data-parallel training through torch.distributed: the core's `Collective` over a Python
//! process group (fastcifar.distributed.ProcessGroup), called with the GIL taken per collective.
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

use super::to_py;
use crate::error::Error;
use crate::train::dist::{Collective, DistState};

/// A process group seen through a Python object with `rank`, `world_size`, `all_reduce(tensors)`
/// and `any(flags)`.
struct PyCollective {
    obj: PyObject,
    rank: usize,
    world: usize,
}

impl PyCollective {
    fn fail(&self, op: &str, e: PyErr) -> Error {
        Error::Distributed(format!(
            "distributed {op} failed on rank {} of {}: {e} (another rank probably failed, stopped or timed out)",
            self.rank, self.world
        ))
    }
}

impl Collective for PyCollective {
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, tensors: &[tch::Tensor]) -> Result<(), Error> {
        Python::with_gil(|py| {
            let list: Vec<PyTensor> = tensors.iter().map(|t| PyTensor(t.shallow_clone())).collect();
            self.obj
                .call_method1(py, "all_reduce", (list,))
                .map(|_| ())
                .map_err(|e| self.fail("all_reduce", e))
        })
    }
    fn any(&mut self, flags: &[bool]) -> Result<Vec<bool>, Error> {
        Python::with_gil(|py| {
            self.obj
                .call_method1(py, "any", (flags.to_vec(),))
                .and_then(|r| r.extract::<Vec<bool>>(py))
                .map_err(|e| self.fail("any", e))
        })
    }
}

/// The engine's data-parallel state over `group` (None: train alone), gradients averaged in
/// buckets of `bucket_cap_mb`.
pub(crate) fn process_group(
    py: Python<'_>,
    group: Option<PyObject>,
    bucket_cap_mb: f64,
) -> PyResult<Option<DistState>> {
    let Some(obj) = group else { return Ok(None) };
    let rank: usize = obj.getattr(py, "rank")?.extract(py)?;
    let world: usize = obj.getattr(py, "world_size")?.extract(py)?;
    let comm = PyCollective { obj, rank, world };
    Ok(Some(DistState::new(Box::new(comm), bucket_cap_mb).map_err(to_py)?))
}
