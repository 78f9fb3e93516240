//! Whether a twin's worker has finished, for [`super::Node`]'s `stop` to
//! wait on from a blocking thread. (A channel that carries this one signal
//! costs every twin half a KiB: std's and tokio's pad their ends to cache
//! lines.)

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Set when the [`Finishing`] the worker's task holds is dropped: when the
/// task ends, however it ends (returned, panicked or cancelled).
#[derive(Default)]
pub struct Finished(Arc<(Mutex<bool>, Condvar)>);

/// Held by a worker's task; sets its [`Finished`] when dropped.
pub struct Finishing(Arc<(Mutex<bool>, Condvar)>);

impl Finished {
    /// What the worker's task holds.
    pub fn finishing(&self) -> Finishing {
        Finishing(self.0.clone())
    }

    /// Waits until the worker has finished, at most `timeout`; whether it
    /// has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (done, changed) = &*self.0;
        let done = done.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, _) = changed
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
        *done
    }

    /// Waits until the worker has finished.
    pub fn wait_forever(&self) {
        let (done, changed) = &*self.0;
        let done = done.lock().unwrap_or_else(PoisonError::into_inner);
        let _done = changed
            .wait_while(done, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        let (done, changed) = &*self.0;
        *done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_finished_once_what_the_task_held_is_dropped() {
        let finished = Finished::default();
        let finishing = finished.finishing();
        assert!(!finished.wait(Duration::from_millis(20)));
        let ended = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(finishing);
        });
        assert!(finished.wait(Duration::from_secs(10)));
        ended.join().unwrap();
    }
}
