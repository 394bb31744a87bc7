//! Test-time augmentation: logits averaged over views of each image, as airbench weighs them.
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::Model;

/// The levels there are: 0 the image alone, 1 with its mirror, 2 with one-pixel translations too.
pub const MAX_LEVEL: u8 = 2;

/// Refuses a level that does not exist (before any batch runs).
pub fn check_level(level: u8) -> Result<()> {
    if level > MAX_LEVEL {
        return Err(Error::invalid(
            "tta",
            format!("{level} is not 0 (none), 1 or True (mirror), or 2 (mirror and translate)"),
        ));
    }
    Ok(())
}

/// Eval-mode logits of `x` (N, C, H, W) at TTA `level`. 1: the mean of the image's and its
/// horizontal mirror's logits. 2: half of level 1, plus half the mean of level 1 over the image
/// translated by one pixel up-left and down-right (reflect-padded).
/// The views are averaged in float32, whatever precision the forward runs in.
pub fn logits(model: &Model, x: &Tensor, level: u8) -> Result<Tensor> {
    check_level(level)?;
    let view = |v: &Tensor| -> Result<Tensor> { Ok(model.forward_t(v, false)?.f_to_kind(Kind::Float)?) };
    let mirror = |v: &Tensor| -> Result<Tensor> { Ok((view(v)? + view(&v.f_flip([3])?)?) * 0.5) };
    match level {
        0 => view(x),
        1 => mirror(x),
        _ => {
            let (h, w) = (x.size()[2], x.size()[3]);
            let padded = x.f_reflection_pad2d([1, 1, 1, 1])?;
            let up_left = mirror(&padded.f_narrow(2, 0, h)?.f_narrow(3, 0, w)?)?;
            let down_right = mirror(&padded.f_narrow(2, 2, h)?.f_narrow(3, 2, w)?)?;
            Ok(mirror(x)? * 0.5 + (up_left + down_right) * 0.25)
        }
    }
}
