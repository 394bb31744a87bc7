//! Compiling a list of `Op`s, for images of one shape, into a `Pipeline`: each op has its own
//! function below that checks it against the image so far and adds its part. Runs of crops, pads
//! and flips become `Geo` steps of one map stage (they are separable, so their composition is a row
//! map and a column map); Resize and RandomResizedCrop close that stage and add a resampling one;
//! ToTensor / Normalize become float steps (see `convert`); erasing becomes rectangles filled after
//! the final write, with their values translated into output units here, once.
use crate::error::{Error, Result};

use super::convert::{run_steps, Conv, FloatStep};
use super::erase::{Erase, EraseKind};
use super::ops::{Op, PadMode, ResizeTo};
use super::resize::Weights;

/// Broadcasts a one-or-per-channel parameter to `c` channels.
fn per_channel<T: Copy>(param: &str, op: &str, v: &[T], c: usize) -> Result<Vec<T>> {
    match v.len() {
        1 => Ok(vec![v[0]; c]),
        n if n == c => Ok(v.to_vec()),
        n => Err(Error::invalid(
            param,
            format!("{n} values for {c}-channel images ({op})"),
        )),
    }
}

/// One separable geometric step, in the coordinates of its own input.
#[derive(Debug, Clone)]
pub(super) enum Geo {
    /// Pad (left, top, right, bottom) then crop `size` at a random offset (or the centre).
    Crop {
        pad: [usize; 4],
        size: (usize, usize),
        random: bool,
        mode: PadMode,
        fill: usize,
    },
    Flip {
        p: f64,
        horizontal: bool,
    },
    /// Op::AlternatingHorizontalFlip.
    AltFlip,
}

#[derive(Debug, Clone)]
pub(super) enum Stage {
    /// Crops, pads and flips: their composition is a row map and a column map.
    Maps { geos: Vec<Geo>, in_hw: (usize, usize) },
    Resize {
        wy: Weights,
        wx: Weights,
        in_hw: (usize, usize),
    },
    /// RandomResizedCrop: a random box of the input, resized to `size` (weights made per sample).
    ResizedCrop {
        size: (usize, usize),
        scale: (f64, f64),
        ratio: (f64, f64),
        in_hw: (usize, usize),
    },
}

/// A compiled transform pipeline for images of one shape.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub(super) ops: Vec<Op>,
    pub(super) stages: Vec<Stage>,
    pub(super) erases: Vec<Erase>,
    pub(super) fills: Vec<Vec<u8>>,
    /// Per channel, the float output of each byte value (ToTensor and Normalize as torch computes them).
    pub(super) convs: Vec<Conv>,
    pub(super) in_shape: [usize; 3],
    pub(super) out_shape: [usize; 3],
    /// Largest intermediate image (Resize output), for the per-thread scratch buffers.
    pub(super) scratch: usize,
}

