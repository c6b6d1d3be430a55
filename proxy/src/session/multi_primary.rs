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
//! CREATE/DROP DATABASE run on the owner of `DB:<db>`, and reach the other masters on its
//! stream, like every other change. USE runs on the database's owner.
//!
//! Every master holds everything (the masters stream their own changes to each other, see
//! `server/src/replication/peers.rs`), so a read outside a transaction goes to any master up,
//! in the read strategy's order. Read-your-writes holds per session across masters: the session
//! keeps the position of its last write on each master (`DIRK POSITION` after each write), and
//! before a statement runs on a master that was not yet seen to hold them all, it asks that
//! master to reach them (`DIRK WAIT ORIGINS`): a read waits at most
//! `loadBalancer.readYourWritesWaitMs` and then tries the next master; a write waits up to
//! `loadBalancer.statementTimeoutMs`, and is not sent if the owner has not caught up by then.
//! A write concern of k (`routing.writes.writeConcern.replicas`) holds the write's answer until
//! k other masters applied it (`DIRK WAIT REPLICAS` on its owner), or replaces it with an error
//! saying how many did.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dirkdb_client::{ClientError, Reply};
use dirkdb_core::connection::ServerConnection;
use dirkdb_core::frame::Frame;
use dirkdb_core::rendezvous::ObjectRef;
use dirkdb_core::sql::classify::{StatementClass, TransactionControl};
use dirkdb_core::sql::conflicts::ConflictStatement;
use dirkdb_core::sql::objects::{read_tables, written_objects, Targets};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{follow_writes, outcome_unknown, parse_number, Confirmations, ProxySession};
use crate::backend::{within, Backend, BackendConn};
use crate::error::ProxyError;
use crate::ownership::{describe, owners};
use crate::topology::Topology;

/// Where a statement runs.
enum Target {
    /// On this master; the text says why (for later refusals in the same transaction).
    One(Arc<Backend>, String),
    /// On the first of these masters that holds the session's writes (a read).
    Anywhere(Vec<Arc<Backend>>),
}

/// The session's writes per master, and what each master was seen to have applied of them.
#[derive(Debug, Default)]
pub(crate) struct SessionPositions {
    /// Position of the session's last write on each master (its own sequence there).
    writes: BTreeMap<String, u64>,
    /// Per master: the positions it was last seen to have reached, per origin.
    seen: HashMap<String, BTreeMap<String, u64>>,
}

impl SessionPositions {
    /// A write the session made on `master` stands at `position` there.
    fn record_write(&mut self, master: &str, position: u64) {
        let at = self.writes.entry(master.to_string()).or_insert(0);
        *at = (*at).max(position);
    }

    /// The session's positions `master` was not yet seen to hold (its own writes there aside).
    fn missing_on(&self, master: &str) -> Vec<(String, u64)> {
        let seen = self.seen.get(master);
        self.writes
            .iter()
            .filter(|(origin, _)| origin.as_str() != master)
            .filter(|(origin, seq)| {
                seen.and_then(|s| s.get(origin.as_str()))
                    .copied()
                    .unwrap_or(0)
                    < **seq
            })
            .map(|(origin, seq)| (origin.clone(), *seq))
            .collect()
    }

    /// Takes `master`'s answer `positions m1=5 m2=9 …`.
    fn seen_on(&mut self, master: &str, answer: &str) {
        let seen = self.seen.entry(master.to_string()).or_default();
        let pairs = answer.strip_prefix("positions").unwrap_or("");
        for (origin, seq) in pairs.split_whitespace().filter_map(|w| w.split_once('=')) {
            if let Ok(seq) = seq.parse::<u64>() {
                let at = seen.entry(origin.to_string()).or_insert(0);
                *at = (*at).max(seq);
            }
        }
    }
}

