//! The data loader: a sampler (permutation keyed by seed and epoch), the fused transform pass run
//! on a private rayon pool straight into the batch tensor's memory, and a background thread that
//! keeps `prefetch` batches ready in a bounded channel. Both survive `fork` (see `pool`): the pool is
//! rebuilt in the child, and an epoch begun in the parent restarts its producer there.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::host::{HostPool, Plain};
use crate::pool::{forked_since, Pool};
use crate::resident::Resident;
use crate::rng::Rng;
use crate::transforms::{check_indices, Element, Op, Pipeline};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    Float32,
    /// Raw augmented bytes, to be normalised on the device.
    Uint8,
}

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub prefetch: usize,
    pub kind: OutKind,
    pub device: Device,
    pub pin_memory: bool,
    /// Threads of the loader's own pool; None = one per core.
    pub num_threads: Option<usize>,
    /// Data-parallel shard: this process is `rank` of `world_size` (DistributedSampler's rules).
    pub rank: usize,
    pub world_size: usize,
    /// Pad shards to equal length (training: every rank runs the same number of steps). Without,
    /// shards differ by at most one sample and nothing repeats (evaluation).
    pub pad_shards: bool,
    /// Labels to emit instead of the data set's, one per sample (the data set's `target_transform`
    /// applied once): the images stay shared, only the labels differ.
    pub labels: Option<Arc<Vec<i64>>>,
    /// Batches in channels_last memory: shape (N, C, H, W) with strides (HWC, 1, WC, C), written
    /// so by the fused pass (no copy per step), as the trainer asks when its convolutions prefer it.
    pub channels_last: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 1,
            shuffle: false,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            kind: OutKind::Float32,
            device: Device::Cpu,
            pin_memory: false,
            num_threads: None,
            rank: 0,
            world_size: 1,
            pad_shards: true,
            labels: None,
            channels_last: false,
        }
    }
}

const MAX_THREADS: usize = 1024;

#[derive(Clone)]
pub struct Loader {
    dataset: Arc<Dataset>,
    pipeline: Arc<Pipeline>,
    opts: LoaderOptions,
    pool: Arc<Pool>,
    /// The memory batches are written into (see `host`).
    host: Arc<HostPool>,
    /// The data set on the output device, batches built there (`with_resident`).
    resident: Option<Arc<Resident>>,
}

pub type Batch = (Tensor, Tensor);

impl Loader {
    pub fn new(dataset: Arc<Dataset>, ops: Vec<Op>, opts: LoaderOptions) -> Result<Loader> {
        if opts.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        if opts.prefetch == 0 {
            return Err(Error::invalid("prefetch", "must be at least 1"));
        }
        if let Some(n) = opts.num_threads {
            // Each is an OS thread started now: a typo's 10**9 must not try to start them all.
            if n == 0 || n > MAX_THREADS {
                return Err(Error::invalid(
                    "num_threads",
                    format!("{n} is not in [1, {MAX_THREADS}]"),
                ));
            }
        }
        if opts.world_size == 0 || opts.rank >= opts.world_size {
            return Err(Error::invalid(
                "rank",
                format!("rank {} is not below world_size {}", opts.rank, opts.world_size),
            ));
        }
        if dataset.is_empty() {
            return Err(Error::invalid("dataset", "is empty"));
        }
        if let Some(l) = &opts.labels {
            if l.len() != dataset.len() {
                return Err(Error::invalid(
                    "labels",
                    format!("{} labels for {} images", l.len(), dataset.len()),
                ));
            }
        }
        let pipeline = Arc::new(Pipeline::new(ops, dataset.shape)?);
        let pool = Arc::new(Pool::new(opts.num_threads, "fastcifar-loader")?);
        // Enough blocks for the batches in flight (the channel's, the one being built, the one the
        // user holds, the one being freed); a user who keeps more batches gets fresh blocks.
        let host = Arc::new(HostPool::new(opts.prefetch + 3));
        Ok(Loader {
            dataset,
            pipeline,
            opts,
            pool,
            host,
            resident: None,
        })
    }

