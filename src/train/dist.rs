//! Data-parallel training: gradients averaged across processes in buckets, one collective per
//! bucket. The core does not talk to other processes itself; a `Collective` does (the Python
//! bindings implement it on torch.distributed's process group, so gloo and NCCL both work and
//! fastcifar has no communication layer of its own).
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The collectives data-parallel training needs from a process group.
pub trait Collective: Send {
    fn world_size(&self) -> usize;
    /// Sums every tensor in place across ranks. All of them may be in flight at once.
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()>;
    /// Element-wise OR of `flags` across ranks, so that every rank takes the same branch.
    fn any(&mut self, flags: &[bool]) -> Result<Vec<bool>>;
}

struct Bucket {
    flat: Tensor,
    /// (index into the gradient list, offset, numel, shape) of each member.
    members: Vec<(usize, i64, i64, Vec<i64>)>,
}

/// Flat buffers that gradients are copied into, so that a step needs one all-reduce per bucket
/// (about `cap_bytes` each, as DDP's bucket_cap_mb) rather than one per tensor.
pub struct GradBuckets {
    buckets: Vec<Bucket>,
    /// Shapes, dtypes and devices the buckets were laid out for.
    layout: Vec<(Vec<i64>, Kind, Device)>,
}

impl GradBuckets {
    pub fn new(params: &[Tensor], cap_bytes: usize) -> Result<GradBuckets> {
        let layout: Vec<(Vec<i64>, Kind, Device)> = params.iter().map(|p| (p.size(), p.kind(), p.device())).collect();
        let mut groups: Vec<(Kind, Device, Vec<usize>, usize)> = Vec::new();
        for (i, (shape, kind, dev)) in layout.iter().enumerate() {
            let bytes = shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes();
            match groups.last_mut() {
                Some((k, d, members, size)) if k == kind && d == dev && *size < cap_bytes => {
                    members.push(i);
                    *size += bytes;
                }
                _ => groups.push((*kind, *dev, vec![i], bytes)),
            }
        }
        let mut buckets = Vec::with_capacity(groups.len());
        for (kind, dev, idx, _) in groups {
            let mut members = Vec::with_capacity(idx.len());
            let mut off = 0i64;
            for i in idx {
                let n: i64 = layout[i].0.iter().product();
                members.push((i, off, n, layout[i].0.clone()));
                off += n;
            }
            buckets.push(Bucket {
                flat: Tensor::f_zeros([off], (kind, dev))?,
                members,
            });
        }
        Ok(GradBuckets { buckets, layout })
    }

    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Whether these buckets fit `params` (same shapes, dtypes and devices, in order).
    pub fn fits(&self, params: &[Tensor]) -> bool {
        self.layout.len() == params.len()
            && self
                .layout
                .iter()
                .zip(params)
                .all(|((s, k, d), p)| *s == p.size() && *k == p.kind() && *d == p.device())
    }

    /// The mean of `grads` over all ranks. The results are views into the buckets, valid until
    /// the next call.
    pub fn mean(&self, grads: &[Tensor], comm: &mut dyn Collective) -> Result<Vec<Tensor>> {
        if grads.len() != self.layout.len() {
            return Err(Error::invalid(
                "grads",
                format!(
                    "{} gradients for {} bucketed parameters",
                    grads.len(),
                    self.layout.len()
                ),
            ));
        }
        crate::torch_state::no_grad(|| -> Result<Vec<Tensor>> {
            for b in &self.buckets {
                for (i, off, n, _) in &b.members {
                    b.flat.narrow(0, *off, *n).f_copy_(&grads[*i].reshape([-1]))?;
                }
            }
            let flats: Vec<Tensor> = self.buckets.iter().map(|b| b.flat.shallow_clone()).collect();
            comm.all_reduce_sum(&flats)?;
            let ws = comm.world_size() as f64;
            let mut out: Vec<Option<Tensor>> = (0..grads.len()).map(|_| None).collect();
            for b in &self.buckets {
                if ws != 1.0 {
                    let _ = b.flat.shallow_clone().f_div_scalar_(ws)?;
                }
                for (i, off, n, shape) in &b.members {
                    out[*i] = Some(b.flat.narrow(0, *off, *n).view(shape.as_slice()));
                }
            }
            Ok(out
                .into_iter()
                .map(|t| t.expect("every gradient has a bucket slot"))
                .collect())
        })
    }
}

/// A process group, its gradient buckets, and the bucket size.
pub struct DistState {
    pub comm: Box<dyn Collective>,
    pub cap_bytes: usize,
    buckets: Option<GradBuckets>,
}