/// `m1=5 m2=9`.
fn listed(positions: &[(String, u64)]) -> String {
    positions
        .iter()
        .map(|(id, seq)| format!("{id}={seq}"))
        .collect::<Vec<_>>()
        .join(" ")
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
        if let Some(statement) = dirkdb_core::sql::conflicts::parse(sql) {
            return self.conflict_statement(&t, statement, sql, out).await;
        }
        let result = match self.target(&t, sql, class)? {
            Target::One(master, why) => {
                if self.txn_owner.is_none() {
                    self.catch_up_or_refuse(&master).await?;
                }
                self.run_on(master, why, sql, class, out).await
            }
            Target::Anywhere(masters) => self.run_read(masters, sql, class, out).await,
        };
        self.route_to = None;
        if !self.txn.open {
            self.txn_owner = None;
            self.pending_txn.clear();
        }
        result
    }

    /// A read on the first master of `masters` that holds the session's writes.
    async fn run_read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        masters: Vec<Arc<Backend>>,
        sql: &str,
        class: &StatementClass,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ProxyError> {
        let wait = self
            .topology
            .load()
            .config
            .load_balancer
            .read_your_writes_wait_ms;
        let mut behind = Vec::new();
        for master in masters {
            match self.caught_up(&master, Duration::from_millis(wait)).await {
                Ok(true) => return self.run_on(master, "a read".into(), sql, class, out).await,
                Ok(false) => behind.push(master.id.clone()),
                Err(e) => {
                    tracing::debug!(instance = %master.id, error = %e, "read-your-writes wait failed; trying another master");
                    behind.push(master.id.clone());
                }
            }
        }
        if behind.is_empty() {
            return Err(ProxyError::NoBackend("MULTI_PRIMARY: no master is up"));
        }
        Err(ProxyError::Ownership(format!(
            "no master up ({}) applied this session's writes ({}) within {wait} ms \
             (loadBalancer.readYourWritesWaitMs): the read was not run",
            behind.join(", "),
            listed(
                &self
                    .positions
                    .writes
                    .clone()
                    .into_iter()
                    .collect::<Vec<_>>()
            )
        )))
    }

    /// Waits (up to `loadBalancer.statementTimeoutMs`) for `master` to hold the session's
    /// writes made on other masters; refuses the statement when it does not.
    async fn catch_up_or_refuse(&mut self, master: &Arc<Backend>) -> Result<(), ProxyError> {
        let wait = self.statement_timeout();
        if self.caught_up(master, wait).await? {
            return Ok(());
        }
        Err(ProxyError::Backend {
            instance: master.id.clone(),
            reason: format!(
                "it has not applied this session's earlier writes on other masters ({}) within \
                 {} ms (loadBalancer.statementTimeoutMs): the statement was not sent",
                listed(&self.positions.missing_on(&master.id)),
                wait.as_millis()
            ),
        })
    }

    /// True once `master` holds every write of this session (asking it to wait at most `wait`
    /// when it was not seen to hold them yet).
    async fn caught_up(&mut self, master: &Backend, wait: Duration) -> Result<bool, ProxyError> {
        let missing = self.positions.missing_on(&master.id);
        if missing.is_empty() {
            return Ok(true);
        }
        let statement = format!(
            "DIRK WAIT ORIGINS {} {}",
            wait.as_millis(),
            listed(&missing)
        );
        let mut conn = master.checkout(None).await?;
        let limit = self.statement_timeout();
        let user = master.ensure_user(&mut conn, self.user.as_deref());
        within(limit, &master.id, "DIRK AS", user).await??;
        let reached = tokio::time::timeout(
            wait + Duration::from_secs(2),
            conn.client.execute(&statement),
        )
        .await;
        match reached {
            Ok(Ok(Reply::Message(answer))) => {
                self.positions.seen_on(&master.id, &answer);
                master.checkin(conn);
                Ok(true)
            }
            Ok(Err(ClientError::Server(_))) => {
                master.checkin(conn);
                Ok(false)
            }
            Ok(Ok(Reply::Rows(_))) => Err(master.failure(format!("rows for `{statement}`"))),
            Ok(Err(e)) => Err(master.failure(e.to_string())),
            Err(_) => Err(master.failure(format!("`{statement}` was not answered"))),
        }
    }

    /// Records a write's position on its master and applies the write concern to its outcome
    /// (the last frame of its answer): kept (`None`) once k other masters applied it, replaced by
    /// an error saying how many did otherwise.
    pub(super) async fn settle_on_master(
        &mut self,
        backend: &Backend,
        conn: &mut BackendConn,
    ) -> Result<Option<Frame>, ProxyError> {
        let limit = self.statement_timeout();
        let text = backend
            .extension(conn, "DIRK POSITION", limit)
            .await
            .map_err(|e| outcome_unknown(backend, e))?;
        let position = parse_number(&text, "position").unwrap_or(0);
        if position > 0 {
            self.positions.record_write(&backend.id, position);
        }
        let confirmations = self.confirmations(backend, conn, position).await;
        let Some(Confirmations {
            concern, confirmed, ..
        }) = confirmations.map_err(|e| outcome_unknown(backend, e))?
        else {
            return Ok(None);
        };
        if confirmed < u64::from(concern.replicas) {
            return Ok(Some(Frame::error(format!(
                "the write is committed on {} (the owner of what it writes) but only {confirmed} \
                 of the {} other masters asked applied it within {} ms \
                 (routing.writes.writeConcern)",
                backend.id, concern.replicas, concern.timeout_ms
            ))));
        }
        if !crate::ownership::acknowledge(&backend.id, position) {
            return Ok(Some(Frame::error(format!(
                "the write's outcome is unknown: {} committed it, but its objects are moving to \
                 other masters (it was down past failover.detectionMillis), so the proxy does \
                 not acknowledge it; read it back before writing it again",
                backend.id
            ))));
        }
        if let Err(e) = crate::coordinator::record_acknowledgement(&backend.id, position).await {
            return Ok(Some(Frame::error(format!(
                "the write's outcome is unknown: {} committed it and {confirmed} other masters \
                 applied it, but the proxy could not record its acknowledgement in etcd ({e}); \
                 under failover.coordinator ETCD a MULTI_PRIMARY write is acknowledged only once \
                 etcd holds it; read it back before writing it again",
                backend.id
            ))));
        }
        Ok(None)
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
        self.single_owner(t, &objects, "writes")
    }

    /// Outside a transaction: any master up, in the read strategy's order (each holds
    /// everything). In a transaction whose master is not chosen yet: the owner of the tables it
    /// reads, so its later writes to them can stay on it.
    fn read_target(&self, t: &Topology, sql: &str) -> Result<Target, ProxyError> {
        if !self.txn.open {
            let masters: Vec<Arc<Backend>> = t
                .read_candidates(self.db.as_deref())
                .into_iter()
                .filter(|b| t.index_of(&b.id).is_some_and(|i| t.is_master(i)))
                .collect();
            if masters.is_empty() {
                return Err(ProxyError::NoBackend("MULTI_PRIMARY: no master is up"));
            }
            return Ok(Target::Anywhere(masters));
        }
        let Some(db) = self.db.as_deref() else {
            return self.database_target(t);
        };
        match read_tables(sql, db) {
            Targets::Known(tables) if !tables.is_empty() => self
                .single_owner(t, &tables, "reads")
                .or_else(|_| self.database_target(t)),
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
            return Err(ProxyError::Ownership(format!(
                "the statement {verb} objects of different owners: {} (MULTI_PRIMARY: one \
                 statement writes the objects of one owner only)",
                describe(&owned)
            )));
        }
        refuse_without_etcd(&owned[0].0)?;
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

    /// `SHOW CONFLICTS`: every master's conflicts (asked of each master up) in one answer, run
    /// as a read; `RESOLVE CONFLICT <master>.<n> …`: on the master that holds the conflict.
    async fn conflict_statement<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        t: &Arc<Topology>,
        statement: Result<ConflictStatement, String>,
        sql: &str,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ProxyError> {
        let read = StatementClass::Read;
        match statement.map_err(ProxyError::Ownership)? {
            ConflictStatement::Show => {
                let listed = crate::ownership::conflicts_and_unlisted(t).await;
                let query = dirkdb_core::sql::conflicts::show_sql(&listed);
                // Sent as framed text (see `exchange`): it must be one whole statement.
                let split = dirkdb_core::sql::split_script(&format!("{query};"));
                if split.statements.len() != 1 || !split.remainder.trim().is_empty() {
                    return Err(ProxyError::Ownership(
                        "SHOW CONFLICTS: the conflicts listed do not make one statement".into(),
                    ));
                }
                match self.read_target(t, &query)? {
                    Target::Anywhere(masters) => self.run_read(masters, &query, &read, out).await,
                    Target::One(master, why) => self.run_on(master, why, &query, &read, out).await,
                }
            }
            ConflictStatement::Resolve { master: None, .. } => Err(ProxyError::Ownership(
                "RESOLVE CONFLICT through the proxy names the master that holds the conflict:                  `RESOLVE CONFLICT <master>.<n> KEEP LOCAL|REMOTE`, the id as SHOW CONFLICTS                  lists it"
                    .into(),
            )),
            ConflictStatement::Resolve {
                master: Some(id), ..
            } => {
                let master = t
                    .masters_up()
                    .into_iter()
                    .find(|m| m.id.eq_ignore_ascii_case(&id))
                    .ok_or_else(|| {
                        ProxyError::Ownership(format!(
                            "conflict {id}: master {id} is not up (or not a master): its                              conflicts are resolved on it, once it is back"
                        ))
                    })?;
                let why = format!("the master holding conflict {id}");
                self.run_on(master, why, sql, &StatementClass::Write, out).await
            }
        }
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
        let limit = self.statement_timeout();
        let user = backend.ensure_user(&mut conn, self.user.as_deref());
        within(limit, &backend.id, "DIRK AS", user).await??;
        let db = backend.ensure_db(&mut conn, self.db.as_deref());
        within(limit, &backend.id, "USE", db).await??;
        for statement in std::mem::take(&mut self.pending_txn) {
            let replayed = within(
                limit,
                &backend.id,
                &statement,
                conn.client.execute(&statement),
            );
            if let Err(e) = replayed.await? {
                // The connection (and anything it began) is dropped: the transaction is gone.
                return Err(backend.failure(format!("`{statement}` failed: {e}")));
            }
        }
        self.primary = Some((backend, conn));
        Ok(())
    }
}

