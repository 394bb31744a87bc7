//! Taking a model's or trainer's lock from Python without a deadlock or a hang. `fit` holds both
//! for a whole epoch and takes the GIL for each progress callback, so:
//! - nobody waits for those locks while holding the GIL (`hold`: the wait happens with it released);
//! - a callback that reaches the model or trainer its own fit holds gets a "busy" error, not a
//!   wait on its own thread;
//! - in a forked child, a lock that a fit or evaluate of the parent held at the fork stays locked
//!   for ever (that thread is not in the child): using it is a clear error, not a hang.
use std::sync::{Mutex, MutexGuard, TryLockError};

use pyo3::prelude::*;

use super::{to_py, R};
use crate::error::Error;

thread_local! {
    /// The locks this thread holds while a core call runs Python callbacks (fit, evaluate).
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The same long holds, with the process that took them, visible from every thread.
static LONG_HOLDS: Mutex<Vec<(usize, u32)>> = Mutex::new(Vec::new());

fn key<T>(m: &Mutex<T>) -> usize {
    m as *const Mutex<T> as usize
}

/// Marks `m` as held by this thread for as long as the value lives (taken after the lock).
pub(crate) struct Held(usize);

impl Held {
    pub(crate) fn mark<T>(m: &Mutex<T>) -> Held {
        let k = key(m);
        HELD.with(|h| h.borrow_mut().push(k));
        LONG_HOLDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((k, std::process::id()));
        Held(k)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&k| k == self.0) {
                h.remove(i);
            }
        });
        let mut holds = LONG_HOLDS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if let Some(i) = holds.iter().rposition(|&(k, p)| k == self.0 && p == pid) {
            holds.remove(i);
        }
    }
}

fn check_usable<T>(m: &Mutex<T>) -> R<()> {
    let k = key(m);
    if HELD.with(|h| h.borrow().contains(&k)) {
        return Err(Error::Busy(
            "busy: this model or trainer is in use by the fit or evaluate that runs this callback; \
             use it after that call returns (or from an epoch-end callback)"
                .into(),
        ));
    }
    Ok(())
}

/// Called when the lock is taken: a hold of the parent process (a forked child) never ends.
fn check_not_held_across_fork<T>(m: &Mutex<T>) -> R<()> {
    let (k, pid) = (key(m), std::process::id());
    if LONG_HOLDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|&(hk, p)| hk == k && p != pid)
    {
        return Err(Error::Busy(
            "busy: this model or trainer was in use by a fit or evaluate in another thread of the parent \
             process when this process was forked, and stays locked here; fork before training, or use \
             the spawn or forkserver start method"
                .into(),
        ));
    }
    Ok(())
}

/// Takes a model's or trainer's lock inside a core call (the GIL already released).
pub(crate) fn lock<T>(m: &Mutex<T>) -> R<MutexGuard<'_, T>> {
    check_usable(m)?;
    match m.try_lock() {
        Ok(g) => Ok(g),
        // A panic caught at the boundary must not make the model unusable afterwards.
        Err(TryLockError::Poisoned(e)) => Ok(e.into_inner()),
        Err(TryLockError::WouldBlock) => {
            check_not_held_across_fork(m)?;
            Ok(m.lock().unwrap_or_else(|e| e.into_inner()))
        }
    }
}

/// Takes a lock while holding the GIL, without ever waiting for it with the GIL held: the holder
/// (fit's thread) may need the GIL for its callback before it lets go. The wait happens with the
/// GIL released; the lock is then taken with `try_lock`, and the wait repeats if someone got there
/// first.
pub(crate) fn hold<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> PyResult<MutexGuard<'a, T>> {
    check_usable(m).map_err(to_py)?;
    loop {
        match m.try_lock() {
            Ok(g) => return Ok(g),
            Err(TryLockError::Poisoned(e)) => return Ok(e.into_inner()),
            Err(TryLockError::WouldBlock) => {
                check_not_held_across_fork(m).map_err(to_py)?;
                py.allow_threads(|| drop(m.lock()));
            }
        }
    }
}
