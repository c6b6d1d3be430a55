//! MULTI_PRIMARY: which objects this master owns, so that it refuses every client write to an
//! object another master owns (one writer per object, whoever sends the write).
//!
//! The owner of an object is DirkDB's rendezvous ([`dirkdb_core::rendezvous`]) of its key over
//! the masters that are up, in `config.json` order. Which masters are up is the proxy's
//! finding: at every health check it sends each master `POST /replication/ownership
//! {"up": [...], "term": T}`. `T` is the proxy's ownership term, raised whenever the set
//! changes; an update with a lower term than one already taken is refused, so a stale proxy
//! cannot hand objects back. Until the first update, every configured master counts as up.
//!
//! The check runs where SQLite authorizes each statement (`catalog`'s authorizer): every
//! INSERT, UPDATE, DELETE, CREATE/DROP/ALTER of a table, view, index or trigger in a database
//! file names its table or view, including the statements of triggers, and each is checked
//! against the owner of `DB:<db>|TABLE:<t>` (`VIEW:` for views). DirkDB's domains are checked
//! by the statement runner from the parsed statement. The refusal's reason is kept per thread
//! ([`take_refusal`]) so the client reads it instead of SQLite's "not authorized".
//!
//! A database itself is owned too: CREATE/DROP DATABASE are accepted by the owner of `DB:<db>`
//! only (`Storage::create_database`), and reach the other masters on its stream
//! (`replication/peers.rs`). `owners.rs` lists every object with its owner (`SHOW OWNERS`).
//!
//! The check runs again at commit ([`TransactionWrites`], the connection's commit hook): a
//! transaction whose statements passed it while this master owned their objects is not
//! committed once its view has lapsed or names another owner, so a transaction left open across
//! an ownership move cannot commit on the old owner afterwards.
//!
//! The view is a lease (issue #16 item 4): each update carries `leaseMillis` and the proxy's
//! wall clock when it sent it (`sentAtMs`), and grants what is left of the lease at arrival,
//! anchored at the send time as the write lease is (`lease.rs`). Once a master has taken
//! one leased view it refuses every write when its view is not renewed in time: a master that
//! was paused, cut off from the proxy or killed cannot write the objects it owned after the
//! proxy stopped renewing its view, which is what lets the proxy move them to another master
//! once `last renewal sent + lease + failover.clockDriftMillis` has passed. The term of the
//! view is kept in the meta file (`ownership_term`): a restarted master starts with its view
//! lapsed at that term, and writes again only once the proxy sent it a view of that term or a
//! later one.

use std::cell::RefCell;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use dirkdb_core::rendezvous::{self, ObjectKind, ObjectRef};
use dirkdb_core::sync::{lock, read, write};
use serde::Serialize;

/// This master's view of ownership.
#[derive(Debug)]
pub struct Ownership {
    instance: String,
    /// Every master, in `config.json` order; empty outside MULTI_PRIMARY (nothing is checked).
    masters: Vec<String>,
    view: RwLock<View>,
    /// The view's lease: `None` while no leased view was ever taken (nothing enforced).
    lease: Mutex<Option<Instant>>,
    /// True once a leased view was taken here (or one was before a restart).
    leased: std::sync::atomic::AtomicBool,
}

/// The meta file's setting that keeps the ownership term across restarts.
pub(crate) const OWNERSHIP_TERM_SETTING: &str = "ownership_term";

/// The lease of one ownership update: its length and the proxy's wall clock when sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewLease {
    /// `leaseMillis`.
    pub lease_ms: u64,
    /// `sentAtMs`, the proxy's wall clock.
    pub sent_at_ms: i64,
    /// This master's wall clock on arrival.
    pub now_ms: i64,
}

impl ViewLease {
    /// What is left of the lease on arrival (nothing once older than the lease).
    fn left(&self) -> Duration {
        let age = self.now_ms.saturating_sub(self.sent_at_ms).max(0) as u64;
        Duration::from_millis(self.lease_ms.saturating_sub(age))
    }
}

/// The inputs of ownership: the masters up and the proxy's term for that set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    /// Masters up, in `config.json` order.
    pub up: Vec<String>,
    /// The proxy's ownership term (0: never told).
    pub term: u64,
}

/// Why an ownership update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipRefusal {
    /// Not a MULTI_PRIMARY topology.
    #[error("this instance is not a master of a MULTI_PRIMARY topology (routing.writes.mode)")]
    NotMultiPrimary,
    /// The update's term is below the one in force.
    #[error("ownership term {asked} refused: this master is at ownership term {own}")]
    StaleTerm {
        /// Term of the update.
        asked: u64,
        /// Term in force.
        own: u64,
    },
    /// The update names an instance that is not a master.
    #[error("`{0}` is not a master of config.json")]
    UnknownMaster(String),
}

