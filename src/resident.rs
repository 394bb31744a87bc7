//! A data set resident on a device: its uint8 images and labels are copied there once, and each
//! batch is built there. The host draws each sample's geometry exactly as the CPU pass does
//! (`Pipeline::sample_maps`, keyed by (seed, epoch, index)), so the batches are the CPU pass's;
//! only those row and column maps (a few hundred bytes per image) cross to the device per batch.
//! The device gathers the rows, then the columns, puts the fill where a map says so, and applies
//! ToTensor / Normalize as one multiply and one add per value, rounded as the CPU pass rounds.
//! Written over tensor ops only, so it runs (and is tested) on the CPU device too.
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::loader::{Batch, OutKind};
use crate::transforms::Pipeline;

pub struct Resident {
    /// (N, C, H, W) uint8 on the device.
    images: Tensor,
    /// (N,) int64 on the device.
    labels: Tensor,
    /// (1, C, 1, 1) on the device: the fill value (uint8), the affine's scale and bias (float).
    fill: Tensor,
    scale: Tensor,
    bias: Tensor,
}

/// Host -> device for the per-batch index tensors. On CUDA through pinned memory and without
/// blocking: a copy from pageable memory would wait for the stream to drain, and so stall the
/// device between steps.
fn upload(t: Tensor, dev: Device) -> Result<Tensor> {
    if !dev.is_cuda() {
        return Ok(t);
    }
    let kind = t.kind();
    Ok(t.f_pin_memory(dev)?.f_to_device_(dev, kind, true, false)?)
}

// SAFETY: tch::Tensor is Send but not Sync because a shared tensor could be mutated from two
// threads. A Resident's tensors are written once, in `new`, and afterwards only read by ops that
// make new tensors (index_select, gather, where, mul, add), which libtorch allows concurrently.
unsafe impl Sync for Resident {}

impl Resident {
    /// Copies `ds` to `device`; an error names why `pipeline` cannot run there.
    pub fn new(ds: &Dataset, pipeline: &Pipeline, device: Device) -> Result<Resident> {
        let plan = pipeline.device_plan().ok_or_else(|| {
            Error::invalid(
                "resident",
                "the transform has steps a device cannot apply here (Resize, RandomErasing, Cutout, or several fill values); \
                 only crops, pads and flips, then ToTensor / Normalize",
            )
        })?;
        let [c, h, w] = ds.shape;
        let n = ds.labels.len();
        let dims = [n as i64, c as i64, h as i64, w as i64];
        let images = Tensor::f_from_slice(&ds.images[..])?.f_view(dims)?.f_to_device(device)?;
        let labels = Tensor::f_from_slice(&ds.labels)?.f_to_device(device)?;
        let chan = |t: Tensor| -> Result<Tensor> { Ok(t.f_view([1, c as i64, 1, 1])?.f_to_device(device)?) };
        Ok(Resident {
            images,
            labels,
            fill: chan(Tensor::f_from_slice(&plan.fill)?)?,
            scale: chan(Tensor::f_from_slice(&plan.scale)?)?,
            bias: chan(Tensor::f_from_slice(&plan.bias)?)?,
        })
    }

    pub fn device(&self) -> Device {
        self.images.device()
    }

    /// The batch of data set `indices` at `epoch`, built on the device.
    pub fn batch(&self, pipeline: &Pipeline, seed: u64, epoch: u64, indices: &[usize], kind: OutKind) -> Result<Batch> {
        let [c, oh, ow] = pipeline.out_shape();
        let (b, c, oh, ow) = (indices.len() as i64, c as i64, oh as i64, ow as i64);
        let (mut ys, mut xs) = (Vec::with_capacity(indices.len() * oh as usize), Vec::with_capacity(indices.len() * ow as usize));
        let (mut ym, mut xm) = (Vec::new(), Vec::new());
        for &i in indices {
            pipeline.sample_maps(seed, epoch, i as u64, &mut ym, &mut xm);
            ys.extend_from_slice(&ym);
            xs.extend_from_slice(&xm);
        }
        let dev = self.device();
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = upload(Tensor::f_from_slice(&idx)?, dev)?;
        let ym = upload(Tensor::f_from_slice(&ys)?.f_view([b, oh])?, dev)?.f_to_kind(Kind::Int64)?;
        let xm = upload(Tensor::f_from_slice(&xs)?.f_view([b, ow])?, dev)?.f_to_kind(Kind::Int64)?;
        let src = self.images.f_index_select(0, &idx)?;
        let w = src.size()[3];
        let rows = src.f_gather(2, &ym.f_clamp_min(0)?.f_view([b, 1, oh, 1])?.f_expand([b, c, oh, w], false)?, false)?;
        let px = rows.f_gather(3, &xm.f_clamp_min(0)?.f_view([b, 1, 1, ow])?.f_expand([b, c, oh, ow], false)?, false)?;
        // A negative map entry is the fill: a whole row when the row map says so, else a column.
        let keep = ym.f_ge(0)?.f_view([b, 1, oh, 1])?.f_logical_and(&xm.f_ge(0)?.f_view([b, 1, 1, ow])?)?;
        let px = px.f_where_self(&keep, &self.fill)?;
        let x = match kind {
            // The CPU pass computes `v as f32 * scale + bias`: the same two roundings.
            OutKind::Float32 => px.f_to_kind(Kind::Float)?.f_mul(&self.scale)?.f_add(&self.bias)?,
            OutKind::Uint8 => px,
        };
        Ok((x, self.labels.f_index_select(0, &idx)?))
    }
}
