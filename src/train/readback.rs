//! Reading tensor values back to the host: on CUDA each read waits for the device to finish all
//! the work queued before it, so a read inside a step stalls the pipeline. The engine reads only
//! where a value is reported (every `log_every` steps, the epoch's end, an evaluation's result),
//! and every such read goes through here and is counted, so that a test (on any device) can check
//! that the number of reads does not grow with the number of steps.
use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;

use crate::error::Result;

static READS: AtomicU64 = AtomicU64::new(0);

/// The value of `t` on the host (a number, a bool, or a `Vec` of them), counted.
pub fn read<'a, T>(t: &'a Tensor) -> Result<T>
where
    T: TryFrom<&'a Tensor, Error = tch::TchError>,
{
    READS.fetch_add(1, Ordering::Relaxed);
    Ok(T::try_from(t)?)
}

/// How many reads the engine has made in this process.
pub fn count() -> u64 {
    READS.load(Ordering::Relaxed)
}
