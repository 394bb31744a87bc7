//! The transform steps as the core knows them, and every check that does not depend on the image.
//! The Python bindings build `Op`s and call `validate` at once, so a bad argument is refused where
//! it was given, with the core's message (Python converts but does not check again); the checks
//! that need the image shape (crop larger than the padded image, channel counts) wait for
//! `Pipeline::new`.
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    /// numpy's "symmetric": like reflect, but the edge pixel is repeated.
    Symmetric,
}

impl std::str::FromStr for PadMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(PadMode::Constant),
            "reflect" => Ok(PadMode::Reflect),
            "edge" => Ok(PadMode::Edge),
            "symmetric" => Ok(PadMode::Symmetric),
            _ => Err(Error::invalid(
                "padding_mode",
                format!("'{s}' is not one of 'constant', 'edge', 'reflect', 'symmetric'"),
            )),
        }
    }
}

/// `Resize(int)` scales the shorter side (keeping the aspect ratio); `Resize((h, w))` is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    Shorter(usize),
    Exact(usize, usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Pad by (left, top, right, bottom), then take a uniformly placed `size` window.
    RandomCrop {
        size: (usize, usize),
        padding: [usize; 4],
        fill: Vec<u8>,
        mode: PadMode,
        pad_if_needed: bool,
    },
    CenterCrop {
        size: (usize, usize),
    },
    /// Pad by (left, top, right, bottom).
    Pad {
        padding: [usize; 4],
        fill: Vec<u8>,
        mode: PadMode,
    },
    /// torchvision's RandomResizedCrop (bilinear, as PIL): a box of area fraction in `scale` and
    /// aspect ratio in `ratio` (log-uniform), resized to `size`.
    RandomResizedCrop {
        size: (usize, usize),
        scale: (f64, f64),
        ratio: (f64, f64),
    },
    RandomHorizontalFlip {
        p: f64,
    },
    RandomVerticalFlip {
        p: f64,
    },
    /// airbench's alternating flip: each image has one fair coin for the whole run (from the seed
    /// and its index) and is mirrored when that coin and the epoch's parity disagree, so it is seen
    /// mirrored in exactly one of any two consecutive epochs.
    AlternatingHorizontalFlip,
    Resize {
        size: ResizeTo,
    },
    ToTensor,
    /// transforms.v2's `ToImage` + `ToDtype(torch.float32, scale=True)`: `x * float32(1 / 255)`,
    /// which differs from ToTensor's `x / 255` in the last bit for some pixels.
    ToDtypeScaled,
    Normalize {
        mean: Vec<f64>,
        std: Vec<f64>,
    },
    /// torchvision's RandomErasing: area fraction in `scale`, aspect ratio in `ratio` (log-uniform).
    RandomErasing {
        p: f64,
        scale: (f64, f64),
        ratio: (f64, f64),
        value: Vec<f64>,
    },
    /// DeVries & Taylor's Cutout: a `size` square centred on a uniform pixel, clipped at the border.
    Cutout {
        size: usize,
        p: f64,
        value: Vec<f64>,
    },
}

fn check_p(name: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(
            "p",
            format!("{p} is not a probability in [0, 1] ({name})"),
        ));
    }
    Ok(())
}

