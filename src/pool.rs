//! rayon pools that survive `fork`. A pool's threads exist only in the process that started them:
//! a forked child (a `torch.utils.data.DataLoader` worker, `multiprocessing` with fork) that hands
//! work to its parent's pool waits forever for threads that are not there. Each pool here remembers
//! the process that built it and is rebuilt on its first use in another one; the parent's copy is
//! leaked in the child, never dropped or joined (its threads, locks and queues are not ours there).
//! rayon's global pool cannot be rebuilt, so the core never uses it: parallel work runs inside
//! `shared().install(...)`.
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::Arc;

use rayon::ThreadPool;

use crate::error::{Error, Result};

struct Built {
    pid: u32,
    pool: Arc<ThreadPool>,
}

pub struct Pool {
    threads: Option<usize>,
    name: &'static str,
    // Lock-free on purpose: a mutex held by some thread at the moment of fork stays locked forever
    // in the child. Each `Built` lives until the pool is dropped in the process that built it.
    current: AtomicPtr<Built>,
}

impl Pool {
    /// A pool of `threads` threads (None: one per core) named `name-i`, started now so that a
    /// failure to start threads is reported at construction.
    pub fn new(threads: Option<usize>, name: &'static str) -> Result<Pool> {
        let p = Pool {
            threads,
            name,
            current: AtomicPtr::new(std::ptr::null_mut()),
        };
        p.get()?;
        Ok(p)
    }

    /// A pool that is started on first use (for statics).
    pub const fn lazy(threads: Option<usize>, name: &'static str) -> Pool {
        Pool {
            threads,
            name,
            current: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// This process's pool, rebuilt first if it was built before a fork.
    pub fn get(&self) -> Result<Arc<ThreadPool>> {
        let pid = std::process::id();
        let cur = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer is a leaked Box that is only freed by `drop(&mut self)`.
        if let Some(b) = unsafe { cur.as_ref() } {
            if b.pid == pid {
                return Ok(b.pool.clone());
            }
        }
        let name = self.name;
        let mut builder = rayon::ThreadPoolBuilder::new().thread_name(move |i| format!("{name}-{i}"));
        if let Some(n) = self.threads {
            builder = builder.num_threads(n);
        }
        let pool = Arc::new(
            builder
                .build()
                .map_err(|e| Error::invalid("num_threads", format!("cannot start threads: {e}")))?,
        );
        let fresh = Box::into_raw(Box::new(Built {
            pid,
            pool: pool.clone(),
        }));
        match self
            .current
            .compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // The replaced `Built` (if any) belongs to the parent process: leaked, see the module doc.
            Ok(_) => Ok(pool),
            Err(other) => {
                // Another thread of this process built one first: use that, drop ours.
                // SAFETY: `fresh` was never published.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: as above; `other` was published by a thread of this process.
                Ok(unsafe { &*other }.pool.clone())
            }
        }
    }

    /// Runs `f` on this process's pool.
    pub fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        Ok(self.get()?.install(f))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let cur = *self.current.get_mut();
        // SAFETY: see `get`; after this nothing reads `current`.
        if let Some(b) = unsafe { cur.as_ref() } {
            if b.pid == std::process::id() {
                // SAFETY: `cur` came from `Box::into_raw` in `get` and is freed only here, once.
                drop(unsafe { Box::from_raw(cur) });
            }
        }
    }
}

/// The pool for parallel decoding and copying (rayon's global pool is never used; module doc).
pub fn shared() -> &'static Pool {
    static SHARED: Pool = Pool::lazy(None, "fastcifar");
    &SHARED
}

/// libtorch's OpenMP runtime (libgomp) cannot start threads in a forked child once the parent has
/// used them: the child's next parallel region waits forever for the parent's threads (plain
/// PyTorch too, which is why torch's DataLoader workers run with one thread). Called on entry to
/// every long call: the first one in a forked child sets libtorch to one thread there.
pub fn torch_after_fork() {
    static PID: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let prev = PID.swap(pid, Ordering::Relaxed);
    if prev != 0 && prev != pid {
        tch::set_num_threads(1);
    }
}

/// Whether this process is not the one that created `pid`'s objects (a forked child).
pub fn forked_since(pid: u32) -> bool {
    pid != std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_reused_within_a_process_and_runs_work() {
        let p = Pool::new(Some(2), "test").unwrap();
        assert!(Arc::ptr_eq(&p.get().unwrap(), &p.get().unwrap()));
        assert_eq!(p.install(rayon::current_num_threads).unwrap(), 2);
        assert!(!forked_since(std::process::id()));
    }
}
