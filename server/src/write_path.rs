//! The instance's writer gate and committed sequence.
//!
//! One write transaction runs at a time in the whole instance, so oplog sequence numbers are
//! allocated in commit order and without gaps. A session takes the gate (waiting at most
//! `limits.busyTimeoutMs`) before its first writing statement and gives it back when its
//! transaction ends, after publishing the new committed sequence. Publishing wakes whoever waits
//! for new entries: replica streams, write-concern waiters. Writers queue in arrival order (a
//! ticket each, served first come first served) instead of sleeping in SQLite's busy handler: a
//! writer that gives the gate back and asks again at once goes behind those already waiting, so
//! a tight loop of writes cannot starve a snapshot, a pruning step or another session until its
//! `busyTimeoutMs` runs out. A release hands the gate to the front waiter and wakes that one
//! alone (each waiter sleeps on its own condition variable): waking them all at every release
//! cost m1 about a fifth of its CPU at 16 writing sessions, in futex calls and context switches
//! of waiters that only went back to sleep.
//!
//! **Group commit** (`storage.groupCommit`, on by default with `storage.synchronous = FULL`):
//! client connections then commit with SQLite's `synchronous = NORMAL`, which writes the WAL
//! without syncing it, and a session makes its commit durable itself after giving the gate back
//! ([`WritePath::make_durable`]): the first session to ask syncs (`fdatasync`) the WAL of every
//! database written since the last sync, and the sessions that committed meanwhile wait for that
//! one sync instead of each paying its own, as PostgreSQL's WAL writer and MySQL's binlog group
//! commit do. The durability is FULL's: nothing is acknowledged before its WAL frames are on
//! disk. Entries are published (backlog, committed sequence, replica streams, change feeds,
//! write-concern waiters) only once durable, in commit order, so no replica or cache ever holds
//! a change the primary could lose to a power cut. Until then they are *written*: the capture
//! triggers number new entries after the written sequence ([`WritePath::committed_handle`]),
//! and every other holder of the gate (DDL of databases, promotion, pruning, snapshots, a
//! replica's apply) first waits for the written entries to be published, so under the gate
//! "written" and "committed" are the same, as they always were.
//!
//! The newest committed entries are also kept in memory (the backlog, as Redis calls it), pushed
//! in commit order by the writer that made them while it still holds the gate, so replica streams
//! serve live changes without reading SQLite or handing work to another thread; a stream further
//! behind than the backlog reads the oplog files instead. Change feeds
//! ([`crate::change_feed`]) read it too, and tell a reset backlog (full-sync install) from a
//! live one by its generation ([`WritePath::resets`]).

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::ServerError;
use crate::lease::Lease;
use crate::oplog::Entry;
use dirkdb_core::sync::lock;

/// Entries kept in the backlog at most.
const BACKLOG_ENTRIES: usize = 20_000;

/// Who holds the gate and who waits for it, in arrival order. The gate is free only when
/// nobody waits: a release hands it straight to the front waiter.
#[derive(Default)]
struct Gate {
    holder: Option<u64>,
    /// The waiters, oldest first.
    queue: VecDeque<Waiter>,
    next_ticket: u64,
}

/// One session waiting for the gate, woken alone when the gate is handed to it.
struct Waiter {
    ticket: u64,
    owner: u64,
    wake: Arc<Condvar>,
}

impl Gate {
    /// Forgets a waiter that gave up.
    fn leave(&mut self, ticket: u64) {
        self.queue.retain(|w| w.ticket != ticket);
    }

    /// Frees the gate, or hands it to the front waiter and wakes that one.
    fn hand_on(&mut self) {
        self.holder = None;
        if let Some(next) = self.queue.pop_front() {
            self.holder = Some(next.owner);
            next.wake.notify_one();
        }
    }
}

/// Group commit's queue: what sessions committed and nobody synced yet.
#[derive(Default)]
struct Pending {
    /// Entries written, not yet published, in sequence order.
    entries: Vec<Entry>,
    /// The position to publish once they are durable (at least the last entry's sequence).
    upto: u64,
    /// The WAL files to sync for them.
    files: BTreeSet<PathBuf>,
    /// True while a session syncs (the others wait for it).
    syncing: bool,
}

/// How many syncs group commit made, and for how many commits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Client commits made durable by a group sync.
    pub commits: u64,
    /// WAL syncs made (one per group and database).
    pub syncs: u64,
}