    /// The same loader with the data set resident on its output device: batches are built there
    /// from the same (seed, epoch, index) draws, and equal the fused pass's (see `resident`).
    pub fn with_resident(&self) -> Result<Loader> {
        let r = Resident::new(&self.dataset, self.labels(), &self.pipeline, self.opts.device)?;
        Ok(Loader {
            resident: Some(Arc::new(r)),
            ..self.clone()
        })
    }

    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// The labels this loader emits: the data set's, or the ones given in the options (its
    /// `target_transform` applied).
    pub fn labels(&self) -> &[i64] {
        self.opts.labels.as_deref().map_or(&self.dataset.labels[..], |l| &l[..])
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.opts
    }

    /// Samples this rank sees per epoch: DistributedSampler pads the data set by repeating its
    /// first indices up to a multiple of world_size (or drops the tail with drop_last).
    pub fn num_samples(&self) -> usize {
        let (n, w) = (self.dataset.len(), self.opts.world_size);
        if w > 1 && !self.opts.pad_shards {
            return n / w + usize::from(self.opts.rank < n % w);
        }
        if self.opts.drop_last && w > 1 {
            n / w
        } else {
            n.div_ceil(w)
        }
    }

    /// Batches per epoch, as `len(DataLoader)`.
    pub fn len(&self) -> usize {
        let (n, b) = (self.num_samples(), self.opts.batch_size);
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data set indices of one epoch, in order, for this rank.
    pub fn indices(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let mut order: Vec<usize> = if self.opts.shuffle {
            Rng::keyed(&[self.opts.seed, epoch, u64::MAX]).permutation(n)
        } else {
            (0..n).collect()
        };
        let (w, r) = (self.opts.world_size, self.opts.rank);
        if w > 1 && !self.opts.pad_shards {
            order = order.into_iter().skip(r).step_by(w).collect();
        } else if w > 1 {
            let per = self.num_samples();
            let total = per * w;
            if total > order.len() {
                // Pad by wrapping around, as DistributedSampler does.
                let extra: Vec<usize> = order.iter().cycle().take(total - order.len()).copied().collect();
                order.extend(extra);
            }
            order.truncate(total);
            order = order.into_iter().skip(r).step_by(w).collect();
        }
        order
    }

    /// Builds one batch synchronously on the loader's pool (or on the device, when resident).
    pub fn batch(&self, epoch: u64, indices: &[usize]) -> Result<Batch> {
        if let Some(r) = &self.resident {
            // Checked before the device sees them: a CUDA index out of range is a device-side assert.
            check_indices(indices, self.dataset.len())?;
            let (x, y) = r.batch(&self.pipeline, self.opts.seed, epoch, indices, self.opts.kind)?;
            return Ok((
                if self.opts.channels_last {
                    to_channels_last(&x)?
                } else {
                    x
                },
                y,
            ));
        }
        let [c, h, w] = self.pipeline.out_shape();
        let b = indices.len();
        let x = match self.opts.kind {
            OutKind::Float32 => self.fill::<f32>(Kind::Float, [b, c, h, w], epoch, indices)?,
            OutKind::Uint8 => self.fill::<u8>(Kind::Uint8, [b, c, h, w], epoch, indices)?,
        };
        let source = self.labels();
        let labels: Vec<i64> = indices.iter().map(|&i| source[i]).collect();
        let y = Tensor::from_slice(&labels);
        Ok(if self.opts.device.is_cuda() {
            let (x, y) = if self.opts.pin_memory {
                (x.pin_memory(self.opts.device), y.pin_memory(self.opts.device))
            } else {
                (x, y)
            };
            let nb = self.opts.pin_memory;
            (
                x.to_device_(self.opts.device, x.kind(), nb, false),
                y.to_device_(self.opts.device, Kind::Int64, nb, false),
            )
        } else if self.opts.pin_memory {
            // torch's DataLoader(pin_memory=True) on the CPU: page-locked CPU batches, ready for
            // `.to("cuda", non_blocking=True)`. The caller only asks where CUDA exists.
            (x.pin_memory(Device::Cuda(0)), y.pin_memory(Device::Cuda(0)))
        } else {
            (x, y)
        })
    }

    fn fill<T: Element + Plain>(&self, kind: Kind, shape: [usize; 4], epoch: u64, indices: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let mut buf = self.host.take(numel * size_of::<T>())?;
        let hwc = self.opts.channels_last;
        self.pool.install(|| {
            self.pipeline.apply_batch_in(
                &self.dataset,
                indices,
                self.opts.seed,
                epoch,
                hwc,
                buf.as_mut_slice::<T>(),
            )
        })??;
        if hwc {
            let [b, c, h, w] = shape;
            // (N, H, W, C) memory seen as (N, C, H, W): torch's channels_last strides.
            return Ok(buf.into_tensor(&[b, h, w, c], kind)?.f_permute([0, 3, 1, 2])?);
        }
        buf.into_tensor(&shape, kind)
    }

    /// This loader with batches in channels_last memory (or not); shares the data and the pools.
    pub fn with_channels_last(&self, on: bool) -> Loader {
        let mut l = self.clone();
        l.opts.channels_last = on;
        l
    }

    /// Iterates one epoch with a background producer thread.
    pub fn iter(&self, epoch: u64) -> BatchIter {
        self.iter_on(epoch, self.pool.clone())
    }

    /// The loader's own thread pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Like `iter`, with batches built on `pool` instead of the loader's own (the CPU trainer
    /// uses one thread, so that batch building does not fight libtorch's threads for the cores).
    pub fn iter_on(&self, epoch: u64, pool: Arc<Pool>) -> BatchIter {
        let order = self.indices(epoch);
        let (b, drop_last) = (self.opts.batch_size, self.opts.drop_last);
        let chunks: Vec<Vec<usize>> = order
            .chunks(b)
            .filter(|c| !drop_last || c.len() == b)
            .map(|c| c.to_vec())
            .collect();
        self.iter_batches(epoch, chunks, pool)
    }

    /// Iterates given batches of data set indices (a user's sampler or batch sampler), with the
    /// randomness of `epoch`.
    pub fn iter_batches(&self, epoch: u64, chunks: Vec<Vec<usize>>, pool: Arc<Pool>) -> BatchIter {
        let chunks = Arc::new(chunks);
        let worker = Loader { pool, ..self.clone() };
        let mut it = BatchIter {
            rx: None,
            handle: None,
            stop: Arc::new(AtomicBool::new(false)),
            remaining: chunks.len(),
            pid: 0,
            worker,
            epoch,
            chunks,
            timeout: None,
        };
        it.start();
        it
    }
}

/// `x` (N, C, H, W) in channels_last memory, as `x.contiguous(memory_format=torch.channels_last)`
/// (tch has no memory formats: a permuted contiguous copy has exactly those strides). A tensor
/// already so laid out is returned as it is.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    if x.dim() != 4 || is_channels_last(x) {
        return Ok(x.shallow_clone());
    }
    Ok(x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}