impl Pipeline {
    /// Checks `ops` (each op's own checks, their order, and what depends on the image shape) and
    /// compiles them for images of `in_shape` (C, H, W).
    pub fn new(ops: Vec<Op>, in_shape: [usize; 3]) -> Result<Pipeline> {
        let mut cx = Compiler::new(in_shape);
        for op in &ops {
            op.validate()?;
            cx.check_order(op)?;
            match op {
                Op::RandomCrop {
                    size,
                    padding,
                    fill,
                    mode,
                    pad_if_needed,
                } => cx.random_crop(*size, *padding, fill, *mode, *pad_if_needed)?,
                Op::Pad { padding, fill, mode } => cx.pad(*padding, fill, *mode)?,
                Op::CenterCrop { size } => cx.center_crop(*size),
                Op::RandomHorizontalFlip { p } => cx.geos.push(Geo::Flip {
                    p: *p,
                    horizontal: true,
                }),
                Op::RandomVerticalFlip { p } => cx.geos.push(Geo::Flip {
                    p: *p,
                    horizontal: false,
                }),
                Op::AlternatingHorizontalFlip => cx.geos.push(Geo::AltFlip),
                Op::Resize { size } => cx.resize(*size),
                Op::RandomResizedCrop { size, scale, ratio } => cx.random_resized_crop(*size, *scale, *ratio),
                Op::ToTensor => cx.float_start(FloatStep::Div255, "ToTensor")?,
                Op::ToDtypeScaled => cx.float_start(FloatStep::Mul255, "ToDtype")?,
                Op::Normalize { mean, std } => cx.normalize(mean, std)?,
                Op::RandomErasing { p, scale, ratio, value } => {
                    let kind = EraseKind::Random {
                        scale: *scale,
                        log_ratio: (ratio.0.ln(), ratio.1.ln()),
                    };
                    cx.erase(*p, kind, value, "RandomErasing")?
                }
                Op::Cutout { size, p, value } => cx.erase(*p, EraseKind::Cutout { size: *size }, value, "Cutout")?,
            }
        }
        Ok(cx.finish(ops, in_shape))
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn out_shape(&self) -> [usize; 3] {
        self.out_shape
    }

    pub fn in_shape(&self) -> [usize; 3] {
        self.in_shape
    }

    /// How a device builds this pipeline's batches from resident uint8 images (`crate::resident`),
    /// or None when it cannot: only crops, pads and flips (one map stage: no Resize, no
    /// RandomResizedCrop, no erasing, at most one fill value), then the float steps, which the
    /// device applies through the same per-channel tables as the fused pass.
    pub fn device_plan(&self) -> Option<DevicePlan> {
        if self.stages.len() != 1 || !self.erases.is_empty() {
            return None;
        }
        let fill = match self.fills.split_first() {
            None => vec![0; self.in_shape[0]],
            Some((f, rest)) if rest.iter().all(|g| g == f) => f.clone(),
            Some(_) => return None,
        };
        let tables = self.convs.iter().map(|c| *c.table()).collect();
        Some(DevicePlan { fill, tables })
    }
}

/// A pipeline as a device applies it (see `Pipeline::device_plan`): the fill value per channel,
/// and per channel the output value of each byte (ToTensor / Normalize as torchvision computes
/// them; the byte itself as a float without them).
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePlan {
    pub fill: Vec<u8>,
    pub tables: Vec<[f32; 256]>,
}

/// An erasing step, waiting for the float steps after it: its value is given in the units at its
/// position, so it is translated once all steps are known.
struct PendingErase {
    p: f64,
    kind: EraseKind,
    value: Vec<f64>,
    /// The f64 affine map from pixels to the units at the op's position, per channel.
    scale: Vec<f64>,
    bias: Vec<f64>,
    /// How many float steps come before it.
    at: usize,
}

/// What compiling has built so far, and the image as the next op sees it.
struct Compiler {
    c: usize,
    /// The image size after the ops so far.
    h: usize,
    w: usize,
    stages: Vec<Stage>,
    /// The geometric steps of the map stage being built.
    geos: Vec<Geo>,
    /// The input size of that stage.
    stage_in: (usize, usize),
    fills: Vec<Vec<u8>>,
    /// The f64 affine so far (to map erasing values back to pixels) and torch's float32 steps.
    scale: Vec<f64>,
    bias: Vec<f64>,
    steps: Vec<FloatStep>,
    /// Whether ToTensor (or ToDtype) has come: the images are floats from there on.
    tensor: bool,
    pending: Vec<PendingErase>,
    scratch: usize,
}

impl Compiler {
    fn new([c, h, w]: [usize; 3]) -> Compiler {
        Compiler {
            c,
            h,
            w,
            stages: Vec::new(),
            geos: Vec::new(),
            stage_in: (h, w),
            fills: Vec::new(),
            scale: vec![1.0; c],
            bias: vec![0.0; c],
            steps: Vec::new(),
            tensor: false,
            pending: Vec::new(),
            scratch: 0,
        }
    }

