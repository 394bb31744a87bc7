//! RandomErasing and Cutout: a rectangle drawn per sample (torchvision's draws) and filled in the
//! output after the geometry and conversion, with the fill already in output units.
use crate::rng::Rng;

use super::convert::Element;

#[derive(Debug, Clone)]
pub(super) struct Erase {
    pub(super) p: f64,
    pub(super) kind: EraseKind,
    /// The fill per channel in float output units (after the float steps that follow the op)...
    pub(super) float: Vec<f32>,
    /// ... and in pixel units, for byte output.
    pub(super) pixel: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(super) enum EraseKind {
    Random { scale: (f64, f64), log_ratio: (f64, f64) },
    Cutout { size: usize },
}

impl Erase {
    /// (y, x, h, w) of the rectangle to fill, or None.
    pub(super) fn draw(&self, rng: &mut Rng, h: usize, w: usize) -> Option<(usize, usize, usize, usize)> {
        if rng.uniform() >= self.p {
            return None;
        }
        match self.kind {
            EraseKind::Random { scale, log_ratio } => {
                // torchvision RandomErasing.get_params: up to 10 tries, else leave the image alone.
                let area = (h * w) as f64;
                for _ in 0..10 {
                    let target = area * rng.range_f(scale.0, scale.1);
                    let aspect = rng.range_f(log_ratio.0, log_ratio.1).exp();
                    let eh = (target * aspect).sqrt().round() as usize;
                    let ew = (target / aspect).sqrt().round() as usize;
                    if !(eh < h && ew < w) || eh == 0 || ew == 0 {
                        continue;
                    }
                    return Some((rng.below(h - eh + 1), rng.below(w - ew + 1), eh, ew));
                }
                None
            }
            EraseKind::Cutout { size } => {
                let (cy, cx) = (rng.below(h) as isize, rng.below(w) as isize);
                let half = (size / 2) as isize;
                let (y0, y1) = (
                    (cy - half).max(0) as usize,
                    ((cy - half + size as isize).min(h as isize)) as usize,
                );
                let (x0, x1) = (
                    (cx - half).max(0) as usize,
                    ((cx - half + size as isize).min(w as isize)) as usize,
                );
                Some((y0, x0, y1 - y0, x1 - x0))
            }
        }
    }

    /// Draws this sample's rectangle (if any) and fills it in `dst`, one (C, H, W) output image:
    /// with the float value for float output, the pixel value for bytes.
    pub(super) fn apply<T: Element>(&self, rng: &mut Rng, [c, h, w]: [usize; 3], dst: &mut [T]) {
        if let Some((y0, x0, eh, ew)) = self.draw(rng, h, w) {
            for ch in 0..c {
                let v = T::from_f32(if T::AFFINE { self.float[ch] } else { self.pixel[ch] });
                for y in y0..y0 + eh {
                    dst[(ch * h + y) * w + x0..][..ew].fill(v);
                }
            }
        }
    }
}
