//! MULTI_PRIMARY routing of one session: one writer per object.
//!
//! Each write goes to the owner of the objects it writes ([`written_objects`], DirkDB's
//! rendezvous over the masters up, see [`crate::ownership`]); a statement writing objects of
//! different owners is refused with an error naming each object and its owner. A statement whose
//! objects cannot be named (a PRAGMA, `WITH … INSERT`) goes to the owner of the database; the
//! master that runs it refuses it if it writes an object owned elsewhere.
//!
//! A transaction runs on one master. `BEGIN` (or an opening `SAVEPOINT`) is answered at once
//! and replayed on the master its first statement chooses: the owner of what it writes, or of
//! the tables it reads. Its later statements must stay on that master: a write to an object of
//! another owner is refused, the transaction staying open so the client can roll it back.
//!
//! CREATE/DROP DATABASE run on the owner of `DB:<db>`, whose answer the client gets, then on
//! every other master up (a database is a container every master holds). USE runs on the
//! database's owner.
//!
//! Reads go to the owner of the tables they read, which holds every write made through the
//! proxy to them, so a session always reads its own writes. The masters do not yet stream
//! their changes to each other: a read of tables of different owners is refused rather than
//! answered from one master's partial view.

use std::sync::Arc;

use dirkdb_core::connection::ServerConnection;
use dirkdb_core::frame::Frame;
use dirkdb_core::rendezvous::{ObjectKind, ObjectRef};
use dirkdb_core::sql::classify::{StatementClass, TransactionControl};
use dirkdb_core::sql::objects::{read_tables, written_objects, Targets};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{follow_writes, ProxySession};
use crate::backend::Backend;
use crate::error::ProxyError;
use crate::ownership::{describe, owners};
use crate::topology::Topology;

/// Where a statement runs.
enum Target {
    /// On this master; the text says why (for later refusals in the same transaction).
    One(Arc<Backend>, String),
    /// On every master up, the first one's answer going to the client.
    Everywhere(Vec<Arc<Backend>>),
}

impl ProxySession {
    /// Runs one statement of a MULTI_PRIMARY session.
    pub(super) async fn multi_primary<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        class: &StatementClass,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ProxyError> {
        let t = self.topology.load_full();
        if let StatementClass::Transaction(control) = class {
            if self.txn_owner.is_none() && self.defers(control) {
                follow_writes(&mut self.txn, &mut self.txn_wrote, class);
                if self.txn.open {
                    self.pending_txn.push(sql.to_string());
                } else {
                    self.pending_txn.clear();
                }
                return out
                    .send(&Frame::Message("OK".into()))
                    .await
                    .map_err(Into::into);
            }
        }
        let result = match self.target(&t, sql, class)? {
            Target::One(master, why) => self.run_on(master, why, sql, class, out).await,
            Target::Everywhere(masters) => self.run_everywhere(masters, sql, class, out).await,
        };
        self.route_to = None;
        if !self.txn.open {
            self.txn_owner = None;
            self.pending_txn.clear();
        }
        result
    }

    /// True when transaction control is answered by the session itself: it opens a
    /// transaction, or changes one no statement has run in yet.
    fn defers(&self, control: &TransactionControl) -> bool {
        let opens = matches!(
            control,
            TransactionControl::Begin | TransactionControl::Savepoint(_)
        );
        (opens && !self.txn.open) || (self.txn.open && !self.pending_txn.is_empty())
    }

    /// Where `sql` runs, or why it is refused.
    fn target(
        &self,
        t: &Topology,
        sql: &str,
        class: &StatementClass,
    ) -> Result<Target, ProxyError> {
        if let Some((master, why)) = &self.txn_owner {
            if let StatementClass::Write = class {
                self.check_stays_on(t, sql, master, why)?;
            }
            return Ok(Target::One(master.clone(), why.clone()));
        }
        match class {
            StatementClass::Write => self.write_target(t, sql),
            StatementClass::Use(db) => {
                let database = ObjectRef::database(db);
                let owner = owner_or_refuse(t, &database)?;
                Ok(Target::One(owner, format!("the owner of {database}")))
            }
            StatementClass::Read => self.read_target(t, sql),
            StatementClass::Transaction(_) => self.database_target(t),
        }
    }

    /// The owner of everything `sql` writes.
    fn write_target(&self, t: &Topology, sql: &str) -> Result<Target, ProxyError> {
        let objects = match written_objects(sql, self.db.as_deref()) {
            Targets::Known(objects) if !objects.is_empty() => objects,
            _ => return self.database_target(t),
        };
        if let [database] = objects.as_slice() {
            if database.kind == ObjectKind::Database && !self.txn.open {
                let first = owner_or_refuse(t, database)?;
                let mut masters = vec![first.clone()];
                masters.extend(
                    t.masters_up()
                        .into_iter()
                        .filter(|m| !Arc::ptr_eq(m, &first)),
                );
                return Ok(Target::Everywhere(masters));
            }
        }
        self.single_owner(t, &objects, "writes")
    }

    /// The owner of every table `sql` reads (the database's owner when it reads none).
    fn read_target(&self, t: &Topology, sql: &str) -> Result<Target, ProxyError> {
        let Some(db) = self.db.as_deref() else {
            return self.database_target(t);
        };
        match read_tables(sql, db) {
            Targets::Known(tables) if !tables.is_empty() => self.single_owner(t, &tables, "reads"),
            _ => self.database_target(t),
        }
    }

    /// The master of statements that name no object: the owner of the session's database, or
    /// the first master up without one.
    fn database_target(&self, t: &Topology) -> Result<Target, ProxyError> {
        match self.db.as_deref() {
            Some(db) => {
                let database = ObjectRef::database(db);
                let owner = owner_or_refuse(t, &database)?;
                Ok(Target::One(owner, format!("the owner of {database}")))
            }
            None => {
                let first = t.masters_up().into_iter().next();
                let master =
                    first.ok_or(ProxyError::NoBackend("MULTI_PRIMARY: no master is up"))?;
                Ok(Target::One(master, "the first master up".into()))
            }
        }
    }

