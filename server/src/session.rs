//! One client's session: its current database, its SQLite connection (and so its transaction),
//! and the dispatch of each statement it sends.
//!
//! A statement is translated from Malagasy, then either handled here (database statements) or
//! run by [`crate::statement_runner`] on a blocking thread while this task writes the frames it
//! produces to the client. The SQLite connection moves into that thread and back, so the
//! session's transaction lives exactly as long as the client connection: when the client leaves,
//! [`Session`]'s `Drop` closes an open transaction (rolling it back) or pools the connection.
//!
//! A running statement is interrupted through SQLite's interrupt handle when its client leaves,
//! and when the server's shutdown deadline passes (`limits.shutdownTimeoutMs`; see
//! [`Session::interrupt_at`]). While a statement runs the session reads ahead only until
//! [`READ_AHEAD_STATEMENTS`] more complete statements are buffered, so piped statements wait in
//! the socket, not in memory; two, so that the one a proxy pipes behind every write (`DIRK
//! POSITION HISTORY`) does not stop the session from seeing that its client left.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dirkdb_core::accept_loop::Deadline;
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::Frame;
use dirkdb_core::security::ConnectionAuth;
use dirkdb_core::sql::conflicts::ConflictStatement;
use dirkdb_core::sql::malagasy::translate;
use rusqlite::Connection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::auth::{self, Access};
use crate::blocking::blocking;
use crate::catalog::{open_scratch, Database};
use crate::database_statement::{self, database_text, use_text, DatabaseStatement};
use crate::error::ServerError;
use crate::extension;
use crate::state::ServerState;
use crate::statement_runner::{run_job, FrameSink, Job, RunOptions, Writer};
use dirkdb_core::sql::dirkdb::{self, Route};

/// Frames in flight between the runner thread and the socket writer.
const FRAME_CHANNEL: usize = 4;

/// Complete statements read ahead while one runs, at most (see the module doc).
const READ_AHEAD_STATEMENTS: usize = 2;

/// Per-client state.
pub(crate) struct Session {
    state: Arc<ServerState>,
    /// This session's id at the writer gate.
    owner: u64,
    /// Position of this session's last committed write.
    last_write: Arc<AtomicU64>,
    current: Option<CurrentDatabase>,
    scratch: Option<Connection>,
    /// Who the client is (see [`crate::auth`]).
    auth: ConnectionAuth,
    /// Past it, a running statement is interrupted (the server is shutting down).
    deadline: Deadline,
    /// The current database's connection ran a statement that changed its own state (a PRAGMA,
    /// ATTACH, a TEMP object): it is closed when released, never pooled for another client.
    changed_state: bool,
}

struct CurrentDatabase {
    db: Arc<Database>,
    conn: Option<Connection>,
}

impl CurrentDatabase {
    fn in_transaction(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_autocommit())
    }
}

impl Session {
    /// A session with no current database, for a client at `peer`.
    pub(crate) fn new(state: Arc<ServerState>, peer: IpAddr) -> Session {
        Session {
            owner: state.new_owner(),
            last_write: Arc::default(),
            auth: ConnectionAuth::new(state.security.security.clone(), peer),
            state,
            current: None,
            scratch: None,
            deadline: Deadline::never(),
            changed_state: false,
        }
    }

    /// How long the connection of `slot` may wait for the next statement
    /// (`limits.idleInTransactionTimeoutMs` while a transaction is open, else
    /// `limits.idleTimeoutMs`).
    pub(crate) fn idle_limit(
        &self,
        slot: &dirkdb_core::conn_limit::AddressSlot,
    ) -> Option<dirkdb_core::connection::IdleLimit> {
        let in_transaction = self.current.as_ref().is_some_and(|c| c.in_transaction());
        self.state.client_limits.idle_limit(slot, in_transaction)
    }

    /// The client's identity.
    pub(crate) fn auth(&self) -> &ConnectionAuth {
        &self.auth
    }

    /// Interrupts the running statement once `deadline` passes (the shutdown deadline).
    pub(crate) fn interrupt_at(&mut self, deadline: Deadline) {
        self.deadline = deadline;
    }

    /// The instance this session belongs to.
    pub(crate) fn state(&self) -> Arc<ServerState> {
        self.state.clone()
    }

