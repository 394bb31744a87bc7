//! Applying a compiled pipeline: one sample per rayon task, randomness keyed by (seed, epoch,
//! index), stages run through per-thread scratch buffers so that no image allocates.
use rayon::prelude::*;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;

use super::compile::{Geo, Pipeline, Stage};
use super::convert::Element;
use super::gather::{prefetch, runs_of, write_mapped, MapArgs, Run};
use super::ops::PadMode;
use super::resize::{self, Weights};

/// Where a sample's randomness comes from. Most steps draw from one stream keyed by all three;
/// the alternating flip needs a draw that does not change with the epoch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    pub(super) seed: u64,
    pub(super) epoch: u64,
    pub(super) index: u64,
}

impl Key {
    pub(super) fn rng(self) -> Rng {
        Rng::keyed(&[self.seed, self.epoch, self.index])
    }
}

/// Per-thread buffers, reused from sample to sample: no allocation per image.
#[derive(Default)]
pub(super) struct Scratch {
    a: Vec<u8>,
    b: Vec<u8>,
    tmp: Vec<u8>,
    pub(super) ymap: Vec<i32>,
    pub(super) xmap: Vec<i32>,
    spare: Vec<i32>,
    pub(super) runs: Vec<Run>,
    bytes: Vec<u8>,
}

/// Rewrites one sample from (C, H, W) to (H, W, C) order in place. The sample is a few KB, so
/// the copy and the scatter stay in cache: a small cost next to the gather and the conversion.
fn to_hwc<T: Element>(d: &mut [T], [c, h, w]: [usize; 3]) {
    if c == 1 {
        return; // one channel: both orders are the same memory
    }
    let planar = d.to_vec();
    let hw = h * w;
    for (p, px) in d.chunks_exact_mut(c).enumerate() {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = planar[ch * hw + p];
        }
    }
}

impl Pipeline {
    /// Writes the transformed images `indices` of `ds` into `out` (B * C * H * W elements), one
    /// sample per task across the current rayon pool. Sample `i`'s randomness is keyed by
    /// (seed, epoch, i) alone.
    pub fn apply_batch<T: Element>(
        &self,
        ds: &Dataset,
        indices: &[usize],
        seed: u64,
        epoch: u64,
        out: &mut [T],
    ) -> Result<()> {
        self.apply_batch_in(ds, indices, seed, epoch, false, out)
    }

    /// `apply_batch`, each sample written channels-last (H, W, C) when `hwc`: the memory of a
    /// channels_last batch, which convolutions on oneDNN and cuDNN read without a reorder.
    pub fn apply_batch_in<T: Element>(
        &self,
        ds: &Dataset,
        indices: &[usize],
        seed: u64,
        epoch: u64,
        hwc: bool,
        out: &mut [T],
    ) -> Result<()> {
        if ds.shape != self.in_shape {
            return Err(Error::invalid(
                "dataset",
                format!(
                    "images are {:?}, the pipeline was built for {:?}",
                    ds.shape, self.in_shape
                ),
            ));
        }
        let per: usize = self.out_shape.iter().product();
        if out.len() != per * indices.len() {
            return Err(Error::invalid(
                "out",
                format!("{} elements for {} samples of {per}", out.len(), indices.len()),
            ));
        }
        check_indices(indices, ds.len())?;
        // Shuffled sampling makes every source image a cache miss: each task walks a run of
        // samples and prefetches the next image while it transforms the current one.
        const RUN: usize = 8;
        out.par_chunks_mut(per * RUN)
            .zip(indices.par_chunks(RUN))
            .for_each_init(
                || Scratch {
                    a: vec![0u8; self.scratch],
                    b: vec![0u8; self.scratch],
                    ..Default::default()
                },
                |s, (dst, idx)| {
                    for (k, (d, &i)) in dst.chunks_mut(per).zip(idx).enumerate() {
                        if let Some(&next) = idx.get(k + 1) {
                            prefetch(ds.image(next));
                        }
                        let key = Key {
                            seed,
                            epoch,
                            index: i as u64,
                        };
                        self.apply_one(ds.image(i), key, s, d);
                        if hwc {
                            to_hwc(d, self.out_shape);
                        }
                    }
                },
            );
        Ok(())
    }

    fn apply_one<T: Element>(&self, src: &[u8], key: Key, s: &mut Scratch, dst: &mut [T]) {
        let c = self.in_shape[0];
        let rng = &mut key.rng();
        // After the first Resize the current image lives in `s.a`; each stage writes `s.b`, then swaps.
        let mut in_scratch = false;
        let last = self.stages.len() - 1;
        for (si, stage) in self.stages.iter().enumerate() {
            match stage {
                Stage::Maps { geos, in_hw } => {
                    self.maps(geos, *in_hw, rng, key, s);
                    runs_of(&s.xmap, &mut s.runs);
                    let cur: &[u8] = if in_scratch { &s.a[..] } else { src };
                    let m = MapArgs {
                        src: cur,
                        c,
                        hw: *in_hw,
                        ymap: &s.ymap,
                        runs: &s.runs,
                        fills: &self.fills,
                    };
                    if si == last {
                        write_mapped(&m, &mut s.bytes, dst, &self.convs);
                        break;
                    }
                    // Only happens right before a Resize: materialise as bytes.
                    let n = c * s.ymap.len() * s.xmap.len();
                    write_mapped(&m, &mut s.bytes, &mut s.b[..n], &self.convs);
                }
                Stage::Resize { wy, wx, in_hw } => {
                    let cur: &[u8] = if in_scratch { &s.a[..] } else { src };
                    let n = c * wy.len() * wx.len();
                    resize::resize(cur, c, *in_hw, (0, 0), wy, wx, &mut s.tmp, &mut s.b[..n]);
                }
                Stage::ResizedCrop {
                    size,
                    scale,
                    ratio,
                    in_hw,
                } => {
                    let cur: &[u8] = if in_scratch { &s.a[..] } else { src };
                    let (y0, x0, bh, bw) = resized_crop_box(rng, *in_hw, *scale, *ratio);
                    let (wy, wx) = (Weights::new(bh, size.0), Weights::new(bw, size.1));
                    let n = c * size.0 * size.1;
                    resize::resize(cur, c, *in_hw, (y0, x0), &wy, &wx, &mut s.tmp, &mut s.b[..n]);
                }
            }
            std::mem::swap(&mut s.a, &mut s.b);
            in_scratch = true;
        }
        for e in &self.erases {
            e.apply(rng, self.out_shape, dst);
        }
    }

