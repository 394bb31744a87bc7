//! Reusable host memory for the batches that the loader hands to Python.
//!
//! A fresh batch tensor per step is memory the allocator has just taken from the kernel (it gives
//! large freed blocks back), so every 4 KiB page of it faults and is zeroed on first write: about a
//! fifth of the loader's CPU time on CPU. A batch here is a tensor over a block of this pool, whose
//! storage gives the block back when torch frees it (after the last view, wherever that is), and
//! the next batch is written into memory that is already mapped. A block is never reused while
//! anything still holds it, so nothing a user keeps is ever overwritten. The storage stays
//! resizable, as torch's own: a resize moves the data into torch's memory and returns the block.
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use std::ffi::c_void;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Cache-line alignment: what torch's own CPU allocator gives, so vectorised kernels see the same.
const ALIGN: usize = 64;

struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a Block is plain owned memory; whoever holds it is its only user, and nothing writes
// through a shared reference to it (writes need `&mut HostBuf`).
unsafe impl Send for Block {}
// SAFETY: as above.
unsafe impl Sync for Block {}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `HostPool::take` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

pub struct HostPool {
    free: Mutex<Vec<Block>>,
    /// Blocks kept for reuse; more come back only when a user holds on to many batches.
    keep: usize,
}

impl HostPool {
    pub fn new(keep: usize) -> HostPool {
        HostPool {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A block of `bytes` bytes (zeroed the first time; later, the previous batch's contents).
    pub fn take(self: &Arc<Self>, bytes: usize) -> Result<HostBuf> {
        // try_lock, never lock: the returning side runs with the GIL held, and a lock held by a
        // thread that did not survive a fork stays locked in the child. Missing the pool once only
        // costs a fresh block.
        let reused = self.free.try_lock().ok().and_then(|mut free| {
            let i = free.iter().position(|b| b.layout.size() == bytes)?;
            Some(free.swap_remove(i))
        });
        let block = match reused {
            Some(b) => b,
            None => {
                let layout = Layout::from_size_align(bytes.max(1), ALIGN)
                    .map_err(|_| Error::invalid("batch", format!("{bytes} bytes is too large")))?;
                // SAFETY: the layout has a non-zero size.
                let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
                    .ok_or_else(|| Error::invalid("batch", format!("out of memory allocating {bytes} bytes")))?;
                Block { ptr, layout }
            }
        };
        Ok(HostBuf {
            block: Some(block),
            bytes,
            pool: self.clone(),
        })
    }

    /// Blocks waiting for reuse (for tests).
    pub fn idle(&self) -> usize {
        self.free.try_lock().map_or(0, |f| f.len())
    }

    fn give_back(&self, block: Block) {
        if let Ok(mut free) = self.free.try_lock() {
            if free.len() < self.keep {
                free.push(block);
            }
        }
    }
}

/// The element types a block may be viewed as.
///
/// # Safety
/// Every bit pattern of `size_of::<Self>()` bytes must be a valid `Self`.
pub unsafe trait Plain: Copy {}
// SAFETY: all bit patterns are valid u8 and f32 values.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}

/// One batch's memory; returns to its pool when dropped.
pub struct HostBuf {
    block: Option<Block>,
    bytes: usize,
    pool: Arc<HostPool>,
}

impl HostBuf {
    pub fn as_ptr(&self) -> *const u8 {
        self.block.as_ref().map_or(std::ptr::null(), |b| b.ptr.as_ptr())
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// The memory as `bytes / size_of::<T>()` elements of `T`.
    pub fn as_mut_slice<T: Plain>(&mut self) -> &mut [T] {
        let b = self.block.as_ref().expect("a HostBuf holds its block until dropped");
        debug_assert!(self.bytes.is_multiple_of(size_of::<T>()) && ALIGN.is_multiple_of(align_of::<T>()));
        // SAFETY: the block is ours alone, ALIGN-aligned, initialised (zeroed at allocation, then
        // only ever written with T values), and at least `bytes` long.
        unsafe { std::slice::from_raw_parts_mut(b.ptr.as_ptr() as *mut T, self.bytes / size_of::<T>()) }
    }
}

extern "C" {
    /// csrc/host_tensor.cpp: a new `at::Tensor*` over `data`, or null on failure. `ctx` is always
    /// taken: `release(ctx)` is called exactly once, when the storage lets go of the memory (or at
    /// once on failure).
    fn fastcifar_host_tensor(
        data: *mut c_void,
        nbytes: i64,
        sizes: *const i64,
        ndim: i64,
        dtype: i64,
        ctx: *mut c_void,
        release: extern "C" fn(*mut c_void),
    ) -> *mut c_void;
}

extern "C" fn release_block(ctx: *mut c_void) {
    // SAFETY: `ctx` is the Box leaked by `into_tensor`, and torch calls this exactly once.
    drop(unsafe { Box::from_raw(ctx as *mut HostBuf) });
}

impl HostBuf {
    /// A contiguous CPU tensor of `shape` over this memory (`kind`: Float or Uint8, matching what
    /// was written); the memory returns to the pool when torch frees the storage.
    pub fn into_tensor(self, shape: &[usize], kind: Kind) -> Result<Tensor> {
        let (dtype, size) = match kind {
            Kind::Float => (0, 4),
            Kind::Uint8 => (1, 1),
            k => return Err(Error::invalid("batch", format!("no host batches of {k:?}"))),
        };
        let sizes: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let numel: usize = shape.iter().product();
        if numel * size > self.bytes {
            return Err(Error::invalid(
                "batch",
                format!("{numel} elements do not fit {} bytes", self.bytes),
            ));
        }
        let (data, nbytes) = (self.as_ptr() as *mut c_void, self.bytes as i64);
        let ctx = Box::into_raw(Box::new(self)) as *mut c_void;
        // SAFETY: `data` is `nbytes` bytes owned by `ctx`, which the storage keeps until it calls
        // `release_block`; `sizes` outlives the call.
        let t = unsafe {
            fastcifar_host_tensor(
                data,
                nbytes,
                sizes.as_ptr(),
                sizes.len() as i64,
                dtype,
                ctx,
                release_block,
            )
        };
        if t.is_null() {
            return Err(Error::invalid(
                "batch",
                "libtorch could not make a tensor over the batch memory",
            ));
        }
        // SAFETY: a fresh `at::Tensor*` from `new`, which tch's Tensor owns and deletes.
        Ok(unsafe { Tensor::from_ptr(t.cast()) })
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            self.pool.give_back(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_back_and_are_reused_only_after_release() {
        let pool = Arc::new(HostPool::new(2));
        let mut a = pool.take(4096).unwrap();
        a.as_mut_slice::<f32>().fill(1.5);
        let pa = a.as_ptr();
        let b = pool.take(4096).unwrap();
        assert_ne!(b.as_ptr(), pa, "a held block is never handed out twice");
        drop(a);
        assert_eq!(pool.idle(), 1);
        let mut c = pool.take(4096).unwrap();
        assert_eq!(c.as_ptr(), pa, "a released block is reused");
        assert!(c.as_mut_slice::<f32>().iter().all(|&v| v == 1.5));
        // Another size never gets this block; the pool keeps at most `keep`.
        let d = pool.take(100).unwrap();
        assert_eq!(d.len_bytes(), 100);
        let e = pool.take(4096).unwrap();
        drop((b, c, d, e));
        assert_eq!(pool.idle(), 2);
    }

    #[test]
    fn a_tensor_returns_its_block_when_torch_frees_the_storage() {
        let pool = Arc::new(HostPool::new(4));
        let mut buf = pool.take(6 * 4).unwrap();
        buf.as_mut_slice::<f32>().copy_from_slice(&[1., 2., 3., 4., 5., 6.]);
        let t = buf.into_tensor(&[2, 3], Kind::Float).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(),
            [1., 2., 3., 4., 5., 6.]
        );
        let view = t.narrow(0, 1, 1);
        drop(t);
        assert_eq!(pool.idle(), 0, "a view still holds the storage");
        assert_eq!(Vec::<f32>::try_from(view.flatten(0, -1)).unwrap(), [4., 5., 6.]);
        drop(view);
        assert_eq!(pool.idle(), 1);
        // Growing the tensor moves its data into torch's memory and gives the block back.
        let mut t = pool.take(6 * 4).unwrap().into_tensor(&[2, 3], Kind::Float).unwrap();
        assert_eq!(pool.idle(), 0);
        let _ = t.f_resize_([4, 3]).unwrap();
        assert_eq!(pool.idle(), 1);
        assert!(
            pool.take(4).unwrap().into_tensor(&[2], Kind::Float).is_err(),
            "8 bytes do not fit in 4"
        );
    }
}