    /// Answers one incoming statement with one complete response.
    pub(crate) async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        incoming: Incoming,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        let limit = self.state.limits.max_statement_bytes;
        let sql = match incoming.into_statement(limit) {
            Ok(sql) => sql,
            Err(refusal) => return self.reply(out, refusal).await,
        };
        let _held = match self.state.in_flight.hold(sql.len()) {
            Ok(held) => held,
            Err(refusal) => return self.reply(out, Frame::error(refusal)).await,
        };
        if let Some(frame) = self.auth.gate(&sql).await {
            return self.reply(out, frame).await;
        }
        if let Some(ext) = extension::parse(&sql) {
            let last_write = self.last_write.load(Ordering::Acquire);
            let frame = match ext {
                Ok(ext) => match extension::answer(&self.state, ext, last_write).await {
                    Ok(text) => Frame::Message(text),
                    Err(e) => Frame::error(e),
                },
                Err(e) => Frame::error(e),
            };
            return self.reply(out, frame).await;
        }
        if let Some(statement) = dirkdb_core::sql::conflicts::parse(&sql) {
            return self.conflict_statement(statement, out).await;
        }
        let prepared = if sql.len() > OFF_RUNTIME_BYTES {
            // Lexing, translating and parsing megabytes would hold a runtime worker for long
            // enough to starve the admin API (the proxy's lease renewals) and other sessions.
            tokio::task::spawn_blocking(move || prepare(&sql))
                .await
                .unwrap_or_else(|e| {
                    Prepared::Refused(Frame::error(ServerError::Internal(e.to_string())))
                })
        } else {
            prepare(&sql)
        };
        match prepared {
            Prepared::Dirk(stmt) => self.dirkdb_statement(stmt, out).await,
            Prepared::Refused(frame) => self.reply(out, frame).await,
            Prepared::Sql(sql) => self.run_sql(sql, out).await,
            Prepared::Database(stmt) => {
                let frame = match self.database_statement(stmt).await {
                    Ok(Reply::Text(text)) => Frame::Message(text),
                    Ok(Reply::Sql(sql)) => return self.run_sql(sql, out).await,
                    Err(e) => Frame::error(e),
                };
                self.reply(out, frame).await
            }
        }
    }

    /// MULTI_PRIMARY: `SHOW CONFLICTS` (this master's) and `RESOLVE CONFLICT` (one this master
    /// holds; the admin permission on its database is required).
    async fn conflict_statement<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        statement: Result<ConflictStatement, String>,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        let answer = match statement.map_err(ServerError::Syntax) {
            Ok(ConflictStatement::Show) => match show_conflicts(self.state.clone()).await {
                Ok(sql) => return self.run_sql(sql, out).await,
                Err(e) => Err(e),
            },
            Ok(ConflictStatement::Resolve {
                master,
                id,
                keep_remote,
            }) => self.resolve_conflict(master, id, keep_remote).await,
            Err(e) => Err(e),
        };
        let frame = match answer {
            Ok(text) => Frame::Message(text),
            Err(e) => Frame::error(e),
        };
        self.reply(out, frame).await
    }

    async fn resolve_conflict(
        &mut self,
        master: Option<String>,
        id: u64,
        keep_remote: bool,
    ) -> Result<String, ServerError> {
        let me = self.state.instance_id.clone();
        refuse_outside_multi_primary(&self.state, "RESOLVE CONFLICT")?;
        if let Some(m) = master.filter(|m| !m.eq_ignore_ascii_case(&me)) {
            return Err(ServerError::Refused(format!(
                "conflict {m}.{id} is held by {m}, not {me}: send the statement to {m}, or                  through the proxy"
            )));
        }
        self.refuse_in_transaction("RESOLVE CONFLICT")?;
        let state = self.state.clone();
        let database = blocking(move || {
            Ok(state
                .meta
                .with(|c| crate::replication::conflicts::held(c, &state.instance_id, id))?
                .map(|h| h.conflict.database))
        })
        .await?;
        if let Some(db) = &database {
            auth::check_admin(&self.auth, db)?;
        }
        let state = self.state.clone();
        blocking(move || {
            crate::replication::peer_conflicts::resolve_manually(&state, id, keep_remote)
        })
        .await
    }

    /// Sends a one-frame response and counts it.
    async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        out: &mut ServerConnection<S>,
        frame: Frame,
    ) -> Result<(), ConnectionError> {
        self.state.metrics.answered(frame.error_text().is_some());
        out.send(&frame).await
    }

    async fn database_statement(&mut self, stmt: DatabaseStatement) -> Result<Reply, ServerError> {
        match stmt {
            DatabaseStatement::Use(name) => self.use_database(&name).map(Reply::Text),
            DatabaseStatement::Create {
                name,
                if_not_exists,
            } => {
                auth::check_admin(&self.auth, &name)?;
                self.refuse_on_replica()?;
                self.refuse_in_transaction("CREATE DATABASE")?;
                let state = self.state.clone();
                let (n, owner) = (name.clone(), self.owner);
                blocking(move || state.create_database(owner, &n, if_not_exists)).await?;
                self.last_write
                    .store(self.state.write_path.committed(), Ordering::Release);
                Ok(Reply::Text(database_text(&name, "voaforona")))
            }
            DatabaseStatement::Drop { name, if_exists } => {
                auth::check_admin(&self.auth, &name)?;
                self.refuse_on_replica()?;
                self.refuse_in_transaction("DROP DATABASE")?;
                self.drop_database(name, if_exists).await.map(Reply::Text)
            }
            DatabaseStatement::ShowDatabases => {
                let names = auth::visible(&self.auth, self.state.catalog.names());
                Ok(Reply::Sql(show_databases_sql(&names)))
            }
            DatabaseStatement::ShowTables => Ok(Reply::Sql(SHOW_TABLES_SQL.to_string())),
            DatabaseStatement::ShowOwners => {
                let names = auth::visible(&self.auth, self.state.catalog.names());
                show_owners(self.state.clone(), names).await.map(Reply::Sql)
            }
        }
    }

    fn refuse_on_replica(&self) -> Result<(), ServerError> {
        match self.state.read_only_instance() {
            Some(id) => Err(ServerError::ReadOnlyReplica(id)),
            None => Ok(()),
        }
    }

    /// Database events get their own sequence number, which must not interleave with an open
    /// transaction's entries.
    fn refuse_in_transaction(&self, what: &'static str) -> Result<(), ServerError> {
        if self.current.as_ref().is_some_and(|c| c.in_transaction()) {
            return Err(ServerError::TransactionOpen(what));
        }
        Ok(())
    }

    fn use_database(&mut self, name: &str) -> Result<String, ServerError> {
        if self.current.as_ref().is_some_and(|c| c.in_transaction()) {
            return Err(ServerError::TransactionOpen("USE"));
        }
        auth::check_use(&self.auth, name)?;
        let db = self.state.catalog.get(name)?;
        self.release_current();
        self.current = Some(CurrentDatabase { db, conn: None });
        Ok(use_text(name))
    }

    async fn drop_database(
        &mut self,
        name: String,
        if_exists: bool,
    ) -> Result<String, ServerError> {
        let is_current = self.current.as_ref().is_some_and(|c| c.db.name() == name);
        if is_current {
            if self.current.as_ref().is_some_and(|c| c.in_transaction()) {
                return Err(ServerError::TransactionOpen("DROP DATABASE"));
            }
            self.current = None;
        }
        let state = self.state.clone();
        let (n, owner) = (name.clone(), self.owner);
        blocking(move || state.drop_database(owner, &n, if_exists)).await?;
        self.last_write
            .store(self.state.write_path.committed(), Ordering::Release);
        Ok(database_text(&name, "voafafa"))
    }

    fn release_current(&mut self) {
        if let Some(CurrentDatabase {
            db,
            conn: Some(conn),
        }) = self.current.take()
        {
            if std::mem::take(&mut self.changed_state) {
                drop(conn);
            } else {
                db.give_back(conn);
            }
        }
    }

    /// Takes the connection the next statement runs on.
    fn take_connection(&mut self) -> Result<(Connection, bool), ServerError> {
        if let Some(current) = &mut self.current {
            if current.db.is_dropped() {
                // A replica's full sync replaces every database: reattach to the new file.
                let name = current.db.name().to_string();
                match self.state.catalog.get(&name) {
                    Ok(db) if !current.in_transaction() => {
                        *current = CurrentDatabase { db, conn: None };
                    }
                    _ => {
                        self.current = None;
                        return Err(ServerError::DatabaseDropped(name));
                    }
                }
            }
            let conn = match current.conn.take() {
                Some(conn) => conn,
                None => current.db.lease()?,
            };
            return Ok((conn, false));
        }
        let conn = match self.scratch.take() {
            Some(conn) => conn,
            None => open_scratch()?,
        };
        Ok((conn, true))
    }

    fn put_connection(&mut self, conn: Connection, scratch: bool) {
        match (&mut self.current, scratch) {
            (Some(current), false) => current.conn = Some(conn),
            (_, true) => self.scratch = Some(conn),
            (None, false) => {}
        }
    }

    /// A statement in DirkDB's grammar: database statements here, the rest on the connection.
    async fn dirkdb_statement<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stmt: Arc<dirkdb::Statement>,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        let database_statement = match &*stmt {
            dirkdb::Statement::CreateDatabase(name) => Some(DatabaseStatement::Create {
                name: name.clone(),
                if_not_exists: false,
            }),
            dirkdb::Statement::DropDatabase(name) => Some(DatabaseStatement::Drop {
                name: name.clone(),
                if_exists: false,
            }),
            dirkdb::Statement::Use(name) => Some(DatabaseStatement::Use(name.clone())),
            dirkdb::Statement::ShowDatabases => {
                let names = auth::visible(&self.auth, self.state.catalog.names());
                let json = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
                let sql = format!("SELECT value AS fanasehoana FROM json_each('{json}')");
                let naming = dirkdb::translate::show_naming();
                return self.run_job(Job::Named { sql, naming }, out).await;
            }
            _ => None,
        };
        if let Some(db_stmt) = database_statement {
            let dropping = matches!(db_stmt, DatabaseStatement::Drop { .. });
            let frame = match self.database_statement(db_stmt).await {
                Ok(Reply::Text(_)) if dropping => Frame::Message(String::new()),
                Ok(Reply::Text(text)) => Frame::Message(text),
                Ok(Reply::Sql(sql)) => return self.run_sql(sql, out).await,
                Err(ServerError::UnknownDatabase(n)) => {
                    Frame::error(dirkdb::DirkError::DatabaseNotFound(n))
                }
                Err(ServerError::DatabaseExists(n)) => {
                    Frame::error(dirkdb::DirkError::DatabaseExists(n))
                }
                Err(e) => Frame::error(e),
            };
            return self.reply(out, frame).await;
        }
        let database = self.current.as_ref().map(|c| c.db.name().to_string());
        if database.is_none() && !matches!(*stmt, dirkdb::Statement::Select(_)) {
            return self
                .reply(out, Frame::error(dirkdb::DirkError::NoDatabase))
                .await;
        }
        self.run_job(Job::Dirk { stmt, database }, out).await
    }

    async fn run_sql<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: String,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        self.run_job(Job::Sql(sql), out).await
    }

    async fn run_job<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        job: Job,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        let (conn, scratch) = match self.take_connection() {
            Ok(c) => c,
            Err(e) => return self.reply(out, Frame::error(e)).await,
        };
        if let Job::Sql(sql) = &job {
            self.changed_state |=
                !scratch && dirkdb_core::sql::session_state::changes_connection_state(sql);
        }
        let options = RunOptions {
            page_rows: self.state.limits.page_rows,
            max_result_rows: self.state.limits.max_result_rows,
            read_only: self.state.read_only_instance(),
            no_database: scratch,
            schema_epoch: self.state.catalog.generation(),
            writer: match (&self.current, scratch) {
                (Some(current), false) => Some(Writer {
                    path: self.state.write_path.clone(),
                    owner: self.owner,
                    database: current.db.name().to_string(),
                    last_write: self.last_write.clone(),
                }),
                _ => None,
            },
            access: match (&self.current, scratch) {
                (Some(current), false) => Access::in_database(&self.auth, current.db.name()),
                _ => Access::default(),
            },
            ownership: self.state.settings.ownership.clone(),
            metrics: self.state.metrics.clone(),
        };
        let (tx, mut rx) = mpsc::channel(FRAME_CHANNEL);
        let interrupt = conn.get_interrupt_handle();
        let task = tokio::task::spawn_blocking(move || {
            let _ = run_job(&conn, &job, &options, &FrameSink(tx));
            conn
        });
        let mut written = Ok(());
        let mut failed = false;
        let mut client_here = true;
        let mut deadline = self.deadline.clone();
        let mut stopped_by_deadline = false;
        loop {
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else { break };
                    let frame = match frame.error_text() {
                        Some(reason) if stopped_by_deadline => {
                            Frame::error(ServerError::ShutdownInterrupted(reason.to_string()))
                        }
                        _ => frame,
                    };
                    failed = frame.error_text().is_some();
                    written = out.write_frame(&frame).await;
                    if written.is_err() {
                        break;
                    }
                }
                // A client that leaves while its statement runs (a proxy giving up on a
                // timeout) gets the statement interrupted, which rolls it back. Reading ahead
                // stops at READ_AHEAD_STATEMENTS complete statements: piped statements wait in
                // the socket.
                more = out.read_more(), if client_here && out.statements_buffered() < READ_AHEAD_STATEMENTS => {
                    if !matches!(more, Ok(true)) {
                        client_here = false;
                        interrupt.interrupt();
                    }
                }
                _ = deadline.passed(), if !stopped_by_deadline => {
                    stopped_by_deadline = true;
                    interrupt.interrupt();
                }
            }
        }
        self.state.metrics.answered(failed);
        drop(rx);
        match task.await {
            Ok(conn) => self.put_connection(conn, scratch),
            Err(e) => {
                // The worker's connection died with it (rolling back), so the gate is free.
                self.state.write_path.release(self.owner);
                tracing::error!(error = %e, "statement worker failed");
                if written.is_ok() {
                    written = out.write_frame(&Frame::error(ServerError::from(e))).await;
                }
            }
        }
        written?;
        out.flush().await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing an open transaction's connection rolls it back; only then may others write.
        self.release_current();
        self.state.write_path.release(self.owner);
    }
}

