//! The instance's writer gate and committed sequence.
//!
//! One write transaction runs at a time in the whole instance, so oplog sequence numbers are
//! allocated in commit order and without gaps. A session takes the gate (waiting at most
//! `limits.busyTimeoutMs`) before its first writing statement and gives it back when its
//! transaction ends, after publishing the new committed sequence. Publishing wakes whoever waits
//! for new entries: replica streams, write-concern waiters. Writers queue on a condition variable
//! in arrival order instead of sleeping in SQLite's busy handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::catalog::lock;
use crate::error::ServerError;

/// Owner id used by the server's own writers (replica apply, pruning, database events).
pub const INTERNAL_OWNER: u64 = 0;

/// The gate and the committed sequence.
pub struct WritePath {
    holder: Mutex<Option<u64>>,
    freed: Condvar,
    committed: Arc<AtomicU64>,
    notify: watch::Sender<u64>,
    wait: Duration,
}

impl WritePath {
    /// Starts at the value of `committed` (the highest sequence on disk); writers wait at most
    /// `wait`.
    pub fn new(committed: Arc<AtomicU64>, wait: Duration) -> WritePath {
        let (notify, _) = watch::channel(committed.load(Ordering::Acquire));
        WritePath {
            holder: Mutex::new(None),
            freed: Condvar::new(),
            committed,
            notify,
            wait,
        }
    }

    /// The shared counter the `dirk_committed()` SQL function reads.
    pub fn committed_handle(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// The last committed sequence.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Notified with every new committed sequence.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Takes the gate for `owner` (a no-op when it already holds it).
    pub fn acquire(&self, owner: u64) -> Result<(), ServerError> {
        self.acquire_for(owner, self.wait)
    }

    /// Takes the gate, waiting at most `wait`.
    pub fn acquire_for(&self, owner: u64, wait: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + wait;
        let mut holder = lock(&self.holder);
        loop {
            match *holder {
                None => {
                    *holder = Some(owner);
                    return Ok(());
                }
                Some(h) if h == owner => return Ok(()),
                Some(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ServerError::WriterBusy(wait.as_millis() as u64));
                    }
                    holder = self
                        .freed
                        .wait_timeout(holder, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// True when `owner` holds the gate.
    pub fn holds(&self, owner: u64) -> bool {
        *lock(&self.holder) == Some(owner)
    }

    /// Gives the gate back (a no-op when `owner` does not hold it).
    pub fn release(&self, owner: u64) {
        let mut holder = lock(&self.holder);
        if *holder == Some(owner) {
            *holder = None;
            self.freed.notify_one();
        }
    }

    /// Sets the committed sequence to `seq` even when lower (a replica that installed a full
    /// sync now stands exactly at the snapshot's position).
    pub fn reset(&self, seq: u64) {
        self.committed.store(seq, Ordering::Release);
        self.notify.send_replace(seq);
    }

    /// Makes `seq` the committed sequence when it is higher, and wakes the waiters.
    pub fn publish(&self, seq: u64) {
        let previous = self.committed.fetch_max(seq, Ordering::AcqRel);
        if seq > previous {
            self.notify.send_replace(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_is_exclusive_reentrant_and_times_out() {
        let path = Arc::new(WritePath::new(
            Arc::new(AtomicU64::new(5)),
            Duration::from_millis(50),
        ));
        path.acquire(1).unwrap();
        path.acquire(1).unwrap();
        assert!(matches!(path.acquire(2), Err(ServerError::WriterBusy(50))));
        let p = path.clone();
        let waiter = std::thread::spawn(move || p.acquire_for(2, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        path.release(1);
        waiter.join().unwrap().unwrap();
        assert!(path.holds(2));
        let mut rx = path.subscribe();
        path.publish(4);
        assert_eq!(path.committed(), 5);
        path.publish(9);
        assert_eq!(*rx.borrow_and_update(), 9);
    }
}
