//! torchvision-style transforms, compiled into one fused pass per sample.
//!
//! A pipeline is a list of `Op`s in torchvision order. `Pipeline::new` checks it against the image
//! shape and compiles it into:
//! - geometry stages: runs of crops / pads / flips become two index maps (rows, columns), because all
//!   of them are separable; `Resize` is a separable bilinear filter with precomputed weights;
//! - one per-channel affine for `ToTensor` and `Normalize` (out = pixel * scale + bias), applied while
//!   the final stage writes the output (through a 256-entry table per channel);
//! - rectangles (`RandomErasing`, `Cutout`) overwritten in the output afterwards.
//!
//! So a batch is read once from the uint8 data set and written once into the output tensor's memory,
//! with no per-image allocation (Resize reuses a per-thread scratch buffer).
mod resize;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;
use resize::Weights;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

impl std::str::FromStr for PadMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(PadMode::Constant),
            "reflect" => Ok(PadMode::Reflect),
            "edge" => Ok(PadMode::Edge),
            _ => Err(Error::invalid("padding_mode", format!("'{s}' is not one of 'constant', 'reflect', 'edge'"))),
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
    RandomCrop { size: (usize, usize), padding: [usize; 4], fill: Vec<u8>, mode: PadMode, pad_if_needed: bool },
    CenterCrop { size: (usize, usize) },
    RandomHorizontalFlip { p: f64 },
    RandomVerticalFlip { p: f64 },
    /// airbench's alternating flip: each image gets one fair coin for the whole run (from the
    /// seed and its index), and is mirrored when that coin and the epoch's parity disagree, so
    /// every image is seen mirrored in exactly one of two consecutive epochs.
    AlternatingHorizontalFlip,
    Resize { size: ResizeTo },
    ToTensor,
    Normalize { mean: Vec<f64>, std: Vec<f64> },
    /// torchvision's RandomErasing: area fraction in `scale`, aspect ratio in `ratio` (log-uniform).
    RandomErasing { p: f64, scale: (f64, f64), ratio: (f64, f64), value: Vec<f64> },
    /// DeVries & Taylor's Cutout: a `size` square centred on a uniform pixel, clipped at the border.
    Cutout { size: usize, p: f64, value: Vec<f64> },
}

fn check_p(name: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid("p", format!("{p} is not a probability in [0, 1] ({name})")));
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
            Op::RandomHorizontalFlip { .. } => "RandomHorizontalFlip",
            Op::RandomVerticalFlip { .. } => "RandomVerticalFlip",
            Op::AlternatingHorizontalFlip => "AlternatingHorizontalFlip",
            Op::Resize { .. } => "Resize",
            Op::ToTensor => "ToTensor",
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
            Op::RandomHorizontalFlip { p } | Op::RandomVerticalFlip { p } => check_p(name, *p),
            Op::Resize { size: ResizeTo::Shorter(s) } => check_size(name, (*s, *s)),
            Op::Resize { size: ResizeTo::Exact(h, w) } => check_size(name, (*h, *w)),
            Op::ToTensor | Op::AlternatingHorizontalFlip => Ok(()),
            Op::Normalize { mean, std } => {
                if mean.is_empty() || mean.len() != std.len() {
                    return Err(Error::invalid("mean", format!("{} values for mean but {} for std (Normalize)", mean.len(), std.len())));
                }
                if let Some(s) = std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
                    return Err(Error::invalid("std", format!("{s} would divide by zero or is not finite (Normalize)")));
                }
                if mean.iter().any(|m| !m.is_finite()) {
                    return Err(Error::invalid("mean", "values must be finite (Normalize)"));
                }
                Ok(())
            }
            Op::RandomErasing { p, scale, ratio, value } => {
                check_p(name, *p)?;
                if !(0.0 <= scale.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                    return Err(Error::invalid("scale", format!("{scale:?} must satisfy 0 <= min <= max <= 1 (RandomErasing)")));
                }
                if !(0.0 < ratio.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                    return Err(Error::invalid("ratio", format!("{ratio:?} must satisfy 0 < min <= max (RandomErasing)")));
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
        return Err(Error::invalid("value", format!("needs one finite value or one per channel ({name})")));
    }
    Ok(())
}

/// Broadcasts a one-or-per-channel parameter to `c` channels.
fn per_channel<T: Copy>(param: &str, op: &str, v: &[T], c: usize) -> Result<Vec<T>> {
    match v.len() {
        1 => Ok(vec![v[0]; c]),
        n if n == c => Ok(v.to_vec()),
        n => Err(Error::invalid(param, format!("{n} values for {c}-channel images ({op})"))),
    }
}

/// One separable geometric step, in the coordinates of its own input.
#[derive(Debug, Clone)]
enum Geo {
    /// Pad (left, top, right, bottom) then crop `size` at a random offset (or the centre).
    Crop { pad: [usize; 4], size: (usize, usize), random: bool, mode: PadMode, fill: usize },
    Flip { p: f64, horizontal: bool },
    /// Op::AlternatingHorizontalFlip.
    AltFlip,
}

/// Where a sample's randomness comes from: (seed, epoch, index). Most steps draw from one stream
/// keyed by all three; the alternating flip needs a draw that does not change with the epoch.
#[derive(Debug, Clone, Copy)]
struct Key {
    seed: u64,
    epoch: u64,
    index: u64,
}