    /// The fused pass moves pixels before it converts them, so geometry after ToTensor is refused.
    fn check_order(&self, op: &Op) -> Result<()> {
        let geometric = matches!(
            op,
            Op::RandomCrop { .. } | Op::CenterCrop { .. } | Op::Resize { .. } | Op::Pad { .. }
        ) || matches!(
            op,
            Op::RandomHorizontalFlip { .. }
                | Op::RandomVerticalFlip { .. }
                | Op::AlternatingHorizontalFlip
                | Op::RandomResizedCrop { .. }
        );
        if geometric && self.tensor {
            let name = op.name();
            return Err(Error::invalid(
                "transforms",
                format!("{name} after ToTensor: put geometric transforms before ToTensor in the fused pipeline"),
            ));
        }
        Ok(())
    }

    /// A pad-then-crop step of the current map stage, with its fill per channel.
    fn push_crop(&mut self, pad: [usize; 4], size: (usize, usize), random: bool, mode: PadMode, fill: Vec<u8>) {
        self.fills.push(fill);
        self.geos.push(Geo::Crop {
            pad,
            size,
            random,
            mode,
            fill: self.fills.len() - 1,
        });
        (self.h, self.w) = size;
    }

    fn random_crop(
        &mut self,
        size: (usize, usize),
        padding: [usize; 4],
        fill: &[u8],
        mode: PadMode,
        pad_if_needed: bool,
    ) -> Result<()> {
        let (h, w) = (self.h, self.w);
        let mut pad = padding;
        if pad_if_needed {
            // torchvision pads each side by the whole shortfall (after `padding`).
            let (ph, pw) = (h + pad[1] + pad[3], w + pad[0] + pad[2]);
            if ph < size.0 {
                pad[1] += size.0 - ph;
                pad[3] += size.0 - ph;
            }
            if pw < size.1 {
                pad[0] += size.1 - pw;
                pad[2] += size.1 - pw;
            }
        }
        let (ph, pw) = (h + pad[1] + pad[3], w + pad[0] + pad[2]);
        if size.0 > ph || size.1 > pw {
            return Err(Error::invalid(
                "size",
                format!(
                    "crop {}x{} is larger than the padded image {ph}x{pw} (RandomCrop)",
                    size.0, size.1
                ),
            ));
        }
        let fill = per_channel("fill", "RandomCrop", fill, self.c)?;
        self.push_crop(pad, size, true, mode, fill);
        Ok(())
    }

    fn pad(&mut self, padding: [usize; 4], fill: &[u8], mode: PadMode) -> Result<()> {
        let size = (self.h + padding[1] + padding[3], self.w + padding[0] + padding[2]);
        let fill = per_channel("fill", "Pad", fill, self.c)?;
        self.push_crop(padding, size, false, mode, fill);
        Ok(())
    }

    fn center_crop(&mut self, size: (usize, usize)) {
        // torchvision pads with zeros when the crop is larger than the image.
        let (py, px) = (size.0.saturating_sub(self.h), size.1.saturating_sub(self.w));
        let pad = [px / 2, py / 2, px - px / 2, py - py / 2];
        self.push_crop(pad, size, false, PadMode::Constant, vec![0; self.c]);
    }

    /// Ends the current map stage before a resampling stage.
    fn close_maps(&mut self) {
        self.stages.push(Stage::Maps {
            geos: std::mem::take(&mut self.geos),
            in_hw: self.stage_in,
        });
    }

    fn resize(&mut self, size: ResizeTo) {
        let (c, h, w) = (self.c, self.h, self.w);
        let (nh, nw) = match size {
            ResizeTo::Exact(a, b) => (a, b),
            // torchvision: the shorter side becomes `s`, the longer keeps the ratio (floored).
            ResizeTo::Shorter(s) if h <= w => (s, (s * w / h).max(1)),
            ResizeTo::Shorter(s) => ((s * h / w).max(1), s),
        };
        self.close_maps();
        self.stages.push(Stage::Resize {
            wy: Weights::new(h, nh),
            wx: Weights::new(w, nw),
            in_hw: (h, w),
        });
        self.scratch = self.scratch.max(c * h * w).max(c * h * nw);
        (self.h, self.w) = (nh, nw);
        self.stage_in = (nh, nw);
        self.scratch = self.scratch.max(c * nh * nw);
    }