/// The owner of `object`, or an error when no master is up, when its owner is back and catching
/// up, or down (its objects move once `failover.detectionMillis` passed).
/// Refuses a write to `object` while the ownership plan is in etcd and etcd does not answer.
fn refuse_without_etcd(object: &ObjectRef) -> Result<(), ProxyError> {
    match crate::coordinator::unreachable_reason() {
        None => Ok(()),
        Some(why) => Err(ProxyError::Ownership(format!(
            "{object}: the ownership plan lives in etcd, which this proxy cannot reach ({why}): \
             MULTI_PRIMARY writes are refused and no ownership moves until it answers \
             (failover.coordinator); nothing was run, retry shortly"
        ))),
    }
}

fn owner_or_refuse(t: &Topology, object: &ObjectRef) -> Result<Arc<Backend>, ProxyError> {
    let owner = t
        .owner_of(object)
        .ok_or(ProxyError::NoBackend("MULTI_PRIMARY: no master is up"))?;
    if crate::ownership::is_returning(&owner.id) {
        return Err(ProxyError::Ownership(format!(
            "{object} moves back to its owner {}, which is catching up with the other masters \
             (MULTI_PRIMARY): nothing was run, retry shortly",
            owner.id
        )));
    }
    if owner.health().state == crate::backend::HealthState::Down {
        let when = if crate::ownership::is_moving(&owner.id) {
            "its objects move to another master as soon as one holds every write it acknowledged"
        } else {
            "its objects move to another master once it has been down for failover.detectionMillis"
        };
        return Err(ProxyError::Ownership(format!(
            "{object} is owned by {}, which is down: {when} (MULTI_PRIMARY); nothing was run, \
             retry shortly",
            owner.id
        )));
    }
    Ok(owner)
}