#[derive(Debug, Clone)]
enum Stage {
    /// Crops, pads and flips: their composition is a row map and a column map.
    Maps { geos: Vec<Geo>, in_hw: (usize, usize) },
    Resize { wy: Weights, wx: Weights, in_hw: (usize, usize) },
}

#[derive(Debug, Clone)]
struct Erase {
    p: f64,
    kind: EraseKind,
    /// The fill, already mapped into the output's units, per channel.
    value: Vec<f32>,
}

#[derive(Debug, Clone)]
enum EraseKind {
    Random { scale: (f64, f64), log_ratio: (f64, f64) },
    Cutout { size: usize },
}

/// A pipeline as a device applies it (see `Pipeline::device_plan`): the fill value per channel
/// and `ToTensor` / `Normalize` folded into `pixel * scale + bias` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePlan {
    pub fill: Vec<u8>,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Output element type of the fused pass.
pub trait Element: Copy + Send + Sync + Default + 'static {
    /// Whether ToTensor / Normalize apply (float output) or are left for the device (bytes).
    const AFFINE: bool;
    /// Output value of pixel byte `v`: `v * scale + bias`.
    fn convert(v: u8, scale: f32, bias: f32) -> Self;
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    const AFFINE: bool = true;
    #[inline(always)]
    fn convert(v: u8, scale: f32, bias: f32) -> f32 {
        // ToTensor and Normalize folded into one multiply-add: within a few ulps (< 1e-6) of
        // torchvision's divide-subtract-divide, at a fraction of the cost (divisions don't pipeline).
        v as f32 * scale + bias
    }
    fn from_f32(v: f32) -> f32 {
        v
    }
}

/// Raw bytes: geometry (and erasing) only; `ToTensor` / `Normalize` are left for the GPU.
impl Element for u8 {
    const AFFINE: bool = false;
    #[inline(always)]
    fn convert(v: u8, _: f32, _: f32) -> u8 {
        v
    }
    fn from_f32(v: f32) -> u8 {
        v.round().clamp(0.0, 255.0) as u8
    }
}

/// Per-thread buffers, reused from sample to sample: no allocation per image.
#[derive(Default)]
struct Scratch {
    a: Vec<u8>,
    b: Vec<u8>,
    tmp: Vec<f32>,
    ymap: Vec<i32>,
    xmap: Vec<i32>,
    spare: Vec<i32>,
    runs: Vec<Run>,
    bytes: Vec<u8>,
}

/// A stretch of output columns: either a fill value or a contiguous source run (forwards or
/// backwards). Crops and flips give at most three per row, so rows copy as slices.
#[derive(Debug, Clone, Copy)]
enum Run {
    Fill { len: usize, marker: i32 },
    Copy { len: usize, src: usize, reverse: bool },
}

fn runs_of(xmap: &[i32], out: &mut Vec<Run>) {
    out.clear();
    let mut i = 0;
    while i < xmap.len() {
        let v = xmap[i];
        let mut j = i + 1;
        if v < 0 {
            while j < xmap.len() && xmap[j] == v {
                j += 1;
            }
            out.push(Run::Fill { len: j - i, marker: v });
        } else {
            let step = if j < xmap.len() && xmap[j] == v - 1 { -1 } else { 1 };
            while j < xmap.len() && xmap[j] == xmap[j - 1] + step && xmap[j] >= 0 {
                j += 1;
            }
            let len = j - i;
            let reverse = step == -1;
            out.push(Run::Copy { len, src: if reverse { v as usize + 1 - len } else { v as usize }, reverse });
        }
        i = j;
    }
}

/// A compiled transform pipeline for images of one shape.
#[derive(Debug, Clone)]
pub struct Pipeline {
    ops: Vec<Op>,
    stages: Vec<Stage>,
    erases: Vec<Erase>,
    fills: Vec<Vec<u8>>,
    /// Output = pixel * scale + bias per channel (ToTensor and Normalize folded).
    scale: Vec<f64>,
    bias: Vec<f64>,
    in_shape: [usize; 3],
    out_shape: [usize; 3],
    /// Largest intermediate image (Resize output), for the per-thread scratch buffers.
    scratch: usize,
}

