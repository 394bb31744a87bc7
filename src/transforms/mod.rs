//! torchvision-style transforms, compiled into one fused pass per sample.
//!
//! A pipeline is a list of `Op`s in torchvision order. `Pipeline::new` checks it against the image
//! shape and compiles it into:
//! - geometry stages: runs of crops / pads / flips become two index maps (rows, columns), because all
//!   of them are separable; `Resize` is a separable bilinear filter with precomputed weights;
//! - per channel, a 256-entry table of torchvision's own float32 results for `ToTensor` and
//!   `Normalize`, looked up while the final stage writes the output (bit-identical to torchvision);
//! - rectangles (`RandomErasing`, `Cutout`) overwritten in the output afterwards.
//!
//! So a batch is read once from the uint8 data set and written once into the output tensor's memory,
//! with no per-image allocation (Resize reuses a per-thread scratch buffer).
//!
//! One job per file:
//! - `ops`: the steps and their checks (everything that does not depend on the image);
//! - `compile`: `Pipeline::new`, one function per op;
//! - `apply`: the per-sample runner (stages, maps, random draws) over a rayon pool;
//! - `gather`: the per-image kernels that gather rows as bytes and write the output;
//! - `convert`: bytes to torchvision's float32 values (ToTensor, Normalize);
//! - `erase`: RandomErasing / Cutout rectangles;
//! - `resize`: Pillow's bilinear resampling.
mod apply;
mod compile;
mod convert;
mod erase;
mod gather;
mod ops;
mod resize;

pub use apply::check_indices;
pub use compile::{DevicePlan, Pipeline};
pub use convert::{Conv, Element};
pub use ops::{pixel_fill, Op, PadMode, ResizeTo};

#[cfg(test)]
mod tests;