/// The gate and the committed sequence.
pub struct WritePath {
    gate: Mutex<Gate>,
    /// The last sequence written to SQLite (the capture triggers number after it).
    written: Arc<AtomicU64>,
    /// The last sequence published: durable, in the backlog, seen by streams and waiters.
    committed: AtomicU64,
    group_commit: bool,
    pending: Mutex<Pending>,
    synced: Condvar,
    commits: AtomicU64,
    syncs: AtomicU64,
    notify: watch::Sender<u64>,
    wait: Duration,
    backlog: Mutex<VecDeque<Entry>>,
    /// How many times [`WritePath::reset`] cleared the backlog; changed under its lock.
    resets: AtomicU64,
    lease: Arc<Lease>,
}

/// What [`WritePath::visit_backlog`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogVisit {
    /// The backlog's generation ([`WritePath::resets`]) at the time of the visit.
    pub resets: u64,
    /// The sequence of the last entry visited; `None` when the backlog holds nothing after
    /// `after` (it never held `after + 1`, dropped it, or was cleared).
    pub last: Option<u64>,
}

impl WritePath {
    /// Starts at the value of `committed` (the highest sequence on disk); writers wait at most
    /// `wait`.
    pub fn new(committed: Arc<AtomicU64>, wait: Duration) -> WritePath {
        let start = committed.load(Ordering::Acquire);
        let (notify, _) = watch::channel(start);
        WritePath {
            gate: Mutex::default(),
            written: committed,
            committed: AtomicU64::new(start),
            group_commit: false,
            pending: Mutex::default(),
            synced: Condvar::new(),
            commits: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            notify,
            wait,
            backlog: Mutex::new(VecDeque::new()),
            resets: AtomicU64::new(0),
            lease: Arc::default(),
        }
    }

    /// The same gate, whose client writes need `lease` ([`WritePath::acquire_write`]).
    pub fn with_lease(mut self, lease: Arc<Lease>) -> WritePath {
        self.lease = lease;
        self
    }

    /// The same gate with group commit (see the module's doc): sessions' commits are published
    /// by [`WritePath::make_durable`] once a sync of their WAL made them durable.
    pub fn with_group_commit(mut self, on: bool) -> WritePath {
        self.group_commit = on;
        self
    }

    /// True when sessions' commits wait for a group sync (`storage.groupCommit`).
    pub fn group_commit(&self) -> bool {
        self.group_commit
    }

    /// Syncs made and commits they covered.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }

    /// The primary's write lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Takes the gate for a client's write: refused at once when this primary's write lease
    /// has ended (see [`crate::lease`]), and again once the gate is held when the
    /// node stopped being a primary (or lost its lease) while the write waited for it.
    pub fn acquire_write(&self, owner: u64) -> Result<(), ServerError> {
        self.lease.check_write()?;
        let held_before = self.holds(owner);
        // A session does not wait for the others' syncs here: that is what groups them.
        self.take_gate(owner, self.wait)?;
        if let Err(refused) = self.lease.check_write_holding_gate() {
            if !held_before {
                self.release(owner);
            }
            return Err(refused);
        }
        Ok(())
    }

    /// The shared counter the `dirk_committed()` SQL function reads: the last sequence written
    /// (the capture triggers number new entries after it).
    pub fn committed_handle(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }

    /// The last sequence written to SQLite; above [`WritePath::committed`] only while group
    /// commit has entries that are not durable yet.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
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

    /// Takes the gate, waiting at most `wait` behind the writers that asked before; then waits
    /// until what group commit wrote is published, so that the holder sees written and
    /// committed equal (see the module's doc).
    pub fn acquire_for(&self, owner: u64, wait: Duration) -> Result<(), ServerError> {
        self.take_gate(owner, wait)?;
        self.make_durable(self.written());
        Ok(())
    }