enum Reply {
    Text(String),
    Sql(String),
}

/// SHOW TABLES: the user's tables of the current database, DirkDB's bookkeeping hidden.
const SHOW_TABLES_SQL: &str = "SELECT name AS \"table\" FROM sqlite_schema \
     WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
     AND name NOT LIKE '\\_dirk%' ESCAPE '\\' AND name <> 'dirkdb_domains' ORDER BY name";

/// SHOW DATABASES as a query, so it is paged like any result. Names are validated to
/// `[A-Za-z0-9_-]`, so they need no quoting inside the JSON literal.
fn show_databases_sql(names: &[String]) -> String {
    let json = serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
    format!("SELECT value AS \"database\" FROM json_each('{json}') ORDER BY value")
}

/// An error naming `what` outside MULTI_PRIMARY.
fn refuse_outside_multi_primary(state: &ServerState, what: &str) -> Result<(), ServerError> {
    if state.settings.ownership.active() {
        return Ok(());
    }
    Err(ServerError::Refused(format!(
        "{what}: this instance is not a master of a MULTI_PRIMARY topology (routing.writes.mode)"
    )))
}

/// MULTI_PRIMARY: `SHOW CONFLICTS`, the conflicts this master recorded, as a query.
async fn show_conflicts(state: Arc<ServerState>) -> Result<String, ServerError> {
    refuse_outside_multi_primary(&state, "SHOW CONFLICTS")?;
    let listed = blocking(move || crate::replication::conflicts::listed_json(&state)).await?;
    Ok(dirkdb_core::sql::conflicts::show_sql(&listed))
}

