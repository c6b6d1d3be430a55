//! One storage instance as the proxy sees it: its pooled connections, its health and its
//! counters.
//!
//! Pooled connections remember which database they last USEd, so a session's database is
//! replayed on a backend connection only when it differs (DirkDB's lazy `ampiasao`). A
//! connection that saw an error or a timeout is dropped, never pooled; so is one that ran a
//! statement changing the connection's own state (a PRAGMA, ATTACH, a TEMP object; see
//! `dirkdb_core::sql::session_state`), so no client inherits another's settings.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dirkdb_client::{Client, Reply};
use dirkdb_core::config::InstanceConfig;
use serde::Serialize;

use crate::error::ProxyError;
use dirkdb_core::sync::lock;

/// Idle connections kept per instance.
const MAX_IDLE: usize = 64;

/// How long a new connection to an instance may take, and then its login.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether an instance may serve statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HealthState {
    /// Answering, and (for a replica) within the lag limit.
    Up,
    /// Answering, but further behind than `maxReplicationLagMs`.
    Lagging,
    /// Not answering for `failCount` checks.
    Down,
}

/// The last health check's findings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Up, Lagging or Down.
    pub state: HealthState,
    /// The role the instance reports.
    pub reported_role: Option<String>,
    /// The replication mode the instance reports (`OPLOG` or `FILE`; none from older servers).
    pub reported_mode: Option<String>,
    /// Its committed (primary) or applied (replica) sequence.
    pub committed: u64,
    /// Entries behind the primary.
    pub lag_operations: u64,
    /// How long it has been behind.
    pub lag_ms: u64,
    /// Consecutive failed checks.
    pub failures: u32,
    /// The last check's error.
    pub last_error: Option<String>,
}

/// A pooled connection and the database it stands in.
pub struct BackendConn {
    /// The connection.
    pub client: Client,
    /// Its current database.
    pub db: Option<String>,
    /// It ran a statement that changed its own state: never pooled again.
    changed_state: bool,
    /// The client it runs for (`DIRK AS`; `None`: the cluster user itself).
    pub user: Option<String>,
}

impl BackendConn {
    /// Notes a statement about to run on this connection: one that changes the connection's
    /// own state keeps it out of the pool from then on.
    pub fn note_statement(&mut self, sql: &str) {
        self.changed_state |= dirkdb_core::sql::session_state::changes_connection_state(sql);
    }
}

/// One instance of the topology.
pub struct Backend {
    /// Instance id.
    pub id: String,
    /// SQL address.
    pub addr: String,
    /// Admin API address, when configured.
    pub admin: Option<String>,
    health: Mutex<Health>,
    in_flight: AtomicUsize,
    idle: Mutex<Vec<BackendConn>>,
    reads: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    /// Statements the instance answered with an error (a client's typo, a constraint): not the
    /// instance's fault, so kept apart from `errors`.
    statement_errors: AtomicU64,
    busy_micros: AtomicU64,
}

impl Backend {
    /// A backend for a configured instance, assumed up until checked.
    pub fn new(instance: &InstanceConfig) -> Backend {
        Backend {
            id: instance.id.clone(),
            addr: instance.sql_addr(),
            admin: instance
                .admin_port
                .map(|p| format!("{}:{p}", instance.host)),
            health: Mutex::new(Health {
                state: HealthState::Up,
                reported_role: None,
                reported_mode: None,
                committed: 0,
                lag_operations: 0,
                lag_ms: 0,
                failures: 0,
                last_error: None,
            }),
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            statement_errors: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
        }
    }

    /// The last health findings.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Replaces the health findings.
    pub fn set_health(&self, f: impl FnOnce(&mut Health)) {
        f(&mut lock(&self.health));
    }

    /// Statements in flight on this instance (for LEAST_CONNECTIONS).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A connection standing in `db` when one is idle, else any (the caller replays USE).
    pub async fn checkout(&self, db: Option<&str>) -> Result<BackendConn, ProxyError> {
        let pooled = {
            let mut idle = lock(&self.idle);
            let exact = idle.iter().position(|c| c.db.as_deref() == db);
            match (exact, db) {
                (Some(i), _) => Some(idle.swap_remove(i)),
                (None, Some(_)) => idle.pop(),
                (None, None) => None,
            }
        };
        match pooled {
            Some(conn) => Ok(conn),
            None => self.connect().await,
        }
    }

