//! A data set resident on a device: its uint8 images and the loader's labels are copied there once,
//! and each batch is built there. The host draws every sample's geometry exactly as the fused CPU
//! pass does (`Pipeline::sample_maps`, keyed by (seed, epoch, index)) and sends only those row and
//! column maps (a few hundred bytes per image); the device gathers the rows, then the columns,
//! puts the fill where a map says so, and turns bytes into floats through the fused pass's own
//! per-channel tables (torchvision's float32 results). So the batches are the CPU pass's, value
//! for value. Written over tensor ops only, so it runs (and is tested) on the CPU device too.
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::loader::{Batch, OutKind};
use crate::transforms::Pipeline;

/// The device's tensors. Behind a mutex because a tensor is Send but not Sync; batches are built
/// one at a time (on the loader's prefetch thread), so it is never contended.
struct Tensors {
    /// (N, C, H, W) uint8.
    images: Tensor,
    /// (N,) int64.
    labels: Tensor,
    /// (1, C, 1, 1) uint8: the fill value.
    fill: Tensor,
    /// (C * 256,) float32: channel c's output for byte v at c * 256 + v.
    table: Tensor,
    /// (1, C, 1, 1) int64: c * 256, the offset of channel c's table.
    offsets: Tensor,
}

pub struct Resident {
    tensors: Mutex<Tensors>,
    device: Device,
}

/// Host to device for the per-batch index tensors. On CUDA through pinned memory and without
/// blocking: a copy from pageable memory would wait for the stream to drain, and so stall the
/// device between steps.
fn upload(t: Tensor, dev: Device) -> Result<Tensor> {
    if !dev.is_cuda() {
        return Ok(t);
    }
    let kind = t.kind();
    Ok(t.f_pin_memory(dev)?.f_to_device_(dev, kind, true, false)?)
}

impl Resident {
    /// Copies `ds` and `labels` (the loader's, one per image) to `device`; an error says why
    /// `pipeline` cannot run there.
    pub fn new(ds: &Dataset, labels: &[i64], pipeline: &Pipeline, device: Device) -> Result<Resident> {
        let plan = pipeline.device_plan().ok_or_else(|| {
            Error::invalid(
                "resident",
                "the transform has steps a device cannot apply here (Resize, RandomResizedCrop, RandomErasing, \
                 Cutout, or several fill values); only crops, pads and flips, then ToTensor / Normalize",
            )
        })?;
        let [c, h, w] = ds.shape;
        let dims = [ds.len() as i64, c as i64, h as i64, w as i64];
        let chan = |t: Tensor| -> Result<Tensor> { Ok(t.f_view([1, c as i64, 1, 1])?.f_to_device(device)?) };
        let table: Vec<f32> = plan.tables.iter().flatten().copied().collect();
        let offsets: Vec<i64> = (0..c as i64).map(|ch| ch * 256).collect();
        let tensors = Tensors {
            images: Tensor::f_from_slice(&ds.images[..])?
                .f_view(dims)?
                .f_to_device(device)?,
            labels: Tensor::f_from_slice(labels)?.f_to_device(device)?,
            fill: chan(Tensor::f_from_slice(&plan.fill)?)?,
            table: Tensor::f_from_slice(&table)?.f_to_device(device)?,
            offsets: chan(Tensor::f_from_slice(&offsets)?)?,
        };
        Ok(Resident {
            tensors: Mutex::new(tensors),
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The batch of data set `indices` at `epoch`, built on the device.
    pub fn batch(&self, pipeline: &Pipeline, seed: u64, epoch: u64, indices: &[usize], kind: OutKind) -> Result<Batch> {
        let [_, oh, ow] = pipeline.out_shape();
        let (mut ys, mut xs) = (
            Vec::with_capacity(indices.len() * oh),
            Vec::with_capacity(indices.len() * ow),
        );
        let (mut ym, mut xm) = (Vec::new(), Vec::new());
        for &i in indices {
            pipeline.sample_maps(seed, epoch, i as u64, &mut ym, &mut xm);
            ys.extend_from_slice(&ym);
            xs.extend_from_slice(&xm);
        }
        let (b, oh, ow) = (indices.len() as i64, oh as i64, ow as i64);
        let dev = self.device;
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = upload(Tensor::f_from_slice(&idx)?, dev)?;
        let ym = upload(Tensor::f_from_slice(&ys)?.f_view([b, oh])?, dev)?.f_to_kind(Kind::Int64)?;
        let xm = upload(Tensor::f_from_slice(&xs)?.f_view([b, ow])?, dev)?.f_to_kind(Kind::Int64)?;
        let t = self
            .tensors
            .lock()
            .map_err(|_| Error::invalid("resident", "a batch builder panicked earlier"))?;
        let src = t.images.f_index_select(0, &idx)?;
        let (c, w) = (src.size()[1], src.size()[3]);
        let rows = src.f_gather(
            2,
            &ym.f_clamp_min(0)?
                .f_view([b, 1, oh, 1])?
                .f_expand([b, c, oh, w], false)?,
            false,
        )?;
        let cols = xm
            .f_clamp_min(0)?
            .f_view([b, 1, 1, ow])?
            .f_expand([b, c, oh, ow], false)?;
        let px = rows.f_gather(3, &cols, false)?;
        // A negative map entry is the fill: a whole row where the row map says so, else a column.
        let keep = ym
            .f_ge(0)?
            .f_view([b, 1, oh, 1])?
            .f_logical_and(&xm.f_ge(0)?.f_view([b, 1, 1, ow])?)?;
        let px = px.f_where_self(&keep, &t.fill)?;
        let x = match kind {
            OutKind::Float32 => t.table.f_take(&(px.f_to_kind(Kind::Int64)? + &t.offsets))?,
            OutKind::Uint8 => px,
        };
        Ok((x, t.labels.f_index_select(0, &idx)?))
    }
}