thread_local! {
    static REFUSAL: RefCell<Option<String>> = const { RefCell::new(None) };
    static DOMAIN_STATEMENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static STARTS_TRANSACTION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, a client's statement; `starts` when its connection is outside a transaction, so
/// the statement starts one: the objects an earlier transaction of that connection noted and
/// then rolled back are forgotten at the statement's first authorization
/// ([`TransactionWrites::forget_when_a_transaction_starts`]). This replaces a rollback hook:
/// rusqlite (0.41) keeps hooks as SQLite client data, which `sqlite3_close` frees *before* it
/// rolls back an open transaction, so a connection closed inside a transaction (the way a
/// session's open transaction is rolled back) called a freed closure.
pub(crate) fn run_statement_of_client<T>(starts: bool, f: impl FnOnce() -> T) -> T {
    STARTS_TRANSACTION.with(|s| s.set(starts));
    let out = f();
    STARTS_TRANSACTION.with(|s| s.set(false));
    out
}

/// Runs `f` as a DirkDB domain statement whose owner was checked: its writes to the domain
/// table (`dirkdb_domains`, one row per domain) are the domain's, not the table's.
pub(crate) fn as_domain_statement<T>(f: impl FnOnce() -> T) -> T {
    let previous = DOMAIN_STATEMENT.with(|d| d.replace(true));
    let out = f();
    DOMAIN_STATEMENT.with(|d| d.set(previous));
    out
}

/// True inside [`as_domain_statement`] on this thread.
pub(crate) fn in_domain_statement() -> bool {
    DOMAIN_STATEMENT.with(|d| d.get())
}

/// The reason of the last ownership refusal on this thread, taken (once).
pub(crate) fn take_refusal() -> Option<String> {
    REFUSAL.with(|r| r.borrow_mut().take())
}

fn note_refusal(reason: String) {
    REFUSAL.with(|r| *r.borrow_mut() = Some(reason));
}

impl Default for Ownership {
    fn default() -> Ownership {
        Ownership::disabled()
    }
}

impl Ownership {
    /// Nothing is checked (SINGLE_PRIMARY).
    pub fn disabled() -> Ownership {
        Ownership::new("", Vec::new())
    }

    /// `instance`'s view among `masters` (config order); every master up until told otherwise.
    pub fn new(instance: &str, masters: Vec<String>) -> Ownership {
        Ownership {
            instance: instance.to_string(),
            view: RwLock::new(View {
                up: masters.clone(),
                term: 0,
            }),
            masters,
            lease: Mutex::new(None),
            leased: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A master restarted at ownership term `term` (from the meta file): its view starts
    /// lapsed, so it writes nothing until the proxy renews it at `term` or later.
    pub fn restore(&self, term: u64) {
        let mut view = write(&self.view);
        view.term = view.term.max(term);
        self.leased
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// What is left of the view's lease (`None`: leases not enforced here yet).
    pub fn lease_left(&self) -> Option<Duration> {
        if !self.leased.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let until = *lock(&self.lease);
        Some(until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        }))
    }

    /// `Err` (the reason) when the view's lease has lapsed.
    fn check_lease(&self) -> Result<(), String> {
        match self.lease_left() {
            Some(left) if left.is_zero() => Err(format!(
                "{} refuses every write: its ownership view (term {}) was not renewed by the proxy \
                 within its lease (failover.leaseMillis); the objects it owned may have moved to \
                 another master (MULTI_PRIMARY)",
                self.instance,
                self.view().term
            )),
            _ => Ok(()),
        }
    }

    /// True in a MULTI_PRIMARY topology.
    pub fn active(&self) -> bool {
        !self.masters.is_empty()
    }

    /// The current inputs.
    pub fn view(&self) -> View {
        read(&self.view).clone()
    }

    /// Takes the proxy's update: `up` (any order; kept in config order) under `term`, with
    /// its lease when it has one.
    pub fn update(
        &self,
        up: &[String],
        term: u64,
        lease: Option<ViewLease>,
    ) -> Result<View, OwnershipRefusal> {
        if !self.active() {
            return Err(OwnershipRefusal::NotMultiPrimary);
        }
        if let Some(unknown) = up.iter().find(|id| !self.masters.contains(id)) {
            return Err(OwnershipRefusal::UnknownMaster(unknown.clone()));
        }
        let mut view = write(&self.view);
        if term < view.term {
            return Err(OwnershipRefusal::StaleTerm {
                asked: term,
                own: view.term,
            });
        }
        let ordered: Vec<String> = self
            .masters
            .iter()
            .filter(|m| up.contains(m))
            .cloned()
            .collect();
        if ordered != view.up {
            tracing::info!(instance = %self.instance, up = ?ordered, term, "ownership inputs changed");
        }
        *view = View { up: ordered, term };
        if let Some(lease) = lease {
            let until = Instant::now() + lease.left();
            let mut held = lock(&self.lease);
            *held = Some(until);
            self.leased
                .store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(view.clone())
    }

    /// The owner of `object` among the masters up (`None`: none is up, or not MULTI_PRIMARY).
    pub fn owner_of(&self, object: &ObjectRef) -> Option<String> {
        let view = self.view();
        rendezvous::owner(&object.key(), &view.up).map(|i| view.up[i].clone())
    }

    /// The home of `object`: its owner by rendezvous over every configured master, where its
    /// writes go while all are up; it resolves the object's conflicts
    /// (`replication/conflicts.rs`). `None` outside MULTI_PRIMARY.
    pub fn home_of(&self, object: &ObjectRef) -> Option<String> {
        rendezvous::owner(&object.key(), &self.masters).map(|i| self.masters[i].clone())
    }

    /// This master's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `Ok` when this master may write `object` (always outside MULTI_PRIMARY); otherwise the
    /// reason, naming the object and its owner.
    pub fn check(&self, object: &ObjectRef) -> Result<(), String> {
        if !self.active() {
            return Ok(());
        }
        self.check_lease()?;
        match self.owner_of(object) {
            Some(owner) if owner == self.instance => Ok(()),
            Some(owner) => Err(format!(
                "{object} is owned by {owner}, not by {} (MULTI_PRIMARY: one writer per object; \
                 send the write through the proxy, or to {owner})",
                self.instance
            )),
            None => Err(format!(
                "{object} has no owner: no master is up in this master's view (MULTI_PRIMARY)"
            )),
        }
    }

    /// The authorizer's check of one table or view a statement writes in database `db`: false
    /// (and the reason noted for [`take_refusal`]) when another master owns it.
    pub fn allows(&self, db: &str, kind: ObjectKind, name: &str) -> bool {
        match self.check(&ObjectRef::object(db, kind, name)) {
            Ok(()) => true,
            Err(reason) => {
                note_refusal(reason);
                false
            }
        }
    }
}

/// The owned objects one connection's open transaction has written (as its statements were
/// authorized), checked again at its commit: the ownership view may have lapsed or moved the
/// objects to another master while the transaction was open.
#[derive(Debug, Default)]
pub(crate) struct TransactionWrites {
    objects: Mutex<std::collections::BTreeSet<ObjectRef>>,
}

impl TransactionWrites {
    /// Notes an object a statement of the open transaction writes.
    pub(crate) fn note(&self, object: ObjectRef) {
        lock(&self.objects).insert(object);
    }

    /// Forgets the objects of an earlier transaction (committed, refused or rolled back) when
    /// the statement being authorized starts a new one ([`run_statement_of_client`]); called
    /// by the connection's authorizer before anything else.
    pub(crate) fn forget_when_a_transaction_starts(&self) {
        if STARTS_TRANSACTION.with(|s| s.replace(false)) {
            lock(&self.objects).clear();
        }
    }

    /// The commit hook's answer: true (the commit turned into a rollback, the reason noted for
    /// [`take_refusal`]) when this master may no longer write one of the objects the
    /// transaction wrote. The objects are forgotten either way.
    pub(crate) fn refuses_commit(&self, ownership: &Ownership) -> bool {
        let objects = std::mem::take(&mut *lock(&self.objects));
        if !ownership.active() {
            return false;
        }
        for object in &objects {
            if let Err(reason) = ownership.check(object) {
                tracing::warn!(%object, %reason, "commit refused: ownership changed while the transaction was open");
                note_refusal(format!(
                    "not committed: {reason}; the transaction's statements were checked while \
                     this master owned {object}, and ownership changed before its commit"
                ));
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masters() -> Vec<String> {
        vec!["m1".into(), "m2".into(), "m3".into()]
    }

    #[test]
    fn owners_follow_dirkdbs_rendezvous_over_the_masters_up() {
        let m2 = Ownership::new("m2", masters());
        // Vectors of core::rendezvous: commandes → m2, utilisateurs → m1, produits → m3.
        let commandes = ObjectRef::table("testdb", "commandes");
        let produits = ObjectRef::table("testdb", "produits");
        assert!(m2.check(&commandes).is_ok());
        let err = m2.check(&produits).unwrap_err();
        assert!(
            err.contains("table testdb.produits is owned by m3"),
            "{err}"
        );
        assert!(!m2.allows("testdb", ObjectKind::Table, "produits"));
        assert!(take_refusal().is_some_and(|r| r.contains("owned by m3")));
        assert_eq!(take_refusal(), None, "taken once");
        // m3 down: its objects go to the next by rendezvous.
        m2.update(&["m2".into(), "m1".into()], 5, None).unwrap();
        assert_eq!(m2.view().up, ["m1", "m2"], "kept in config order");
        assert_eq!(m2.owner_of(&produits).as_deref(), Some("m2"));
        assert_eq!(
            m2.update(&masters(), 4, None),
            Err(OwnershipRefusal::StaleTerm { asked: 4, own: 5 })
        );
        assert!(matches!(
            m2.update(&["m9".into()], 6, None),
            Err(OwnershipRefusal::UnknownMaster(_))
        ));
        m2.update(&[], 6, None).unwrap();
        assert!(m2.check(&commandes).unwrap_err().contains("no owner"));
    }

    #[test]
    fn a_leased_view_lapses_and_a_restarted_master_waits_for_one() {
        let m2 = Ownership::new("m2", masters());
        let commandes = ObjectRef::table("testdb", "commandes");
        assert!(
            m2.check(&commandes).is_ok(),
            "no leased view yet: not enforced"
        );
        let lease = |lease_ms, sent_at_ms| ViewLease {
            lease_ms,
            sent_at_ms,
            now_ms: 10_000,
        };
        m2.update(&masters(), 3, Some(lease(60_000, 9_900)))
            .unwrap();
        assert!(m2.check(&commandes).is_ok());
        let left = m2.lease_left().unwrap();
        assert!(left > Duration::from_millis(59_000) && left <= Duration::from_millis(59_900));
        // A renewal that waited past its lease grants nothing.
        m2.update(&masters(), 3, Some(lease(500, 9_000))).unwrap();
        let err = m2.check(&commandes).unwrap_err();
        assert!(
            err.contains("refuses every write") && err.contains("term 3"),
            "{err}"
        );
        // A restarted master: lapsed at its stored term until renewed.
        let restarted = Ownership::new("m2", masters());
        restarted.restore(3);
        assert!(restarted.check(&commandes).is_err());
        assert_eq!(
            restarted.update(&masters(), 2, Some(lease(60_000, 10_000))),
            Err(OwnershipRefusal::StaleTerm { asked: 2, own: 3 })
        );
        restarted
            .update(&masters(), 3, Some(lease(60_000, 10_000)))
            .unwrap();
        assert!(restarted.check(&commandes).is_ok());
    }

    #[test]
    fn a_commit_is_refused_once_an_object_it_wrote_moved_or_the_view_lapsed() {
        let m3 = Ownership::new("m3", masters());
        let writes = TransactionWrites::default();
        writes.note(ObjectRef::table("testdb", "produits"));
        assert!(!writes.refuses_commit(&m3), "still m3's");
        writes.note(ObjectRef::table("testdb", "produits"));
        m3.update(&["m1".into(), "m2".into()], 2, None).unwrap();
        assert!(writes.refuses_commit(&m3));
        let why = take_refusal().unwrap();
        assert!(
            why.contains("not committed") && why.contains("owned by m2"),
            "{why}"
        );
        assert!(!writes.refuses_commit(&m3), "forgotten once judged");
        writes.note(ObjectRef::table("testdb", "produits"));
        run_statement_of_client(false, || writes.forget_when_a_transaction_starts());
        assert!(
            writes.refuses_commit(&m3),
            "kept by a statement inside the transaction"
        );
        take_refusal();
        writes.note(ObjectRef::table("testdb", "produits"));
        run_statement_of_client(true, || writes.forget_when_a_transaction_starts());
        assert!(
            !writes.refuses_commit(&m3),
            "a rolled-back transaction's objects forgotten when the next one starts"
        );
    }

    #[test]
    fn nothing_is_checked_outside_multi_primary() {
        let o = Ownership::disabled();
        assert!(!o.active());
        assert!(o.check(&ObjectRef::table("d", "t")).is_ok());
        assert_eq!(
            o.update(&[], 1, None),
            Err(OwnershipRefusal::NotMultiPrimary)
        );
    }
}