/// MULTI_PRIMARY: `SHOW OWNERS` over `names` (the databases the client may see).
async fn show_owners(state: Arc<ServerState>, names: Vec<String>) -> Result<String, ServerError> {
    use crate::owners::{owned_objects, show_owners_sql};
    if !state.settings.ownership.active() {
        return Err(ServerError::Refused(
            "SHOW OWNERS: this instance is not a master of a MULTI_PRIMARY topology \
             (routing.writes.mode)"
                .into(),
        ));
    }
    let objects = blocking(move || owned_objects(&state, &names)).await?;
    Ok(show_owners_sql(&objects))
}

/// Statements longer than this are prepared on a blocking thread (see [`prepare`]).
const OFF_RUNTIME_BYTES: usize = 64 * 1024;

/// What a statement's text turned out to be, before anything runs.
enum Prepared {
    /// DirkDB's grammar.
    Dirk(Arc<dirkdb::Statement>),
    /// Refused before it ran (a DirkDB error, too deep, a bad database statement).
    Refused(Frame),
    /// `USE`, `CREATE DATABASE`, `SHOW DATABASES`, …, answered by the server itself.
    Database(DatabaseStatement),
    /// SQL for SQLite (English, or the mixed Malagasy form translated).
    Sql(String),
}

/// Routes, translates and checks a statement: CPU work proportional to its length, and nothing
/// else (no lock, no I/O), so it may run on a blocking thread.
fn prepare(sql: &str) -> Prepared {
    match dirkdb::route(sql) {
        Route::Dirk(stmt) => return Prepared::Dirk(stmt),
        Route::Error(e) => return Prepared::Refused(Frame::error(e)),
        Route::English | Route::Mixed => {}
    }
    let sql = translate(sql);
    if let Err(e) = dirkdb_core::sql::limits::check_expression_depth(&sql) {
        return Prepared::Refused(Frame::error(e));
    }
    match database_statement::parse(&sql) {
        None => Prepared::Sql(sql),
        Some(Err(msg)) => Prepared::Refused(Frame::error(ServerError::Syntax(msg))),
        Some(Ok(stmt)) => Prepared::Database(stmt),
    }
}