    /// Takes the gate, waiting at most `wait` behind the writers that asked before.
    fn take_gate(&self, owner: u64, wait: Duration) -> Result<(), ServerError> {
        let mut gate = lock(&self.gate);
        if gate.holder == Some(owner) {
            return Ok(());
        }
        if gate.holder.is_none() && gate.queue.is_empty() {
            gate.holder = Some(owner);
            return Ok(());
        }
        let ticket = gate.next_ticket;
        gate.next_ticket += 1;
        let wake = Arc::new(Condvar::new());
        gate.queue.push_back(Waiter {
            ticket,
            owner,
            wake: wake.clone(),
        });
        let deadline = Instant::now() + wait;
        while gate.holder != Some(owner) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                gate.leave(ticket);
                return Err(ServerError::WriterBusy(wait.as_millis() as u64));
            }
            gate = wake
                .wait_timeout(gate, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// True when `owner` holds the gate.
    pub fn holds(&self, owner: u64) -> bool {
        lock(&self.gate).holder == Some(owner)
    }

    /// Gives the gate back (a no-op when `owner` does not hold it).
    pub fn release(&self, owner: u64) {
        let mut gate = lock(&self.gate);
        if gate.holder == Some(owner) {
            gate.hand_on();
        }
    }

    /// A session's transaction just committed `entries` (in order, under the gate) into the
    /// database whose WAL is `wal`, ending at `upto`: published at once without group commit;
    /// with it, written now and published by [`WritePath::make_durable`].
    pub fn commit_entries(&self, entries: Vec<Entry>, upto: u64, wal: PathBuf) {
        if !self.group_commit {
            self.publish_entries(entries);
            self.publish(upto);
            return;
        }
        let mut pending = lock(&self.pending);
        self.written.fetch_max(upto, Ordering::AcqRel);
        if upto <= self.committed() {
            return;
        }
        pending.entries.extend(entries);
        pending.upto = pending.upto.max(upto);
        pending.files.insert(wal);
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns once `seq` is published: at once without group commit or when it already is;
    /// else this caller syncs every WAL written since the last sync and publishes what they
    /// hold (the group's leader), or waits for the sync under way and then looks again.
    pub fn make_durable(&self, seq: u64) {
        if self.committed() >= seq {
            return;
        }
        let mut pending = lock(&self.pending);
        while self.committed() < seq && (pending.syncing || !pending.files.is_empty()) {
            if pending.syncing {
                pending = self.synced.wait(pending).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let entries = std::mem::take(&mut pending.entries);
            let files = std::mem::take(&mut pending.files);
            let upto = pending.upto;
            pending.syncing = true;
            drop(pending);
            for file in &files {
                sync_wal(file);
            }
            self.syncs.fetch_add(files.len() as u64, Ordering::Relaxed);
            self.publish_entries(entries);
            self.publish(upto);
            pending = lock(&self.pending);
            pending.syncing = false;
            self.synced.notify_all();
        }
    }

    /// Sets the committed sequence to `seq` even when lower (a replica that installed a full
    /// sync now stands exactly at the snapshot's position).
    pub fn reset(&self, seq: u64) {
        {
            let mut backlog = lock(&self.backlog);
            backlog.clear();
            self.resets.fetch_add(1, Ordering::AcqRel);
        }
        self.written.store(seq, Ordering::Release);
        self.committed.store(seq, Ordering::Release);
        self.notify.send_replace(seq);
    }

    /// Publishes entries just committed (in order, by the gate's holder): they join the backlog,
    /// then the committed sequence moves to the last one. A gap (entries published without
    /// their predecessors) restarts the backlog, so it always holds one contiguous run.
    pub fn publish_entries(&self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut backlog = lock(&self.backlog);
            for entry in entries {
                if backlog.back().is_some_and(|b| b.seq + 1 != entry.seq) {
                    backlog.clear();
                }
                backlog.push_back(entry);
            }
            while backlog.len() > BACKLOG_ENTRIES {
                backlog.pop_front();
            }
        }
        self.publish(last);
    }

    /// Up to `limit` entries in `(after, upto]` from the backlog, when it holds `after + 1`.
    #[allow(clippy::wrong_self_convention)] // "from the backlog", not a constructor
    pub fn from_backlog(&self, after: u64, upto: u64, limit: usize) -> Option<Vec<Entry>> {
        let mut entries = Vec::new();
        self.visit_backlog(after, upto, limit, |e| entries.push(e.clone()))
            .last
            .map(|_| entries)
    }

    /// Calls `visit` on up to `limit` entries in `(after, upto]`, in order and without copying
    /// them, when the backlog holds `after + 1` (the backlog's lock is held meanwhile, so `visit`
    /// must be quick). The backlog always holds one contiguous run, so the entries visited are
    /// exactly `after + 1 ..= last`.
    pub fn visit_backlog(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
        mut visit: impl FnMut(&Entry),
    ) -> BacklogVisit {
        let backlog = lock(&self.backlog);
        let resets = self.resets.load(Ordering::Acquire);
        let (Some(first), Some(back)) = (backlog.front(), backlog.back()) else {
            return BacklogVisit { resets, last: None };
        };
        if after + 1 < first.seq || after >= back.seq {
            return BacklogVisit { resets, last: None };
        }
        let start = (after + 1 - first.seq) as usize;
        let mut last = None;
        for entry in backlog
            .range(start..)
            .take_while(|e| e.seq <= upto)
            .take(limit)
        {
            visit(entry);
            last = Some(entry.seq);
        }
        BacklogVisit { resets, last }
    }

    /// The backlog's generation: how many times [`WritePath::reset`] replaced this instance's
    /// history (a full-sync install). Entries read before and after a change of generation
    /// may belong to different histories.
    pub fn resets(&self) -> u64 {
        let _backlog = lock(&self.backlog);
        self.resets.load(Ordering::Acquire)
    }

    /// Makes `seq` the committed sequence when it is higher, and wakes the waiters.
    pub fn publish(&self, seq: u64) {
        self.written.fetch_max(seq, Ordering::AcqRel);
        let previous = self.committed.fetch_max(seq, Ordering::AcqRel);
        if seq > previous {
            self.notify.send_replace(seq);
        }
    }
}

/// Syncs one database's WAL to disk (`fdatasync`). A WAL that is gone was checkpointed into its
/// database file and removed by SQLite, which syncs the database file first. A sync that
/// fails leaves the commits in doubt, and after a failed sync the kernel may report the next
/// one clean although the pages were dropped (PostgreSQL's "fsyncgate"), so, as PostgreSQL
/// does, the process stops rather than acknowledge them; at its restart SQLite recovers exactly
/// what reached the disk.
fn sync_wal(path: &std::path::Path) {
    let synced = match std::fs::File::open(path) {
        Ok(file) => file.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(error) = synced {
        tracing::error!(file = %path.display(), %error, "cannot sync a WAL file: stopping, so that no commit in doubt is acknowledged");
        eprintln!("dirkdb: cannot sync {}: {error}; stopping", path.display());
        std::process::abort();
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

    /// A writer that gives the gate back and asks again at once goes behind the waiters: on the
    /// old gate (whoever asked while it was free won) a waiter could starve until its timeout
    /// behind a tight loop of writes.
    #[test]
    fn gate_serves_waiters_in_arrival_order() {
        let path = Arc::new(WritePath::new(
            Arc::new(AtomicU64::new(0)),
            Duration::from_secs(5),
        ));
        path.acquire(1).unwrap();
        let p = path.clone();
        let waiter = std::thread::spawn(move || p.acquire_for(2, Duration::from_secs(5)));
        while lock(&path.gate).queue.is_empty() {
            std::thread::yield_now();
        }
        path.release(1);
        // Handed on, not freed for whoever runs first: the waiter holds it before it woke.
        assert!(
            path.holds(2),
            "the release did not hand the gate to the waiter"
        );
        assert!(lock(&path.gate).queue.is_empty());
        assert!(
            matches!(
                path.acquire_for(1, Duration::ZERO),
                Err(ServerError::WriterBusy(0))
            ),
            "the gate went to a writer that asked after the waiter"
        );
        waiter.join().unwrap().unwrap();
        assert!(path.holds(2));
        path.release(2);
        path.acquire_for(1, Duration::ZERO).unwrap();
    }

    /// A waiter that times out leaves the queue, and the one behind it is served.
    #[test]
    fn a_waiter_that_gives_up_leaves_the_queue() {
        let path = Arc::new(WritePath::new(
            Arc::new(AtomicU64::new(0)),
            Duration::from_secs(5),
        ));
        path.acquire(1).unwrap();
        let p = path.clone();
        let quick = std::thread::spawn(move || p.acquire_for(2, Duration::from_millis(30)));
        while lock(&path.gate).queue.is_empty() {
            std::thread::yield_now();
        }
        let p = path.clone();
        let patient = std::thread::spawn(move || p.acquire_for(3, Duration::from_secs(5)));
        while lock(&path.gate).queue.len() < 2 {
            std::thread::yield_now();
        }
        assert!(matches!(
            quick.join().unwrap(),
            Err(ServerError::WriterBusy(30))
        ));
        assert_eq!(lock(&path.gate).queue.len(), 1);
        path.release(1);
        patient.join().unwrap().unwrap();
        assert!(path.holds(3));
        assert!(lock(&path.gate).queue.is_empty());
    }

    fn grouped() -> (Arc<WritePath>, tempfile::TempDir, PathBuf) {
        // On the crate's own disk, not a tmpfs: the syncs are real.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let wal = dir.path().join("d.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let path = WritePath::new(Arc::new(AtomicU64::new(0)), Duration::from_secs(5))
            .with_group_commit(true);
        (Arc::new(path), dir, wal)
    }

    /// Group commit: a commit is written (the triggers number after it) but not published
    /// until a sync; one sync covers every commit made before it; a holder of the gate other
    /// than a session finds everything published.
    #[test]
    fn group_commit_publishes_after_one_sync_for_the_whole_group() {
        let (path, _dir, wal) = grouped();
        for (owner, seq) in [(1, 1), (2, 2), (3, 3)] {
            path.take_gate(owner, Duration::ZERO).unwrap();
            path.commit_entries(vec![entry(seq)], seq, wal.clone());
            path.release(owner);
            assert_eq!((path.written(), path.committed()), (seq, 0));
            assert!(
                path.from_backlog(0, seq, 10).is_none(),
                "nothing published yet"
            );
        }
        path.make_durable(2);
        assert_eq!(path.committed(), 3, "the sync covered the whole group");
        assert_eq!(
            path.group_commit_stats(),
            GroupCommitStats {
                commits: 3,
                syncs: 1
            }
        );
        assert_eq!(seqs(path.from_backlog(0, 3, 10)), Some(vec![1, 2, 3]));
        path.make_durable(3);
        assert_eq!(path.group_commit_stats().syncs, 1, "nothing left to sync");
        path.take_gate(4, Duration::ZERO).unwrap();
        path.commit_entries(vec![entry(4)], 4, wal.clone());
        path.release(4);
        path.acquire(5).unwrap();
        assert_eq!(
            path.committed(),
            4,
            "the gate's next holder waited for the sync"
        );
        path.release(5);
    }

    /// Many sessions committing at once: every commit is published once durable, in order,
    /// with no gap, and a session's `make_durable` returns only once its own entry is published.
    #[test]
    fn group_commit_under_concurrent_sessions_publishes_every_entry_in_order() {
        let (path, _dir, wal) = grouped();
        let sessions: Vec<_> = (0..8)
            .map(|owner| {
                let (path, wal) = (path.clone(), wal.clone());
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        path.take_gate(owner, Duration::from_secs(5)).unwrap();
                        let seq = path.written() + 1;
                        path.commit_entries(vec![entry(seq)], seq, wal.clone());
                        path.release(owner);
                        path.make_durable(seq);
                        assert!(path.committed() >= seq);
                    }
                })
            })
            .collect();
        for s in sessions {
            s.join().unwrap();
        }
        assert_eq!(path.committed(), 320);
        assert_eq!(
            seqs(path.from_backlog(0, 320, 1_000)),
            Some((1..=320).collect())
        );
        let stats = path.group_commit_stats();
        assert_eq!(stats.commits, 320);
        assert!(stats.syncs >= 1 && stats.syncs <= 320, "{stats:?}");
    }

    /// The sequences of what the backlog returned.
    fn seqs(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.seq).collect())
    }

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            ts: 0,
            db: "d".into(),
            table: "t".into(),
            op: crate::oplog::Op::Insert,
            old_key: None,
            new_key: None,
            data: None,
            crc: 0,
        }
    }

    #[test]
    fn backlog_serves_contiguous_runs_only() {
        let path = WritePath::new(Arc::new(AtomicU64::new(0)), Duration::from_millis(50));
        path.publish_entries((1..=5).map(entry).collect());
        assert_eq!(path.committed(), 5);
        assert_eq!(seqs(path.from_backlog(0, 5, 10)), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(seqs(path.from_backlog(2, 4, 10)), Some(vec![3, 4]));
        assert_eq!(seqs(path.from_backlog(2, 5, 1)), Some(vec![3]));
        assert_eq!(seqs(path.from_backlog(5, 5, 10)), None);
        path.publish_entries(vec![entry(8)]);
        assert_eq!(
            seqs(path.from_backlog(0, 8, 10)),
            None,
            "a gap restarts the backlog"
        );
        assert_eq!(seqs(path.from_backlog(7, 8, 10)), Some(vec![8]));
        let mut seen = Vec::new();
        let visit = path.visit_backlog(7, 8, 10, |e| seen.push(e.seq));
        assert_eq!(
            visit,
            BacklogVisit {
                resets: 0,
                last: Some(8)
            }
        );
        assert_eq!(seen, vec![8]);
        path.reset(3);
        assert_eq!(path.resets(), 1);
        assert_eq!(path.committed(), 3);
        assert_eq!(
            path.visit_backlog(2, 3, 10, |_| {}),
            BacklogVisit {
                resets: 1,
                last: None
            }
        );
    }
}