impl Pipeline {
    pub fn new(ops: Vec<Op>, in_shape: [usize; 3]) -> Result<Pipeline> {
        let [c, mut h, mut w] = in_shape;
        let mut stages = Vec::new();
        let mut geos = Vec::new();
        let mut stage_in = (h, w);
        let mut fills: Vec<Vec<u8>> = Vec::new();
        let (mut scale, mut bias) = (vec![1.0f64; c], vec![0.0f64; c]);
        let mut tensor = false;
        // Erasing values are given in the units at their position; remember those to map them later.
        let mut pending: Vec<(f64, EraseKind, Vec<f64>, Vec<f64>, Vec<f64>)> = Vec::new();
        let mut scratch = 0;
        for op in &ops {
            op.validate()?;
            let name = op.name();
            let geometric = matches!(op, Op::RandomCrop { .. } | Op::CenterCrop { .. } | Op::Resize { .. })
                || matches!(op, Op::RandomHorizontalFlip { .. } | Op::RandomVerticalFlip { .. } | Op::AlternatingHorizontalFlip);
            if geometric && tensor {
                return Err(Error::invalid(
                    "transforms",
                    format!("{name} after ToTensor: put geometric transforms before ToTensor in the fused pipeline"),
                ));
            }
            match op {
                Op::RandomCrop { size, padding, fill, mode, pad_if_needed } => {
                    let mut pad = *padding;
                    if *pad_if_needed {
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
                            format!("crop {}x{} is larger than the padded image {ph}x{pw} (RandomCrop)", size.0, size.1),
                        ));
                    }
                    if *mode == PadMode::Reflect && (pad[0].max(pad[2]) >= w || pad[1].max(pad[3]) >= h) {
                        return Err(Error::invalid("padding", format!("reflect padding {pad:?} must be smaller than the image {h}x{w} (RandomCrop)")));
                    }
                    let fill = per_channel("fill", name, fill, c)?;
                    fills.push(fill);
                    geos.push(Geo::Crop { pad, size: *size, random: true, mode: *mode, fill: fills.len() - 1 });
                    (h, w) = *size;
                }
                Op::CenterCrop { size } => {
                    // torchvision pads with zeros when the crop is larger than the image.
                    let (py, px) = (size.0.saturating_sub(h), size.1.saturating_sub(w));
                    let pad = [px / 2, py / 2, px - px / 2, py - py / 2];
                    fills.push(vec![0; c]);
                    geos.push(Geo::Crop { pad, size: *size, random: false, mode: PadMode::Constant, fill: fills.len() - 1 });
                    (h, w) = *size;
                }
                Op::RandomHorizontalFlip { p } => geos.push(Geo::Flip { p: *p, horizontal: true }),
                Op::RandomVerticalFlip { p } => geos.push(Geo::Flip { p: *p, horizontal: false }),
                Op::AlternatingHorizontalFlip => geos.push(Geo::AltFlip),
                Op::Resize { size } => {
                    let (nh, nw) = match *size {
                        ResizeTo::Exact(a, b) => (a, b),
                        // torchvision: the shorter side becomes `s`, the longer keeps the ratio (floored).
                        ResizeTo::Shorter(s) if h <= w => (s, (s * w / h).max(1)),
                        ResizeTo::Shorter(s) => ((s * h / w).max(1), s),
                    };
                    stages.push(Stage::Maps { geos: std::mem::take(&mut geos), in_hw: stage_in });
                    stages.push(Stage::Resize { wy: Weights::new(h, nh), wx: Weights::new(w, nw), in_hw: (h, w) });
                    scratch = scratch.max(c * h * w);
                    (h, w) = (nh, nw);
                    stage_in = (h, w);
                    scratch = scratch.max(c * h * w);
                }
                Op::ToTensor => {
                    if tensor {
                        return Err(Error::invalid("transforms", "ToTensor appears twice"));
                    }
                    tensor = true;
                    scale.iter_mut().for_each(|s| *s /= 255.0);
                    bias.iter_mut().for_each(|b| *b /= 255.0);
                }
                Op::Normalize { mean, std } => {
                    if !tensor {
                        return Err(Error::invalid("transforms", "Normalize needs ToTensor before it (it works on [0, 1] tensors)"));
                    }
                    let mean = per_channel("mean", name, mean, c)?;
                    let std = per_channel("std", name, std, c)?;
                    for ch in 0..c {
                        scale[ch] /= std[ch];
                        bias[ch] = (bias[ch] - mean[ch]) / std[ch];
                    }
                }
                Op::RandomErasing { p, scale: area, ratio, value } => {
                    if !tensor {
                        return Err(Error::invalid("transforms", "RandomErasing works on tensors: put it after ToTensor"));
                    }
                    let value = per_channel("value", name, value, c)?;
                    let kind = EraseKind::Random { scale: *area, log_ratio: (ratio.0.ln(), ratio.1.ln()) };
                    pending.push((*p, kind, value, scale.clone(), bias.clone()));
                }
                Op::Cutout { size, p, value } => {
                    if !tensor {
                        return Err(Error::invalid("transforms", "Cutout works on tensors: put it after ToTensor"));
                    }
                    let value = per_channel("value", name, value, c)?;
                    pending.push((*p, EraseKind::Cutout { size: *size }, value, scale.clone(), bias.clone()));
                }
            }
        }
        // The final stage always writes through maps, even if it is the identity.
        stages.push(Stage::Maps { geos, in_hw: stage_in });
        // value (in units at the op) -> pixel units -> output units.
        let erases = pending
            .into_iter()
            .map(|(p, kind, value, s0, b0)| {
                let value = (0..c).map(|ch| (((value[ch] - b0[ch]) / s0[ch]) * scale[ch] + bias[ch]) as f32).collect();
                Erase { p, kind, value }
            })
            .collect();
        Ok(Pipeline { ops, stages, erases, fills, scale, bias, in_shape, out_shape: [c, h, w], scratch })
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// How a device applies this pipeline to resident images, or None when it cannot: only
    /// crops, pads and flips then ToTensor / Normalize (one map stage, no Resize, no erasing, at
    /// most one fill value) become two gathers, a fill and an affine.
    pub fn device_plan(&self) -> Option<DevicePlan> {
        if self.stages.len() != 1 || !self.erases.is_empty() {
            return None;
        }
        let c = self.in_shape[0];
        let fill = match self.fills.split_first() {
            None => vec![0; c],
            Some((f, rest)) if rest.iter().all(|g| g == f) => f.clone(),
            _ => return None,
        };
        Some(DevicePlan { fill, scale: self.scale.iter().map(|&v| v as f32).collect(), bias: self.bias.iter().map(|&v| v as f32).collect() })
    }

    /// Sample `index`'s row and column maps for (seed, epoch): the same draws, from the same
    /// stream, as the CPU pass makes (entries >= 0 are source rows / columns, negative ones the
    /// fill). Only for pipelines with a `device_plan`.
    pub fn sample_maps(&self, seed: u64, epoch: u64, index: u64, ymap: &mut Vec<i32>, xmap: &mut Vec<i32>) {
        let Some(Stage::Maps { geos, in_hw }) = self.stages.first() else { return };
        let mut s = Scratch::default();
        self.maps(geos, *in_hw, &mut Rng::keyed(&[seed, epoch, index]), Key { seed, epoch, index }, &mut s);
        ymap.clone_from(&s.ymap);
        xmap.clone_from(&s.xmap);
    }

    pub fn out_shape(&self) -> [usize; 3] {
        self.out_shape
    }

    pub fn in_shape(&self) -> [usize; 3] {
        self.in_shape
    }

    /// Writes the transformed images `indices` of `ds` into `out` (B * C * H * W elements), one
    /// sample per task across the current rayon pool. Sample `i`'s randomness is keyed by
    /// (seed, epoch, i) alone.
    pub fn apply_batch<T: Element>(&self, ds: &Dataset, indices: &[usize], seed: u64, epoch: u64, out: &mut [T]) -> Result<()> {
        if ds.shape != self.in_shape {
            return Err(Error::invalid("dataset", format!("images are {:?}, the pipeline was built for {:?}", ds.shape, self.in_shape)));
        }
        let per: usize = self.out_shape.iter().product();
        if out.len() != per * indices.len() {
            return Err(Error::invalid("out", format!("{} elements for {} samples of {per}", out.len(), indices.len())));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
            return Err(Error::invalid("index", format!("{bad} is out of range for {} images", ds.len())));
        }
        let c = self.out_shape[0];
        let (scale, bias): (Vec<f32>, Vec<f32>) = if T::AFFINE {
            (self.scale.iter().map(|&v| v as f32).collect(), self.bias.iter().map(|&v| v as f32).collect())
        } else {
            (vec![1.0; c], vec![0.0; c])
        };
        let affine = Affine { scale: &scale, bias: &bias };
        // Shuffled sampling makes every source image a cache miss: each task walks a run of
        // samples and prefetches the next image while it transforms the current one.
        const RUN: usize = 8;
        out.par_chunks_mut(per * RUN).zip(indices.par_chunks(RUN)).for_each_init(
            || Scratch { a: vec![0u8; self.scratch], b: vec![0u8; self.scratch], ..Default::default() },
            |s, (dst, idx)| {
                for (k, (d, &i)) in dst.chunks_mut(per).zip(idx).enumerate() {
                    if let Some(&next) = idx.get(k + 1) {
                        prefetch(ds.image(next));
                    }
                    let key = Key { seed, epoch, index: i as u64 };
                    let mut rng = Rng::keyed(&[seed, epoch, i as u64]);
                    self.apply_one(ds.image(i), &mut rng, key, &affine, s, d);
                }
            },
        );
        Ok(())
    }

    fn apply_one<T: Element>(&self, src: &[u8], rng: &mut Rng, key: Key, affine: &Affine, s: &mut Scratch, dst: &mut [T]) {
        let c = self.in_shape[0];
        // After the first Resize the current image lives in `s.a`; each stage writes `s.b`, then swaps.
        let mut in_scratch = false;
        let last = self.stages.len() - 1;
        for (si, stage) in self.stages.iter().enumerate() {
            match stage {
                Stage::Maps { geos, in_hw } => {
                    self.maps(geos, *in_hw, rng, key, s);
                    runs_of(&s.xmap, &mut s.runs);
                    let cur: &[u8] = if in_scratch { &s.a[..] } else { src };
                    let m = MapArgs { src: cur, c, hw: *in_hw, ymap: &s.ymap, runs: &s.runs, fills: &self.fills };
                    if si == last {
                        write_mapped(&m, &mut s.bytes, dst, affine);
                        break;
                    }
                    // Only happens right before a Resize: materialise as bytes.
                    let n = c * s.ymap.len() * s.xmap.len();
                    write_mapped(&m, &mut s.bytes, &mut s.b[..n], &Affine::IDENTITY);
                }
                Stage::Resize { wy, wx, in_hw } => {
                    let cur: &[u8] = if in_scratch { &s.a[..] } else { src };
                    let n = c * wy.len() * wx.len();
                    resize::resize(cur, c, *in_hw, wy, wx, &mut s.tmp, &mut s.b[..n]);
                }
            }
            std::mem::swap(&mut s.a, &mut s.b);
            in_scratch = true;
        }
        let [_, h, w] = self.out_shape;
        for e in &self.erases {
            if let Some((y0, x0, eh, ew)) = e.draw(rng, h, w) {
                for ch in 0..c {
                    let v = T::from_f32(e.value[ch]);
                    for y in y0..y0 + eh {
                        dst[(ch * h + y) * w + x0..][..ew].fill(v);
                    }
                }
            }
        }
    }

    /// Draws one sample's geometry and leaves its row and column maps (into the stage input) in
    /// `s.ymap` / `s.xmap`. Entries >= 0 are source coordinates; -(k + 1) means "fill value k".
    fn maps(&self, geos: &[Geo], (h, w): (usize, usize), rng: &mut Rng, key: Key, s: &mut Scratch) {
        s.ymap.clear();
        s.ymap.extend(0..h as i32);
        s.xmap.clear();
        s.xmap.extend(0..w as i32);
        for g in geos {
            match *g {
                Geo::Crop { pad, size, random, mode, fill } => {
                    let (ph, pw) = (s.ymap.len() + pad[1] + pad[3], s.xmap.len() + pad[0] + pad[2]);
                    let (oy, ox) = if random {
                        // torchvision: i = randint(0, h - th + 1), then j likewise.
                        (rng.below(ph - size.0 + 1), rng.below(pw - size.1 + 1))
                    } else {
                        // torchvision's centre: int(round((h - th) / 2)).
                        (((ph - size.0) as f64 / 2.0).round() as usize, ((pw - size.1) as f64 / 2.0).round() as usize)
                    };
                    crop_map(&s.ymap, &mut s.spare, pad[1], oy, size.0, mode, fill);
                    std::mem::swap(&mut s.ymap, &mut s.spare);
                    crop_map(&s.xmap, &mut s.spare, pad[0], ox, size.1, mode, fill);
                    std::mem::swap(&mut s.xmap, &mut s.spare);
                }
                Geo::AltFlip => {
                    // The image's own coin: u64::MAX - 1 in the epoch's place, an epoch never reached.
                    let coin = Rng::keyed(&[key.seed, u64::MAX - 1, key.index]).uniform() < 0.5;
                    if coin != (key.epoch % 2 == 1) {
                        s.xmap.reverse();
                    }
                }
                Geo::Flip { p, horizontal } => {
                    // torch.rand(1) < p
                    if rng.uniform() < p {
                        if horizontal {
                            s.xmap.reverse();
                        } else {
                            s.ymap.reverse();
                        }
                    }
                }
            }
        }
    }
}

