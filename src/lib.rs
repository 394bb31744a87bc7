//! fastcifar's core: CIFAR decoding, fused augmentation, a prefetching loader, models and training
//! through libtorch. Nothing here knows about Python; `python` (behind the `python` feature) is the
//! only place that does.
pub mod data;
pub mod error;
pub mod host;
pub mod loader;
pub mod nn;
pub mod pool;
pub mod rng;
pub mod torch_state;
pub mod train;
pub mod transforms;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