    /// A new connection, logged in as the cluster user (if any).
    async fn connect(&self) -> Result<BackendConn, ProxyError> {
        let mut client = Client::connect_timeout(&self.addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| self.failure(e.to_string()))?;
        // A frozen instance accepts connections (its kernel does) but never answers.
        match tokio::time::timeout(CONNECT_TIMEOUT, crate::auth::login(&mut client)).await {
            Ok(logged_in) => logged_in.map_err(|e| self.failure(e))?,
            Err(_) => {
                let secs = CONNECT_TIMEOUT.as_secs();
                return Err(self.failure(format!("no answer to AUTH within {secs} s")));
            }
        }
        Ok(BackendConn {
            client,
            db: None,
            changed_state: false,
            user: None,
        })
    }

    /// Gives a healthy connection back to the pool (one whose state a statement changed is
    /// closed instead, which also makes the server drop its SQLite connection).
    pub fn checkin(&self, conn: BackendConn) {
        if conn.changed_state {
            tracing::debug!(instance = %self.id, "closing a connection whose settings a statement changed");
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Drops every idle connection (the instance went down or changed role).
    pub fn clear_pool(&self) {
        lock(&self.idle).clear();
    }

    /// Makes `conn` stand in `db`.
    pub async fn ensure_db(
        &self,
        conn: &mut BackendConn,
        db: Option<&str>,
    ) -> Result<(), ProxyError> {
        let Some(db) = db else {
            return Ok(());
        };
        if conn.db.as_deref() == Some(db) {
            return Ok(());
        }
        match conn.client.execute(&format!("USE {db}")).await {
            Ok(Reply::Message(_)) => {
                conn.db = Some(db.to_string());
                Ok(())
            }
            Ok(Reply::Rows(_)) => Err(self.failure("unexpected answer to USE".into())),
            Err(e) => Err(self.failure(e.to_string())),
        }
    }

    /// Makes `conn` run for `user` (the server then enforces that user's grants).
    pub async fn ensure_user(
        &self,
        conn: &mut BackendConn,
        user: Option<&str>,
    ) -> Result<(), ProxyError> {
        let Some(user) = user else {
            return Ok(());
        };
        // Without cluster credentials the connection authenticated as nobody, who may act for
        // no one (and the servers enforce no grants then anyway).
        if crate::auth::cluster().is_none() {
            return Ok(());
        }
        if conn.user.as_deref() == Some(user) {
            return Ok(());
        }
        match conn
            .client
            .execute(&crate::auth::act_as_statement(user))
            .await
        {
            Ok(Reply::Message(_)) => {
                conn.user = Some(user.to_string());
                Ok(())
            }
            Ok(Reply::Rows(_)) => Err(self.failure("unexpected answer to DIRK AS".into())),
            Err(e) => Err(self.failure(e.to_string())),
        }
    }

    /// Runs an extension statement (`DIRK …`) on a client's behalf and returns its message
    /// text; no answer within `limit` is [`ProxyError::ExtensionTimeout`] (see [`within`]).
    pub async fn extension(
        &self,
        conn: &mut BackendConn,
        statement: &str,
        limit: Duration,
    ) -> Result<String, ProxyError> {
        let answer = within(limit, &self.id, statement, conn.client.execute(statement)).await?;
        match answer {
            Ok(Reply::Message(text)) => Ok(text),
            Ok(Reply::Rows(_)) => Err(self.failure(format!("unexpected rows for `{statement}`"))),
            Err(e) => Err(self.failure(e.to_string())),
        }
    }

    /// Counts a statement served, its duration and whether it was answered with an error (a
    /// statement error, not a failure of the instance).
    pub fn record(&self, write: bool, failed: bool, micros: u64) {
        let counter = if write { &self.writes } else { &self.reads };
        counter.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.statement_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.busy_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Marks a statement as running until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Statements the instance answered with an error (client errors such as a typo).
    pub fn statement_errors(&self) -> u64 {
        self.statement_errors.load(Ordering::Relaxed)
    }

    /// (reads, writes, failures of the instance, total busy µs).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.busy_micros.load(Ordering::Relaxed),
        )
    }

    /// A backend error, counted.
    pub fn failure(&self, reason: String) -> ProxyError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        ProxyError::Backend {
            instance: self.id.clone(),
            reason,
        }
    }
}

/// Awaits `call`, a statement sent to `instance` on a client's behalf, for at most `limit` (the
/// wait it asks the server for plus `loadBalancer.statementTimeoutMs`); past it
/// [`ProxyError::ExtensionTimeout`]. The caller must then drop the connection: the answer may
/// still arrive on it.
pub(crate) async fn within<T>(
    limit: Duration,
    instance: &str,
    statement: &str,
    call: impl std::future::Future<Output = T>,
) -> Result<T, ProxyError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| ProxyError::ExtensionTimeout {
            statement: statement.to_string(),
            instance: instance.to_string(),
            ms: limit.as_millis() as u64,
        })
}

/// Decrements the in-flight count when dropped.
pub struct InFlight<'a>(&'a Backend);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