/// Per-channel `pixel * scale + bias` (ToTensor and Normalize folded together).
struct Affine<'a> {
    scale: &'a [f32],
    bias: &'a [f32],
}

impl Affine<'static> {
    const IDENTITY: Affine<'static> = Affine { scale: &[1.0; 4], bias: &[0.0; 4] };
}

impl Erase {
    /// (y, x, h, w) of the rectangle to fill, or None.
    fn draw(&self, rng: &mut Rng, h: usize, w: usize) -> Option<(usize, usize, usize, usize)> {
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
                let (y0, y1) = ((cy - half).max(0) as usize, ((cy - half + size as isize).min(h as isize)) as usize);
                let (x0, x1) = ((cx - half).max(0) as usize, ((cx - half + size as isize).min(w as isize)) as usize);
                Some((y0, x0, y1 - y0, x1 - x0))
            }
        }
    }
}

/// One axis of pad-then-crop: output coordinate j reads padded coordinate j + offset.
fn crop_map(map: &[i32], out: &mut Vec<i32>, pad_before: usize, offset: usize, size: usize, mode: PadMode, fill: usize) {
    let n = map.len() as isize;
    out.clear();
    out.extend((0..size).map(|j| {
        let q = (j + offset) as isize - pad_before as isize;
        if (0..n).contains(&q) {
            return map[q as usize];
        }
        match mode {
            PadMode::Constant => -(fill as i32) - 1,
            PadMode::Edge => map[q.clamp(0, n - 1) as usize],
            // torchvision / numpy "reflect": the edge pixel is not repeated.
            PadMode::Reflect => {
                let period = 2 * (n - 1).max(1);
                let mut r = q.rem_euclid(period);
                if r >= n {
                    r = period - r;
                }
                map[r.clamp(0, n - 1) as usize]
            }
        }
    }));
}