    /// The one owner of `objects`, or a refusal naming each object and its owner.
    fn single_owner(
        &self,
        t: &Topology,
        objects: &[ObjectRef],
        verb: &str,
    ) -> Result<Target, ProxyError> {
        let owned = owners(t, objects);
        let mut ids: Vec<&str> = owned.iter().filter_map(|(_, o)| o.as_deref()).collect();
        ids.dedup();
        ids.sort_unstable();
        ids.dedup();
        if owned.iter().any(|(_, o)| o.is_none()) || ids.len() != 1 {
            let why = if verb == "writes" {
                "one statement writes the objects of one owner only"
            } else {
                "the masters do not stream their changes to each other yet, so no master holds all of them"
            };
            return Err(ProxyError::Ownership(format!(
                "the statement {verb} objects of different owners: {} (MULTI_PRIMARY: {why})",
                describe(&owned)
            )));
        }
        let owner = owner_or_refuse(t, &owned[0].0)?;
        let names: Vec<String> = owned.iter().map(|(o, _)| o.to_string()).collect();
        Ok(Target::One(
            owner,
            format!("the owner of {}", names.join(", ")),
        ))
    }

    /// A write inside a transaction must touch only objects of the transaction's master.
    fn check_stays_on(
        &self,
        t: &Topology,
        sql: &str,
        master: &Backend,
        why: &str,
    ) -> Result<(), ProxyError> {
        let Targets::Known(objects) = written_objects(sql, self.db.as_deref()) else {
            return Ok(()); // the master itself refuses what it does not own
        };
        let owned = owners(t, &objects);
        let elsewhere: Vec<_> = owned
            .into_iter()
            .filter(|(_, owner)| owner.as_deref() != Some(master.id.as_str()))
            .collect();
        if elsewhere.is_empty() {
            return Ok(());
        }
        Err(ProxyError::Ownership(format!(
            "the transaction runs on {} ({why}), but this statement writes {}: a transaction \
             writes the objects of one owner only (MULTI_PRIMARY); the transaction is still \
             open: ROLLBACK, or COMMIT what it did",
            master.id,
            describe(&elsewhere)
        )))
    }

    /// Runs `sql` on `master` (replaying a deferred BEGIN first), as the primary would.
    async fn run_on<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: Arc<Backend>,
        why: String,
        sql: &str,
        class: &StatementClass,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ProxyError> {
        self.route_to = Some(master.clone());
        if self.txn.open && self.txn_owner.is_none() {
            self.txn_owner = Some((master.clone(), why));
            self.replay_pending_transaction().await?;
        }
        self.on_primary(sql, class, out).await
    }

    /// Replays the answered BEGIN (and savepoints) on the transaction's master.
    async fn replay_pending_transaction(&mut self) -> Result<(), ProxyError> {
        // The connection held from before the transaction is in none: back to its pool.
        if let Some((held, conn)) = self.primary.take() {
            if self
                .route_to
                .as_ref()
                .is_some_and(|m| Arc::ptr_eq(m, &held))
            {
                self.primary = Some((held, conn));
            } else {
                held.checkin(conn);
            }
        }
        let (backend, mut conn) = self.primary_conn().await?;
        backend.ensure_user(&mut conn, self.user.as_deref()).await?;
        backend.ensure_db(&mut conn, self.db.as_deref()).await?;
        for statement in std::mem::take(&mut self.pending_txn) {
            if let Err(e) = conn.client.execute(&statement).await {
                // The connection (and anything it began) is dropped: the transaction is gone.
                return Err(backend.failure(format!("`{statement}` failed: {e}")));
            }
        }
        self.primary = Some((backend, conn));
        Ok(())
    }

    /// CREATE/DROP DATABASE: on the owner first (its answer is the client's), then on every
    /// other master up; a master that fails is logged, never hidden.
    async fn run_everywhere<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        masters: Vec<Arc<Backend>>,
        sql: &str,
        class: &StatementClass,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ProxyError> {
        let Some(first) = masters.first().cloned() else {
            return Err(ProxyError::NoBackend("MULTI_PRIMARY: no master is up"));
        };
        self.route_to = Some(first);
        self.on_primary(sql, class, out).await?;
        if self.last_failed {
            return Ok(());
        }
        for master in masters.iter().skip(1) {
            if let Err(e) = run_alone(master, self.user.as_deref(), sql).await {
                tracing::warn!(instance = %master.id, statement = sql, error = %e, "a database statement failed on a master");
            }
        }
        Ok(())
    }
}

/// Runs one statement on a pooled connection of `master`.
async fn run_alone(master: &Backend, user: Option<&str>, sql: &str) -> Result<(), ProxyError> {
    let mut conn = master.checkout(None).await?;
    master.ensure_user(&mut conn, user).await?;
    match conn.client.execute(sql).await {
        Ok(_) => {
            master.checkin(conn);
            Ok(())
        }
        Err(dirkdb_client::ClientError::Server(reason)) => {
            master.checkin(conn);
            Err(ProxyError::Backend {
                instance: master.id.clone(),
                reason,
            })
        }
        Err(e) => Err(master.failure(e.to_string())),
    }
}

/// The owner of `object`, or an error when no master is up.
fn owner_or_refuse(t: &Topology, object: &ObjectRef) -> Result<Arc<Backend>, ProxyError> {
    t.owner_of(object)
        .ok_or(ProxyError::NoBackend("MULTI_PRIMARY: no master is up"))
}