impl DistState {
    /// Gradients are all-reduced in buckets of about `bucket_cap_mb` megabytes (MiB, as torch's DDP).
    pub fn new(comm: Box<dyn Collective>, bucket_cap_mb: f64) -> Result<DistState> {
        let cap_bytes = (bucket_cap_mb * 1024.0 * 1024.0) as usize;
        if !(bucket_cap_mb.is_finite() && cap_bytes > 0) {
            return Err(Error::invalid(
                "bucket_cap_mb",
                format!("{bucket_cap_mb} must be a positive number"),
            ));
        }
        Ok(DistState {
            comm,
            cap_bytes,
            buckets: None,
        })
    }

    /// Averages gradients across ranks; the buckets are (re)laid out when the trainable set changes.
    pub fn average(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<Vec<Tensor>> {
        if !self.buckets.as_ref().is_some_and(|b| b.fits(params)) {
            self.buckets = Some(GradBuckets::new(params, self.cap_bytes)?);
        }
        let b = self.buckets.as_ref().expect("just laid out");
        b.mean(grads, self.comm.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    /// Ranks as threads of one process: a shared sum with a barrier on each side.
    struct ThreadGroup {
        rank: usize,
        world: usize,
        barrier: Arc<Barrier>,
        sum: Arc<Mutex<Vec<Vec<f64>>>>,
    }

    impl Collective for ThreadGroup {
        fn world_size(&self) -> usize {
            self.world
        }
        fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
            {
                let mut s = self.sum.lock().unwrap();
                if s.len() != tensors.len() {
                    *s = tensors.iter().map(|t| vec![0.0; t.numel()]).collect();
                }
                for (acc, t) in s.iter_mut().zip(tensors) {
                    let v: Vec<f64> = Vec::try_from(t.to_kind(Kind::Double)).unwrap();
                    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                }
            }
            self.barrier.wait();
            {
                let s = self.sum.lock().unwrap();
                for (acc, t) in s.iter().zip(tensors) {
                    t.shallow_clone().copy_(&Tensor::from_slice(acc).to_kind(t.kind()));
                }
            }
            self.barrier.wait();
            if self.rank == 0 {
                self.sum.lock().unwrap().clear();
            }
            self.barrier.wait();
            Ok(())
        }
        fn any(&mut self, flags: &[bool]) -> Result<Vec<bool>> {
            let t = Tensor::from_slice(&flags.iter().map(|&f| f as i64 as f64).collect::<Vec<_>>());
            self.all_reduce_sum(std::slice::from_ref(&t))?;
            Ok(Vec::<f64>::try_from(t)?.into_iter().map(|v| v > 0.0).collect())
        }
    }

    #[test]
    fn buckets_respect_the_cap_and_average_across_ranks() {
        let shapes: Vec<Vec<i64>> = vec![vec![4, 3], vec![4], vec![100], vec![2, 2, 2]];
        let params: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu)))
            .collect();
        // 48 bytes close the first bucket at once; 16 + 400 bytes the second; the last gets its own.
        let b = GradBuckets::new(&params, 40).unwrap();
        assert_eq!(b.num_buckets(), 3);
        assert!(b.fits(&params) && !b.fits(&params[..3]));
        let world = 3;
        let barrier = Arc::new(Barrier::new(world));
        let sum = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (barrier, sum, shapes) = (barrier.clone(), sum.clone(), shapes.clone());
                std::thread::spawn(move || {
                    let params: Vec<Tensor> = shapes
                        .iter()
                        .map(|s| Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu)))
                        .collect();
                    let grads: Vec<Tensor> = shapes
                        .iter()
                        .map(|s| Tensor::full(s.as_slice(), rank as f64 + 1.0, (Kind::Float, Device::Cpu)))
                        .collect();
                    let mut d = DistState::new(
                        Box::new(ThreadGroup {
                            rank,
                            world,
                            barrier,
                            sum,
                        }),
                        40.0 / (1024.0 * 1024.0),
                    )
                    .unwrap();
                    let avg = d.average(&params, &grads).unwrap();
                    assert_eq!(d.comm.any(&[rank == 1, false]).unwrap(), vec![true, false]);
                    avg.iter()
                        .map(|t| (t.size(), Vec::<f32>::try_from(t.reshape([-1])).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for ((shape, v), s) in h.join().unwrap().into_iter().zip(&shapes) {
                assert_eq!(&shape, s);
                assert!(v.iter().all(|&x| x == 2.0), "mean of 1, 2, 3 is 2: {v:?}");
            }
        }
    }
}