/// What one final (or pre-Resize) write reads: the source image and this sample's maps.
struct MapArgs<'a> {
    src: &'a [u8],
    c: usize,
    hw: (usize, usize),
    ymap: &'a [i32],
    runs: &'a [Run],
    fills: &'a [Vec<u8>],
}

/// Writes a C x |ymap| x (sum of run lengths) image from `src` (C x h x w) through the row map,
/// the column runs and the per-channel affine. Rows are slice copies, which the compiler vectorises;
/// on CPUs with AVX2 the same code is compiled 8 lanes wide (no FMA: results stay bit-identical).
fn write_mapped<T: Element>(m: &MapArgs, bytes: &mut Vec<u8>, dst: &mut [T], affine: &Affine) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { write_mapped_avx2(m, bytes, dst, affine) };
    }
    write_mapped_impl(m, bytes, dst, affine)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn write_mapped_avx2<T: Element>(m: &MapArgs, bytes: &mut Vec<u8>, dst: &mut [T], affine: &Affine) {
    write_mapped_impl(m, bytes, dst, affine)
}

#[inline(always)]
fn write_mapped_impl<T: Element>(m: &MapArgs, bytes: &mut Vec<u8>, dst: &mut [T], affine: &Affine) {
    let MapArgs { c, hw: (_, w), ymap, runs, .. } = *m;
    let ow: usize = runs.iter().map(|r| match r {
        Run::Fill { len, .. } | Run::Copy { len, .. } => *len,
    }).sum();
    let oh = ymap.len();
    let n = oh * ow;
    // 1. Gather the sample's bytes: runs are short copies / fills, so this is cheap and branch-light.
    bytes.resize(c * n, 0);
    if let Some(shift) = shifted_rows::<32>(w, runs) {
        gather_shifted::<32>(m, shift, bytes);
    } else {
        gather_runs(m, ow, bytes);
    }
    // 2. Convert whole planes in one uniform loop (no short runs, no tails for 32x32 images).
    for ch in 0..c {
        let (sc, bi) = (affine.scale[ch], affine.bias[ch]);
        for (o, &v) in dst[ch * n..(ch + 1) * n].iter_mut().zip(&bytes[ch * n..(ch + 1) * n]) {
            *o = T::convert(v, sc, bi);
        }
    }
}