fn check_size(name: &str, (h, w): (usize, usize)) -> Result<()> {
    if h == 0 || w == 0 {
        return Err(Error::invalid("size", format!("({h}, {w}) must be positive ({name})")));
    }
    Ok(())
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::RandomCrop { .. } => "RandomCrop",
            Op::CenterCrop { .. } => "CenterCrop",
            Op::Pad { .. } => "Pad",
            Op::RandomResizedCrop { .. } => "RandomResizedCrop",
            Op::RandomHorizontalFlip { .. } => "RandomHorizontalFlip",
            Op::RandomVerticalFlip { .. } => "RandomVerticalFlip",
            Op::AlternatingHorizontalFlip => "AlternatingHorizontalFlip",
            Op::Resize { .. } => "Resize",
            Op::ToTensor => "ToTensor",
            Op::ToDtypeScaled => "ToDtype",
            Op::Normalize { .. } => "Normalize",
            Op::RandomErasing { .. } => "RandomErasing",
            Op::Cutout { .. } => "Cutout",
        }
    }

    /// Checks the parameters that do not depend on the image (the rest waits for `Pipeline::new`).
    pub fn validate(&self) -> Result<()> {
        let name = self.name();
        match self {
            Op::RandomCrop { size, .. } | Op::CenterCrop { size } => check_size(name, *size),
            Op::Pad { .. } => Ok(()),
            Op::RandomResizedCrop { size, scale, ratio } => {
                check_size(name, *size)?;
                if !(0.0 < scale.0 && scale.0 <= scale.1 && scale.1.is_finite()) {
                    return Err(Error::invalid(
                        "scale",
                        format!("{scale:?} must satisfy 0 < min <= max (RandomResizedCrop)"),
                    ));
                }
                if !(0.0 < ratio.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                    return Err(Error::invalid(
                        "ratio",
                        format!("{ratio:?} must satisfy 0 < min <= max (RandomResizedCrop)"),
                    ));
                }
                Ok(())
            }
            Op::RandomHorizontalFlip { p } | Op::RandomVerticalFlip { p } => check_p(name, *p),
            Op::Resize {
                size: ResizeTo::Shorter(s),
            } => check_size(name, (*s, *s)),
            Op::Resize {
                size: ResizeTo::Exact(h, w),
            } => check_size(name, (*h, *w)),
            Op::ToTensor | Op::ToDtypeScaled | Op::AlternatingHorizontalFlip => Ok(()),
            Op::Normalize { mean, std } => {
                if mean.is_empty() || mean.len() != std.len() {
                    return Err(Error::invalid(
                        "mean",
                        format!("{} values for mean but {} for std (Normalize)", mean.len(), std.len()),
                    ));
                }
                if let Some(s) = std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
                    return Err(Error::invalid(
                        "std",
                        format!("{s} would divide by zero or is not finite (Normalize)"),
                    ));
                }
                if mean.iter().any(|m| !m.is_finite()) {
                    return Err(Error::invalid("mean", "values must be finite (Normalize)"));
                }
                Ok(())
            }
            Op::RandomErasing { p, scale, ratio, value } => {
                check_p(name, *p)?;
                if !(0.0 <= scale.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                    return Err(Error::invalid(
                        "scale",
                        format!("{scale:?} must satisfy 0 <= min <= max <= 1 (RandomErasing)"),
                    ));
                }
                if !(0.0 < ratio.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                    return Err(Error::invalid(
                        "ratio",
                        format!("{ratio:?} must satisfy 0 < min <= max (RandomErasing)"),
                    ));
                }
                check_value(name, value)
            }
            Op::Cutout { size, p, value } => {
                check_p(name, *p)?;
                check_size(name, (*size, *size))?;
                check_value(name, value)
            }
        }
    }
}

fn check_value(name: &str, value: &[f64]) -> Result<()> {
    if value.is_empty() || value.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "value",
            format!("needs one finite value or one per channel ({name})"),
        ));
    }
    Ok(())
}

/// A constant fill given as numbers (one, or one per channel) as pixel bytes: each must be an
/// integer in [0, 255], as torchvision's fill for uint8 images.
pub fn pixel_fill(fill: &[f64]) -> Result<Vec<u8>> {
    if fill.iter().any(|f| !(0.0..=255.0).contains(f) || f.fract() != 0.0) {
        let shown = fill.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ");
        let shown = if fill.len() == 1 { shown } else { format!("[{shown}]") };
        return Err(Error::invalid(
            "fill",
            format!("{shown} must be pixel values, integers in [0, 255]"),
        ));
    }
    Ok(fill.iter().map(|&f| f as u8).collect())
}

impl PadMode {
    /// The name `FromStr` reads.
    pub fn name(self) -> &'static str {
        match self {
            PadMode::Constant => "constant",
            PadMode::Reflect => "reflect",
            PadMode::Edge => "edge",
            PadMode::Symmetric => "symmetric",
        }
    }
}