    /// Draws one sample's geometry and leaves its row and column maps (into the stage input) in
    /// `s.ymap` / `s.xmap`. Entries >= 0 are source coordinates; -(k + 1) means "fill value k".
    pub(super) fn maps(&self, geos: &[Geo], (h, w): (usize, usize), rng: &mut Rng, key: Key, s: &mut Scratch) {
        s.ymap.clear();
        s.ymap.extend(0..h as i32);
        s.xmap.clear();
        s.xmap.extend(0..w as i32);
        for g in geos {
            match *g {
                Geo::Crop {
                    pad,
                    size,
                    random,
                    mode,
                    fill,
                } => {
                    let (ph, pw) = (s.ymap.len() + pad[1] + pad[3], s.xmap.len() + pad[0] + pad[2]);
                    let (oy, ox) = if random {
                        // torchvision: i = randint(0, h - th + 1), then j likewise.
                        (rng.below(ph - size.0 + 1), rng.below(pw - size.1 + 1))
                    } else {
                        // torchvision's centre: int(round((h - th) / 2)), Python's round (halves to even).
                        let half = |d: usize| (d as f64 / 2.0).round_ties_even() as usize;
                        (half(ph - size.0), half(pw - size.1))
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

/// Refuses a sample index past the data set's `n` images.
pub fn check_indices(indices: &[usize], n: usize) -> Result<()> {
    match indices.iter().find(|&&i| i >= n) {
        Some(&bad) => Err(Error::invalid("index", format!("{bad} is out of range for {n} images"))),
        None => Ok(()),
    }
}

impl Pipeline {
    /// Sample `index`'s row and column maps at (seed, epoch): the CPU pass's own draws, from the
    /// same stream (entries >= 0 are source rows / columns, negative ones the fill). Only for
    /// pipelines with a `device_plan` (one map stage); empty maps otherwise.
    pub fn sample_maps(&self, seed: u64, epoch: u64, index: u64, ymap: &mut Vec<i32>, xmap: &mut Vec<i32>) {
        ymap.clear();
        xmap.clear();
        let [Stage::Maps { geos, in_hw }] = &self.stages[..] else {
            return;
        };
        let key = Key { seed, epoch, index };
        let mut s = Scratch::default();
        self.maps(geos, *in_hw, &mut key.rng(), key, &mut s);
        ymap.extend_from_slice(&s.ymap);
        xmap.extend_from_slice(&s.xmap);
    }
}

/// torchvision's RandomResizedCrop.get_params: (top, left, height, width) of the box in an h x w
/// image. Up to 10 draws of area and log-uniform aspect ratio; then the centred fallback.
pub(super) fn resized_crop_box(
    rng: &mut Rng,
    (h, w): (usize, usize),
    scale: (f64, f64),
    ratio: (f64, f64),
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range_f(scale.0, scale.1);
        let aspect = rng.range_f(log_ratio.0, log_ratio.1).exp();
        // Python's round(): halves go to even.
        let bw = (target * aspect).sqrt().round_ties_even();
        let bh = (target / aspect).sqrt().round_ties_even();
        if bw > 0.0 && bw <= w as f64 && bh > 0.0 && bh <= h as f64 {
            let (bh, bw) = (bh as usize, bw as usize);
            return (rng.below(h - bh + 1), rng.below(w - bw + 1), bh, bw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (bh, bw) = if in_ratio < ratio.0 {
        (((w as f64) / ratio.0).round_ties_even() as usize, w)
    } else if in_ratio > ratio.1 {
        (h, ((h as f64) * ratio.1).round_ties_even() as usize)
    } else {
        (h, w)
    };
    let (bh, bw) = (bh.clamp(1, h), bw.clamp(1, w));
    ((h - bh) / 2, (w - bw) / 2, bh, bw)
}

/// One axis of pad-then-crop: output coordinate j reads padded coordinate j + offset.
fn crop_map(
    map: &[i32],
    out: &mut Vec<i32>,
    pad_before: usize,
    offset: usize,
    size: usize,
    mode: PadMode,
    fill: usize,
) {
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
            // numpy "reflect": the edge pixel is not repeated; wider pads keep reflecting (period 2n - 2).
            PadMode::Reflect => {
                let period = 2 * (n - 1).max(1);
                let mut r = q.rem_euclid(period);
                if r >= n {
                    r = period - r;
                }
                map[r.clamp(0, n - 1) as usize]
            }
            // numpy "symmetric": the edge pixel is repeated (period 2n).
            PadMode::Symmetric => {
                let mut r = q.rem_euclid(2 * n);
                if r >= n {
                    r = 2 * n - 1 - r;
                }
                map[r as usize]
            }
        }
    }));
}