/// A row layout where every valid row is the source row shifted by `offset` columns (mirrored
/// when `reverse`), padded with one fill value: what RandomCrop(W, padding) and a flip give.
#[derive(Clone, Copy)]
struct Shift {
    offset: isize,
    reverse: bool,
    fill: Option<i32>,
}

/// Length of the padded row buffer of the fast path.
const EXT: usize = 192;

/// Recognises that layout for rows of exactly `W` columns read from `W`-wide images.
fn shifted_rows<const W: usize>(w: usize, runs: &[Run]) -> Option<Shift> {
    if w != W {
        return None;
    }
    let mut fill = None;
    let (mut x, mut copy) = (0usize, None);
    for r in runs {
        match *r {
            Run::Fill { len, marker } => {
                if fill.is_some_and(|f| f != marker) {
                    return None;
                }
                fill = Some(marker);
                x += len;
            }
            Run::Copy { len, src, reverse } => {
                if copy.is_some() {
                    return None;
                }
                copy = Some((x, len, src, reverse));
                x += len;
            }
        }
    }
    let (x0, len, src, reverse) = copy?;
    if x != W {
        return None;
    }
    // Output column x0 + j reads source src + j (or src + len - 1 - j when mirrored).
    let offset = if reverse { (src + len - 1) as isize + x0 as isize } else { src as isize - x0 as isize };
    // The copy must cover everything the shift can reach inside the source.
    let inside = |xo: isize| {
        let s = if reverse { offset - xo } else { xo + offset };
        (0..W as isize).contains(&s)
    };
    let covered = (0..W as isize).filter(|&xo| inside(xo)).count();
    // The window read from the padded row buffer (see gather_shifted) must lie inside it.
    let start = if reverse { offset + 1 } else { W as isize + offset };
    if covered != len || start < 0 || start as usize + W > EXT {
        return None;
    }
    Some(Shift { offset, reverse, fill })
}

/// The fast gather for `Shift` layouts: fixed-size row moves through a padded row buffer.
#[inline(always)]
fn gather_shifted<const W: usize>(m: &MapArgs, sh: Shift, bytes: &mut [u8]) {
    let MapArgs { src, c, hw: (h, w), ymap, fills, .. } = *m;
    let oh = ymap.len();
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let fill_of = |k: i32| fills[(-k - 1) as usize][ch];
        let fv = sh.fill.map_or(0, fill_of);
        // [W fill][source row][fill...]: a shifted window is one fixed-size copy.
        let mut ext = [fv; EXT];
        for (y, &sy) in ymap.iter().enumerate() {
            let row: &mut [u8; W] = (&mut bytes[(ch * oh + y) * W..][..W]).try_into().unwrap();
            if sy < 0 {
                match sh.fill {
                    Some(f) if f != sy => {
                        // Pads from two different ops: where the columns are padded too, the later
                        // pad (the smaller marker) is the visible one.
                        for (xo, o) in row.iter_mut().enumerate() {
                            let s = if sh.reverse { sh.offset - xo as isize } else { xo as isize + sh.offset };
                            *o = fill_of(if (0..W as isize).contains(&s) { sy } else { sy.min(f) });
                        }
                    }
                    _ => *row = [fill_of(sy); W],
                }
                continue;
            }
            let srow: &[u8; W] = plane[sy as usize * W..][..W].try_into().unwrap();
            ext[W..2 * W].copy_from_slice(srow);
            if sh.reverse {
                // out[x] = src[offset - x] = ext[W + offset - x]: reverse the window ending there.
                let start = (W as isize + sh.offset - (W as isize - 1)) as usize;
                let mut win: [u8; W] = ext[start..start + W].try_into().unwrap();
                win.reverse();
                *row = win;
            } else {
                let start = (W as isize + sh.offset) as usize;
                *row = ext[start..start + W].try_into().unwrap();
            }
        }
    }
}

/// The general gather: any run layout, any width.
#[inline(always)]
fn gather_runs(m: &MapArgs, ow: usize, bytes: &mut [u8]) {
    let MapArgs { src, c, hw: (h, w), ymap, runs, fills } = *m;
    let oh = ymap.len();
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let fill_of = |k: i32| fills[(-k - 1) as usize][ch];
        // The fill byte of each Fill run, looked up once per channel rather than once per row.
        let run_fill: SmallFills = runs.iter().map(|r| if let Run::Fill { marker, .. } = r { fill_of(*marker) } else { 0 }).collect();
        for (y, &sy) in ymap.iter().enumerate() {
            let row = &mut bytes[(ch * oh + y) * ow..][..ow];
            if sy < 0 {
                // A padded row; where a later column pad overlaps, the later pad is the visible one.
                let mut x = 0;
                for run in runs {
                    let (len, k) = match *run {
                        Run::Fill { len, marker } => (len, sy.min(marker)),
                        Run::Copy { len, .. } => (len, sy),
                    };
                    fill_small(&mut row[x..x + len], fill_of(k));
                    x += len;
                }
                continue;
            }
            let srow = &plane[sy as usize * w..][..w];
            let mut x = 0;
            for (run, &fv) in runs.iter().zip(run_fill.iter()) {
                match *run {
                    Run::Fill { len, .. } => {
                        fill_small(&mut row[x..x + len], fv);
                        x += len;
                    }
                    Run::Copy { len, src: s0, reverse } => {
                        copy_small(&mut row[x..x + len], &srow[s0..s0 + len], reverse);
                        x += len;
                    }
                }
            }
        }
    }
}