    fn random_resized_crop(&mut self, size: (usize, usize), scale: (f64, f64), ratio: (f64, f64)) {
        let (c, h, w) = (self.c, self.h, self.w);
        self.close_maps();
        self.stages.push(Stage::ResizedCrop {
            size,
            scale,
            ratio,
            in_hw: (h, w),
        });
        // The box is at most the image: its horizontal pass needs at most h x size.1.
        self.scratch = self.scratch.max(c * h * w).max(c * h * size.1);
        (self.h, self.w) = size;
        self.stage_in = size;
        self.scratch = self.scratch.max(c * size.0 * size.1);
    }

    /// ToTensor (`x / 255`) or v2's ToDtype(float32, scale=True) (`x * (1 / 255)`).
    fn float_start(&mut self, step: FloatStep, name: &str) -> Result<()> {
        if self.tensor {
            return Err(Error::invalid(
                "transforms",
                format!("{name} after ToTensor: the images are floats already"),
            ));
        }
        self.tensor = true;
        self.scale.iter_mut().for_each(|s| *s /= 255.0);
        self.bias.iter_mut().for_each(|b| *b /= 255.0);
        self.steps.push(step);
        Ok(())
    }

    fn normalize(&mut self, mean: &[f64], std: &[f64]) -> Result<()> {
        if !self.tensor {
            return Err(Error::invalid(
                "transforms",
                "Normalize needs ToTensor before it (it works on [0, 1] tensors)",
            ));
        }
        let mean = per_channel("mean", "Normalize", mean, self.c)?;
        let std = per_channel("std", "Normalize", std, self.c)?;
        for ch in 0..self.c {
            self.scale[ch] /= std[ch];
            self.bias[ch] = (self.bias[ch] - mean[ch]) / std[ch];
        }
        // torchvision turns mean and std into float32 tensors before it subtracts and divides.
        self.steps.push(FloatStep::Normalize {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std.iter().map(|&s| s as f32).collect(),
        });
        Ok(())
    }

    /// RandomErasing or Cutout: both work on tensors, with a value in the units at their position.
    fn erase(&mut self, p: f64, kind: EraseKind, value: &[f64], name: &str) -> Result<()> {
        if !self.tensor {
            return Err(Error::invalid(
                "transforms",
                format!("{name} works on tensors: put it after ToTensor"),
            ));
        }
        let value = per_channel("value", name, value, self.c)?;
        let (scale, bias, at) = (self.scale.clone(), self.bias.clone(), self.steps.len());
        self.pending.push(PendingErase {
            p,
            kind,
            value,
            scale,
            bias,
            at,
        });
        Ok(())
    }

    fn finish(mut self, ops: Vec<Op>, in_shape: [usize; 3]) -> Pipeline {
        let c = self.c;
        // The final stage always writes through maps, even if it is the identity.
        self.close_maps();
        let steps = &self.steps;
        let erases = self
            .pending
            .into_iter()
            .map(|e| {
                // Float output: the value as written there, then the float steps after it. Bytes:
                // the value mapped back to pixel units.
                let float = (0..c)
                    .map(|ch| run_steps(&steps[e.at..], ch, e.value[ch] as f32))
                    .collect();
                let pixel = (0..c)
                    .map(|ch| ((e.value[ch] - e.bias[ch]) / e.scale[ch]) as f32)
                    .collect();
                Erase {
                    p: e.p,
                    kind: e.kind,
                    float,
                    pixel,
                }
            })
            .collect();
        let convs = (0..c).map(|ch| Conv::new(steps, ch)).collect();
        Pipeline {
            ops,
            stages: self.stages,
            erases,
            fills: self.fills,
            convs,
            in_shape,
            out_shape: [c, self.h, self.w],
            scratch: self.scratch,
        }
    }
}