/// Whether `x` (N, C, H, W) has channels_last strides (HWC, 1, WC, C).
pub fn is_channels_last(x: &Tensor) -> bool {
    let (s, st) = (x.size(), x.stride());
    s.len() == 4 && st == [s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]]
}

pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// One epoch's batches. Dropping it mid-epoch stops and joins the producer thread.
pub struct BatchIter {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    remaining: usize,
    /// The process whose thread produces the batches; a forked child restarts the producer.
    pid: u32,
    worker: Loader,
    epoch: u64,
    chunks: Arc<Vec<Vec<usize>>>,
    /// torch's DataLoader `timeout`: waiting longer than this for a batch is an error.
    timeout: Option<std::time::Duration>,
}

impl BatchIter {
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    pub fn set_timeout(&mut self, timeout: Option<std::time::Duration>) {
        self.timeout = timeout;
    }

    /// Starts a producer for the batches not yet handed out (all of them, or after a fork the
    /// rest: each batch depends only on (seed, epoch, indices), so the child's are the parent's).
    fn start(&mut self) {
        let first = self.chunks.len() - self.remaining;
        // The channel allocates its capacity up front: never more slots than batches left.
        let (tx, rx) = sync_channel::<Result<Batch>>(self.worker.opts.prefetch.min(self.chunks.len() - first).max(1));
        self.stop = Arc::new(AtomicBool::new(false));
        let (flag, chunks, epoch) = (self.stop.clone(), self.chunks.clone(), self.epoch);
        let worker = self.worker.clone();
        // Kept here to report a thread that cannot start: the closure (and its sender) is gone then.
        let report = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("fastcifar-prefetch".into())
            .spawn(move || {
                for chunk in &chunks[first..] {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.batch(epoch, chunk)))
                        .unwrap_or_else(|p| {
                            Err(Error::invalid(
                                "loader",
                                format!("batch builder panicked: {}", panic_message(&p)),
                            ))
                        });
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            });
        let handle = match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                // The channel has room for one: the first `next` returns the error, then the end.
                let _ = report.send(Err(Error::invalid(
                    "loader",
                    format!("cannot start the prefetch thread: {e}"),
                )));
                None
            }
        };
        (self.rx, self.handle, self.pid) = (Some(rx), handle, std::process::id());
    }

    /// In a forked child the producer thread and its channel are the parent's: leave them alone.
    fn forget_parent_producer(&mut self) -> bool {
        if !forked_since(self.pid) {
            return false;
        }
        std::mem::forget(self.rx.take());
        std::mem::forget(self.handle.take());
        true
    }
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.rx.is_some() && self.forget_parent_producer() {
            self.start();
        }
        let rx = self.rx.as_ref()?;
        let r = match self.timeout {
            None => rx.recv().ok(),
            Some(t) => match rx.recv_timeout(t) {
                Ok(b) => Some(b),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Some(Err(Error::invalid(
                        "timeout",
                        format!("no batch within {} s (DataLoader timeout)", t.as_secs_f64()),
                    )))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        if r.is_some() {
            self.remaining = self.remaining.saturating_sub(1);
        }
        r
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        if self.forget_parent_producer() {
            return;
        }
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver makes a blocked `send` fail, so the producer exits promptly.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(n: usize) -> Arc<Dataset> {
        let images: Vec<u8> = (0..n * 3 * 8 * 8).map(|i| (i % 256) as u8).collect();
        Arc::new(
            Dataset::new(
                images,
                (0..n as i64).map(|i| i % 10).collect(),
                (0..10).map(|i| i.to_string()).collect(),
                [3, 8, 8],
            )
            .unwrap(),
        )
    }

    #[test]
    fn epoch_covers_everything_once_and_reshuffles() {
        let opts = LoaderOptions {
            batch_size: 7,
            shuffle: true,
            seed: 3,
            ..Default::default()
        };
        let l = Loader::new(ds(50), vec![Op::ToTensor], opts).unwrap();
        assert_eq!(l.len(), 8);
        let mut seen: Vec<usize> = l.indices(0);
        assert_ne!(seen, l.indices(1));
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        let batches: Vec<Batch> = l.iter(0).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 8);
        assert_eq!(batches[7].0.size(), vec![1, 3, 8, 8]);
        assert_eq!(batches[0].1.kind(), Kind::Int64);
    }

    #[test]
    fn shards_are_disjoint_and_cover() {
        for world in 1..=4 {
            let mut all = Vec::new();
            for rank in 0..world {
                let opts = LoaderOptions {
                    shuffle: true,
                    seed: 1,
                    rank,
                    world_size: world,
                    ..Default::default()
                };
                let l = Loader::new(ds(10), vec![], opts).unwrap();
                let idx = l.indices(5);
                assert_eq!(idx.len(), 10usize.div_ceil(world));
                all.extend(idx);
            }
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 10, "world {world}");
            // Unpadded (evaluation) shards: a partition, sizes within one of each other.
            let mut all = Vec::new();
            for rank in 0..world {
                let opts = LoaderOptions {
                    shuffle: true,
                    seed: 1,
                    rank,
                    world_size: world,
                    pad_shards: false,
                    ..Default::default()
                };
                let l = Loader::new(ds(10), vec![], opts).unwrap();
                let idx = l.indices(5);
                assert_eq!(idx.len(), l.num_samples());
                assert!(idx.len() == 10 / world || idx.len() == 10 / world + 1);
                all.extend(idx);
            }
            all.sort();
            assert_eq!(all, (0..10).collect::<Vec<_>>(), "world {world}");
        }
    }

    #[test]
    fn dropping_mid_epoch_stops_the_producer() {
        let opts = LoaderOptions {
            batch_size: 1,
            prefetch: 1,
            ..Default::default()
        };
        let l = Loader::new(ds(100), vec![], opts).unwrap();
        let mut it = l.iter(0);
        assert!(it.next().is_some());
        drop(it); // must not hang
        assert!(Loader::new(
            ds(1),
            vec![],
            LoaderOptions {
                batch_size: 0,
                ..Default::default()
            }
        )
        .is_err());
    }
}