/// Asks the CPU to start loading `bytes` into cache (a hint: no effect on results).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch hint on memory we own; it never faults.
        unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr() as *const i8, std::arch::x86_64::_MM_HINT_T0) };
    }
}

/// Fill bytes per run; a row rarely has more than three runs, so this stays on the stack.
type SmallFills = smallvec_lite::Fills;

mod smallvec_lite {
    /// Up to 8 values inline, more on the heap (reflect padding of narrow images).
    pub enum Fills {
        Inline([u8; 8], usize),
        Heap(Vec<u8>),
    }
    impl FromIterator<u8> for Fills {
        fn from_iter<I: IntoIterator<Item = u8>>(it: I) -> Self {
            let mut a = [0u8; 8];
            let mut n = 0;
            let mut it = it.into_iter();
            for v in it.by_ref() {
                if n == 8 {
                    let mut v2 = a.to_vec();
                    v2.push(v);
                    v2.extend(it);
                    return Fills::Heap(v2);
                }
                a[n] = v;
                n += 1;
            }
            Fills::Inline(a, n)
        }
    }
    impl Fills {
        pub fn iter(&self) -> std::slice::Iter<'_, u8> {
            match self {
                Fills::Inline(a, n) => a[..*n].iter(),
                Fills::Heap(v) => v.iter(),
            }
        }
    }
}

/// `dst.copy_from_slice(src)` (reversed if asked) for the short row pieces of small images, in
/// 16-byte chunks with an overlapping tail. Calling libc's memcpy ~300 times per 32x32 image cost
/// more than the copying itself.
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8], reverse: bool) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    if n < 16 {
        for i in 0..n {
            dst[i] = src[if reverse { n - 1 - i } else { i }];
        }
        return;
    }
    let chunk = |i: usize| -> [u8; 16] {
        if reverse {
            let mut a: [u8; 16] = src[n - i - 16..n - i].try_into().unwrap();
            a.reverse();
            a
        } else {
            src[i..i + 16].try_into().unwrap()
        }
    };
    let mut i = 0;
    while i + 16 <= n {
        dst[i..i + 16].copy_from_slice(&chunk(i));
        i += 16;
    }
    if i < n {
        dst[n - 16..].copy_from_slice(&chunk(n - 16));
    }
}

#[inline(always)]
fn fill_small(dst: &mut [u8], v: u8) {
    let n = dst.len();
    if n < 16 {
        for d in dst {
            *d = v;
        }
        return;
    }
    let mut i = 0;
    while i + 16 <= n {
        dst[i..i + 16].copy_from_slice(&[v; 16]);
        i += 16;
    }
    if i < n {
        dst[n - 16..].copy_from_slice(&[v; 16]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(n: usize, c: usize, h: usize, w: usize) -> Dataset {
        let images: Vec<u8> = (0..n * c * h * w).map(|i| (i % 251) as u8).collect();
        Dataset::new(images, vec![0; n], vec!["x".into()], [c, h, w]).unwrap()
    }

    fn crop(size: usize, pad: usize, mode: PadMode) -> Op {
        Op::RandomCrop { size: (size, size), padding: [pad; 4], fill: vec![0], mode, pad_if_needed: false }
    }

    #[test]
    fn to_tensor_normalize_is_affine() {
        let d = ds(2, 3, 4, 4);
        let ops = vec![Op::ToTensor, Op::Normalize { mean: vec![0.5, 0.4, 0.3], std: vec![0.2, 0.25, 0.5] }];
        let p = Pipeline::new(ops, d.shape).unwrap();
        let mut out = vec![0f32; 2 * 48];
        p.apply_batch(&d, &[0, 1], 0, 0, &mut out).unwrap();
        for (i, (&o, &v)) in out.iter().zip(d.images.iter()).enumerate() {
            let ch = (i % 48) / 16;
            let (m, s) = ([0.5, 0.4, 0.3][ch], [0.2, 0.25, 0.5][ch]);
            assert!((o as f64 - (v as f64 / 255.0 - m) / s).abs() < 1e-5);
        }
    }

    #[test]
    fn crop_with_padding_reads_the_right_pixels() {
        // 1 channel, 3x3 image 0..9. Reflect pad 1 then crop 5x5 can only be the whole padded image.
        let d = Dataset::new((0..9).collect::<Vec<u8>>(), vec![0], vec!["x".into()], [1, 3, 3]).unwrap();
        let p = Pipeline::new(vec![crop(5, 1, PadMode::Reflect)], d.shape).unwrap();
        let mut out = vec![0u8; 25];
        p.apply_batch(&d, &[0], 1, 2, &mut out).unwrap();
        #[rustfmt::skip]
        let expect = [4, 3, 4, 5, 4,  1, 0, 1, 2, 1,  4, 3, 4, 5, 4,  7, 6, 7, 8, 7,  4, 3, 4, 5, 4];
        assert_eq!(out, expect);
        let p = Pipeline::new(vec![crop(5, 1, PadMode::Edge)], d.shape).unwrap();
        p.apply_batch(&d, &[0], 1, 2, &mut out).unwrap();
        assert_eq!(&out[..5], &[0, 0, 1, 2, 2]);
        let fill = Op::RandomCrop { size: (5, 5), padding: [1; 4], fill: vec![9], mode: PadMode::Constant, pad_if_needed: false };
        let p = Pipeline::new(vec![fill], d.shape).unwrap();
        p.apply_batch(&d, &[0], 1, 2, &mut out).unwrap();
        assert_eq!(&out[..10], &[9, 9, 9, 9, 9, 9, 0, 1, 2, 9]);
    }

    #[test]
    fn same_batch_whatever_the_thread_count() {
        let d = ds(64, 3, 32, 32);
        let ops = vec![
            crop(32, 4, PadMode::Constant),
            Op::RandomHorizontalFlip { p: 0.5 },
            Op::ToTensor,
            Op::Normalize { mean: vec![0.5], std: vec![0.25] },
            Op::RandomErasing { p: 0.5, scale: (0.02, 0.33), ratio: (0.3, 3.3), value: vec![0.0] },
        ];
        let p = Pipeline::new(ops, d.shape).unwrap();
        let idx: Vec<usize> = (0..64).rev().collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0f32; 64 * 3072];
            pool.install(|| p.apply_batch(&d, &idx, 5, 1, &mut out)).unwrap();
            out
        };
        assert_eq!(run(1), run(2));
        let mut other = vec![0f32; 64 * 3072];
        p.apply_batch(&d, &idx, 5, 2, &mut other).unwrap();
        assert_ne!(run(1), other, "a new epoch must draw new augmentations");
    }

    #[test]
    fn resize_then_crop_and_flip() {
        let d = ds(3, 3, 32, 32);
        let ops = vec![Op::Resize { size: ResizeTo::Exact(64, 48) }, crop(40, 0, PadMode::Constant), Op::RandomHorizontalFlip { p: 1.0 }];
        let p = Pipeline::new(ops, d.shape).unwrap();
        assert_eq!(p.out_shape(), [3, 40, 40]);
        let mut out = vec![0u8; 3 * 3 * 1600];
        p.apply_batch(&d, &[0, 1, 2], 0, 0, &mut out).unwrap();
        let p = Pipeline::new(vec![Op::Resize { size: ResizeTo::Shorter(8) }], [3, 16, 32]).unwrap();
        assert_eq!(p.out_shape(), [3, 8, 16]);
    }

    #[test]
    fn shifted_row_fast_path_equals_the_general_gather() {
        let d = ds(4, 3, 32, 32);
        let crop = |pad: usize, fill: u8| Op::RandomCrop { size: (32, 32), padding: [pad; 4], fill: vec![fill], mode: PadMode::Constant, pad_if_needed: false };
        let layouts = [
            vec![crop(4, 0), Op::RandomHorizontalFlip { p: 0.5 }],
            vec![Op::RandomHorizontalFlip { p: 0.5 }, crop(8, 9)],
            vec![crop(2, 5), crop(3, 200), Op::RandomHorizontalFlip { p: 0.5 }],
            vec![crop(31, 1), Op::RandomVerticalFlip { p: 0.5 }],
            vec![Op::RandomHorizontalFlip { p: 1.0 }],
        ];
        let mut fast_used = Vec::new();
        for ops in layouts {
            fast_used.push(0);
            let p = Pipeline::new(ops, d.shape).unwrap();
            let Stage::Maps { geos, in_hw } = &p.stages[0] else { unreachable!() };
            for i in 0..200u64 {
                let mut s = Scratch::default();
                p.maps(geos, *in_hw, &mut Rng::keyed(&[i]), Key { seed: 0, epoch: 0, index: i }, &mut s);
                runs_of(&s.xmap, &mut s.runs);
                let m = MapArgs { src: d.image((i % 4) as usize), c: 3, hw: (32, 32), ymap: &s.ymap, runs: &s.runs, fills: &p.fills };
                let (mut a, mut b) = (vec![0u8; 3072], vec![0u8; 3072]);
                gather_runs(&m, 32, &mut a);
                if let Some(sh) = shifted_rows::<32>(32, &s.runs) {
                    gather_shifted::<32>(&m, sh, &mut b);
                    assert_eq!(a, b, "sample {i}");
                    *fast_used.last_mut().unwrap() += 1;
                }
            }
        }
        // The seed's layout always takes the fast path; two stacked crops with different fills
        // sometimes pad one side with both, which only the general gather handles.
        assert_eq!(fast_used[0], 200, "{fast_used:?}");
        assert_eq!(fast_used[4], 200, "{fast_used:?}");
        assert!(fast_used.iter().all(|&n| n > 0), "{fast_used:?}");
    }

    #[test]
    fn invalid_parameters_name_themselves() {
        let shape = [3, 32, 32];
        let err = |ops: Vec<Op>| Pipeline::new(ops, shape).unwrap_err().to_string();
        assert!(err(vec![crop(41, 4, PadMode::Constant)]).starts_with("size:"));
        assert!(err(vec![Op::RandomHorizontalFlip { p: 1.5 }]).starts_with("p:"));
        assert!(err(vec![Op::ToTensor, Op::Normalize { mean: vec![0.5; 3], std: vec![0.0; 3] }]).starts_with("std:"));
        assert!(err(vec![Op::ToTensor, Op::Normalize { mean: vec![0.5; 2], std: vec![0.1; 2] }]).starts_with("mean:"));
        assert!(err(vec![Op::Normalize { mean: vec![0.5], std: vec![0.1] }]).contains("ToTensor"));
        assert!(err(vec![Op::ToTensor, crop(32, 4, PadMode::Constant)]).contains("before ToTensor"));
    }
}
