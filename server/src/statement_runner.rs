//! Runs one SQL statement on a SQLite connection and turns its outcome into frames.
//!
//! It runs on a blocking thread and hands frames to the session's async writer through a bounded
//! channel ([`FrameSink`]), so a slow client slows the scan instead of filling memory, and a client
//! that leaves stops it. Results are paged: up to [`WINDOW_PAGES`] pages are read ahead; a result
//! that ends within that window is sent with its exact page count and no extra work. A larger one
//! is counted first with `SELECT count(*) FROM (…)` — on the same connection while the scan is
//! open, so both see the same snapshot — then streamed page by page: the server never holds more
//! than the window, whatever the result's size. (Only a statement whose rows change between two
//! evaluations of one snapshot, such as `WHERE random() < 0.5`, can differ from its count; pages
//! then go on past the announced total or are padded with empty ones, and rows are never lost.)

use std::sync::Arc;

use dirkdb_core::frame::{Column, Frame, PageFrame, RelationPage};
use dirkdb_core::value;
use rusqlite::types::ValueRef;
use rusqlite::{CachedStatement, Connection, Statement};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::catalog::as_internal;
use dirkdb_core::sql::classify::leading_words;
use dirkdb_core::sql::dirkdb::{
    self, messages, Answer, Naming, Schema, Statement as DirkStatement,
};

use crate::database_statement::{schema_object, success_text};
use crate::error::ServerError;
use crate::oplog::{capture, store, Op};
use crate::ownership::{self, Ownership};
use crate::statement_shape;
use crate::write_path::WritePath;

/// Pages read ahead before a result is counted.
pub(crate) const WINDOW_PAGES: usize = 8;

/// What the runner needs to know besides the SQL.
#[derive(Clone)]
pub(crate) struct RunOptions {
    /// Rows per page.
    pub page_rows: usize,
    /// Largest result allowed (0 = no limit).
    pub max_result_rows: u64,
    /// Set on a replica: statements that would write are refused.
    pub read_only: Option<String>,
    /// The session has no current database: errors get a hint to USE one.
    pub no_database: bool,
    /// The instance's writer gate and this session's owner id (`None` without a database).
    pub writer: Option<Writer>,
    /// What the session's user may do in the database (see [`crate::auth`]).
    pub access: crate::auth::Access,
    /// Changes whenever a database is created, dropped or replaced (the catalog's generation):
    /// part of the key DirkDB plans are remembered by.
    pub schema_epoch: u64,
    /// MULTI_PRIMARY: the objects this master owns (DirkDB's domains are checked here; tables
    /// and views by the connection's authorizer).
    pub ownership: Arc<Ownership>,
    /// The server's counters (statements run from a cached shape are counted here).
    pub metrics: Arc<crate::state::ServerMetrics>,
}

/// A session's handle on the writer gate.
#[derive(Clone)]
pub(crate) struct Writer {
    /// The gate and committed sequence.
    pub path: Arc<WritePath>,
    /// The session's owner id.
    pub owner: u64,
    /// The database the session writes to (entries are tagged with it).
    pub database: String,
    /// Set to the position of the session's last committed write (`DIRK POSITION`).
    pub last_write: Arc<std::sync::atomic::AtomicU64>,
}

/// The client went away while frames were being sent.
#[derive(Debug)]
pub(crate) struct ClientGone;

/// The blocking side of the channel to the session's writer.
pub(crate) struct FrameSink(pub mpsc::Sender<Frame>);

impl FrameSink {
    /// Sends a frame, waiting while the writer is behind.
    pub(crate) fn emit(&self, frame: Frame) -> Result<(), ClientGone> {
        self.0.blocking_send(frame).map_err(|_| ClientGone)
    }
}

enum RunError {
    Failed(ServerError),
    /// A DirkDB statement refused before SQLite ran it, in DirkDB's words.
    Dirk(String),
    Gone,
}

impl From<rusqlite::Error> for RunError {
    fn from(e: rusqlite::Error) -> Self {
        RunError::Failed(e.into())
    }
}

impl From<ServerError> for RunError {
    fn from(e: ServerError) -> Self {
        RunError::Failed(e)
    }
}

impl From<ClientGone> for RunError {
    fn from(_: ClientGone) -> Self {
        RunError::Gone
    }
}

/// The last frame of a response, sent only once the statement's transaction is settled.
enum Last {
    Text(String),
    RelationOk,
}

/// Runs `sql` and sends its whole response: pages and `OK`, a success text, or an error. A
/// write is acknowledged only after it committed and its oplog position was published.
pub(crate) fn run_statement(
    conn: &Connection,
    sql: &str,
    options: &RunOptions,
    sink: &FrameSink,
) -> Result<(), ClientGone> {
    ownership::take_refusal();
    let ends = !conn.is_autocommit() && ends_transaction(sql);
    let outcome = ownership::run_statement_of_client(conn.is_autocommit(), || {
        execute(conn, sql, options, sink, None)
    });
    let outcome = say_where_a_failed_commit_left(conn, ends, outcome);
    settle_and_answer(conn, outcome, options, sink, |e| explain(e, options))
}

/// True for the statements that commit an open transaction (`COMMIT`, `END`, and `RELEASE`,
/// which commits when its savepoint is the outermost).
fn ends_transaction(sql: &str) -> bool {
    matches!(
        leading_words(sql, 1).first().map(String::as_str),
        Some("COMMIT" | "END" | "RELEASE")
    )
}

/// When a statement that was to end the open transaction (`ends`) failed, says in its error
/// whether the transaction was rolled back (the commit hook refused it: brought back to
/// autocommit, see [`forget_refused_commit`]) or is still open (SQLITE_BUSY: the client may
/// retry or roll back), so the client, and a proxy in front, know which.
fn say_where_a_failed_commit_left(
    conn: &Connection,
    ends: bool,
    outcome: Result<Last, RunError>,
) -> Result<Last, RunError> {
    match outcome {
        Err(RunError::Failed(cause))
            if ends && !matches!(cause, ServerError::CommitFailed { .. }) =>
        {
            forget_refused_commit_of(conn, &cause);
            Err(RunError::Failed(ServerError::CommitFailed {
                cause: Box::new(cause),
                rolled_back: conn.is_autocommit(),
            }))
        }
        outcome => outcome,
    }
}

/// Settles the statement's write (if any), then sends its last frame; `failed` words a
/// failure.
fn settle_and_answer(
    conn: &Connection,
    outcome: Result<Last, RunError>,
    options: &RunOptions,
    sink: &FrameSink,
    failed: impl FnOnce(ServerError) -> String,
) -> Result<(), ClientGone> {
    forget_refused_commit(conn, &outcome);
    let outcome = leased(owned(outcome), options);
    if let Some(writer) = &options.writer {
        settle_write(conn, writer);
    }
    match outcome {
        Ok(Last::Text(text)) => sink.emit(Frame::Message(text)),
        Ok(Last::RelationOk) => sink.emit(Frame::Message("OK".into())),
        Err(RunError::Gone) => Err(ClientGone),
        Err(RunError::Failed(e)) => sink.emit(Frame::error(failed(e))),
        Err(RunError::Dirk(text)) => sink.emit(Frame::error(text)),
    }
}

/// What a session asks the runner to do with one statement.
pub(crate) enum Job {
    /// SQL as SQLite reads it (English or today's mixed form, translated).
    Sql(String),
    /// A statement in DirkDB's grammar, run in the session's current database.
    Dirk {
        /// The parsed statement.
        stmt: Arc<DirkStatement>,
        /// The current database (DirkDB names it in some error texts); none for a select
        /// that reads no table.
        database: Option<String>,
    },
    /// SQL whose relation is named the DirkDB way (`asehoy ny tahiry`).
    Named {
        /// The query.
        sql: String,
        /// The relation's and columns' names.
        naming: Naming,
    },
}

/// Runs one job and sends its whole response.
pub(crate) fn run_job(
    conn: &Connection,
    job: &Job,
    options: &RunOptions,
    sink: &FrameSink,
) -> Result<(), ClientGone> {
    let (outcome, dirk) = match job {
        Job::Sql(sql) => return run_statement(conn, sql, options, sink),
        Job::Dirk { stmt, database } => {
            ownership::take_refusal();
            let outcome = execute_dirkdb(conn, stmt, database.as_deref(), options, sink);
            (outcome, Some((stmt, database)))
        }
        Job::Named { sql, naming } => {
            ownership::take_refusal();
            let pages = dirkdb_pages(options);
            (execute(conn, sql, &pages, sink, Some(naming)), None)
        }
    };
    settle_and_answer(conn, outcome, options, sink, |e| match (dirk, &e) {
        (Some((stmt, db)), ServerError::Sqlite(sqlite)) => {
            let reason = match sqlite {
                rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
                rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
                other => other.to_string(),
            };
            let occurrences = |name: &str| occurrences(conn, stmt, name);
            messages::from_sqlite(stmt, db.as_deref().unwrap_or(""), &reason, &occurrences)
        }
        _ => explain(e, options),
    })
}

/// An error caused by the ownership check (SQLite says only "not authorized") becomes the
/// check's own reason, naming the object and its owner.
fn owned(outcome: Result<Last, RunError>) -> Result<Last, RunError> {
    match outcome {
        Err(RunError::Failed(ServerError::Sqlite(_))) => match ownership::take_refusal() {
            Some(reason) => Err(ServerError::Refused(reason).into()),
            None => outcome,
        },
        // A COMMIT the commit hook refused for ownership (`ownership::TransactionWrites`).
        Err(RunError::Failed(ServerError::CommitFailed { cause, rolled_back }))
            if matches!(*cause, ServerError::Sqlite(_)) =>
        {
            let cause = match ownership::take_refusal() {
                Some(reason) => Box::new(ServerError::Refused(reason)),
                None => cause,
            };
            Err(ServerError::CommitFailed { cause, rolled_back }.into())
        }
        other => other,
    }
}

/// A commit the commit hook refused because this primary's write lease (or its etcd lease)
/// ended after the write had taken the gate: SQLite says only "constraint failed"; the lease's
/// own refusal says why and what to do. (Ownership refusals were explained by [`owned`].)
fn leased(outcome: Result<Last, RunError>, options: &RunOptions) -> Result<Last, RunError> {
    let refused_by_hook = |e: &ServerError| {
        matches!(e, ServerError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_COMMITHOOK)
    };
    let Some(writer) = &options.writer else {
        return outcome;
    };
    match outcome {
        Err(RunError::Failed(e)) if refused_by_hook(&e) => {
            match writer.path.lease().check_write() {
                Err(why) => Err(why.into()),
                Ok(()) => Err(RunError::Failed(e)),
            }
        }
        Err(RunError::Failed(ServerError::CommitFailed { cause, rolled_back }))
            if refused_by_hook(&cause) =>
        {
            let cause = match writer.path.lease().check_write() {
                Err(why) => Box::new(why),
                Ok(()) => cause,
            };
            Err(ServerError::CommitFailed { cause, rolled_back }.into())
        }
        other => other,
    }
}

/// MULTI_PRIMARY: a DirkDB domain is created or dropped only by its owner; true for a domain
/// statement (whose row in the domain table is then the domain's, see `ownership`).
fn check_domain_owner(
    stmt: &DirkStatement,
    database: Option<&str>,
    options: &RunOptions,
) -> Result<bool, RunError> {
    use dirkdb_core::rendezvous::{ObjectKind, ObjectRef};
    use dirkdb_core::sql::dirkdb::ast::ObjectKind as DirkKind;
    let name = match stmt {
        DirkStatement::CreateDomain { name, .. } => name,
        DirkStatement::Drop(DirkKind::Domain, name) => name,
        _ => return Ok(false),
    };
    let Some(db) = database else {
        return Ok(false);
    };
    options
        .ownership
        .check(&ObjectRef::object(db, ObjectKind::Domain, name))
        .map_err(ServerError::Refused)?;
    Ok(true)
}

/// Plans a DirkDB statement against the current schema and runs its steps; the answer is
/// DirkDB's text or a relation named DirkDB's way.
fn execute_dirkdb(
    conn: &Connection,
    stmt: &Arc<DirkStatement>,
    database: Option<&str>,
    options: &RunOptions,
    sink: &FrameSink,
) -> Result<Last, RunError> {
    if check_domain_owner(stmt, database, options)? {
        return ownership::as_domain_statement(|| run_dirkdb(conn, stmt, database, options, sink));
    }
    run_dirkdb(conn, stmt, database, options, sink)
}

fn run_dirkdb(
    conn: &Connection,
    stmt: &Arc<DirkStatement>,
    database: Option<&str>,
    options: &RunOptions,
    sink: &FrameSink,
) -> Result<Last, RunError> {
    let schema = ConnSchema { conn, database };
    let plan = dirkdb::plan_memoized(stmt, &schema, options.schema_epoch)
        .map_err(|e| RunError::Dirk(e.to_string()))?;
    let options = &dirkdb_pages(options);
    let naming = match &plan.answer {
        Answer::Relation(naming) => Some(naming),
        Answer::Text(_) => None,
    };
    let mut last = Last::RelationOk;
    for step in &plan.steps {
        last = execute(conn, step, options, sink, naming)?;
    }
    Ok(match plan.answer {
        Answer::Text(text) => Last::Text(text),
        Answer::Relation(_) => last,
    })
}

/// How many columns named `name` the first relation of `stmt` holding it twice or more has
/// (SQLite's ambiguity is case-insensitive, so is the count).
fn occurrences(conn: &Connection, stmt: &DirkStatement, name: &str) -> Option<usize> {
    let bare = name.rsplit('.').next().unwrap_or(name);
    dirkdb::translate::name_scopes(stmt).iter().find_map(|sql| {
        let prepared = conn.prepare(sql).ok()?;
        let n = prepared
            .column_names()
            .filter(|c| c.eq_ignore_ascii_case(bare))
            .count();
        (n >= 2).then_some(n)
    })
}

/// DirkDB's answers come in DirkDB's pages of [`dirkdb::PAGE_ROWS`] rows.
fn dirkdb_pages(options: &RunOptions) -> RunOptions {
    RunOptions {
        page_rows: dirkdb::PAGE_ROWS,
        ..options.clone()
    }
}

/// The current database's schema as DirkDB's translator asks about it.
struct ConnSchema<'a> {
    conn: &'a Connection,
    database: Option<&'a str>,
}

impl Schema for ConnSchema<'_> {
    fn database(&self) -> Option<&str> {
        self.database
    }

    fn domain(&self, name: &str) -> Option<String> {
        if !self.has_domain_table() {
            return None;
        }
        let sql = format!(
            "SELECT definition FROM {} WHERE name = ?1",
            dirkdb::translate::DOMAIN_TABLE
        );
        self.conn.query_row(&sql, [name], |r| r.get(0)).ok()
    }

    fn has_domain_table(&self) -> bool {
        self.object_type(dirkdb::translate::DOMAIN_TABLE).as_deref() == Some("table")
    }

    fn domain_exists(&self, name: &str) -> bool {
        self.domain(name).is_some()
    }

    fn version(&self) -> Option<i64> {
        let pragma = |sql: &str| -> Option<i64> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .ok()
        };
        // Temporary objects are the connection's own, and can hide the database's.
        if pragma("PRAGMA temp.schema_version")? != 0 {
            return None;
        }
        self.database?;
        pragma("PRAGMA main.schema_version")
    }

    fn prepare_error(&self, sql: &str) -> Option<String> {
        match self.conn.prepare(sql) {
            Ok(_) => None,
            Err(rusqlite::Error::SqlInputError { msg, .. }) => Some(msg),
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) => Some(msg),
            Err(e) => Some(e.to_string()),
        }
    }

    fn columns(&self, sql: &str) -> Option<dirkdb::translate::Columns> {
        let stmt = self.conn.prepare(sql).ok()?;
        Some(
            columns_of(&stmt)
                .into_iter()
                .map(|c| (c.name, c.origin))
                .collect(),
        )
    }

    fn object_type(&self, name: &str) -> Option<String> {
        self.conn
            .query_row(
                "SELECT type FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE",
                [name],
                |r| r.get(0),
            )
            .ok()
    }
}

/// A commit the commit hook refused (this primary's write lease ended, see `catalog.rs`) rolls
/// the whole transaction back, and the statement fails. But when that commit was the RELEASE
/// of the outermost savepoint (a write with RETURNING, a schema change outside a transaction,
/// a client's RELEASE), SQLite still counts a transaction as open on the connection: every
/// later statement of the session would run inside it, never committed (and never published,
/// the writer gate never given back), while each was answered as done. The connection is
/// brought back to autocommit, as the refused commit left its data.
fn forget_refused_commit(conn: &Connection, outcome: &Result<Last, RunError>) {
    if let Err(RunError::Failed(error)) = outcome {
        forget_refused_commit_of(conn, error);
    }
}

/// [`forget_refused_commit`] for a statement that failed with `error`.
fn forget_refused_commit_of(conn: &Connection, error: &ServerError) {
    let ServerError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) = error else {
        return;
    };
    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_COMMITHOOK && !conn.is_autocommit() {
        if let Err(error) = conn.execute_batch("ROLLBACK") {
            tracing::error!(%error, "cannot end the transaction a refused commit left open");
        }
    }
}

/// When the session's transaction is over, publishes what it committed (its entries join the
/// backlog) and frees the gate; with group commit, frees the gate first and then waits until a
/// sync of the database's WAL made the commit durable (see `write_path`'s doc), so the answer
/// to the client still comes after the commit is on disk.
fn settle_write(conn: &Connection, writer: &Writer) {
    if !writer.path.holds(writer.owner) || !conn.is_autocommit() {
        return;
    }
    let before = writer.path.written();
    let (entries, upto) = match store::read_file_entries(conn, &writer.database, before, usize::MAX)
    {
        Ok(entries) => {
            let upto = entries.last().map_or(before, |e| e.seq);
            (entries, upto)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the committed entries back");
            (Vec::new(), store::max_seq(conn).unwrap_or(before))
        }
    };
    if upto > before {
        writer
            .last_write
            .store(upto, std::sync::atomic::Ordering::Release);
    }
    writer.path.commit_entries(entries, upto, wal_of(conn));
    writer.path.release(writer.owner);
    writer.path.make_durable(upto);
}

/// The WAL file of the database `conn` writes (SQLite names it after the database file).
fn wal_of(conn: &Connection) -> std::path::PathBuf {
    let mut wal = std::ffi::OsString::from(conn.path().unwrap_or_default());
    wal.push("-wal");
    wal.into()
}

/// Adds what the user can do about the errors whose SQLite text alone is puzzling.
fn explain(error: ServerError, options: &RunOptions) -> String {
    let text = error.to_string();
    if options.no_database && text.starts_with("no such table") {
        return format!("{text} (no database selected: USE <database> first)");
    }
    if text == "not authorized" {
        return format!(
            "{text}: ATTACH and DETACH are refused (every database is its own file: USE it), \
             and DirkDB's own `_dirk` tables and triggers cannot be changed"
        );
    }
    text
}

fn execute(
    conn: &Connection,
    sql: &str,
    options: &RunOptions,
    sink: &FrameSink,
    naming: Option<&Naming>,
) -> Result<Last, RunError> {
    if schema_object(sql)
        .is_some_and(|o| o.kind == "TRIGGER" && crate::catalog::is_reserved(&o.name))
    {
        return Err(
            ServerError::Refused("DirkDB's `_dirk` triggers cannot be changed".into()).into(),
        );
    }
    let mut stmt = prepare(conn, sql, options)?;
    let words = leading_words(sql, 2);
    let writes = !stmt.readonly()
        || (words.first().map(String::as_str) == Some("BEGIN")
            && matches!(
                words.get(1).map(String::as_str),
                Some("IMMEDIATE" | "EXCLUSIVE")
            ));
    options
        .access
        .check(writes, words.first().map(String::as_str))?;
    if writes {
        if let Some(instance) = &options.read_only {
            return Err(ServerError::ReadOnlyReplica(instance.clone()).into());
        }
        if words.first().map(String::as_str) == Some("VACUUM") {
            return Err(ServerError::Refused(
                "VACUUM is refused: it can renumber the rowids that replicas use as row keys"
                    .into(),
            )
            .into());
        }
        if let Some(writer) = &options.writer {
            writer.path.acquire_write(writer.owner)?;
        }
    }
    let schema_change = writes
        && options.writer.is_some()
        && matches!(
            words.first().map(String::as_str),
            Some("CREATE" | "DROP" | "ALTER")
        );
    if schema_change {
        return run_schema_change(conn, stmt, sql).map(Last::Text);
    }
    if stmt.column_count() == 0 {
        stmt.raw_execute()?;
        return Ok(Last::Text(success_text(sql)));
    }
    if !writes {
        stream_rows(conn, &mut stmt, sql, options, sink, naming)?;
        return Ok(Last::RelationOk);
    }
    // A write that returns rows (RETURNING) makes its changes at the first step: if the
    // response then fails (too many rows, client gone), nothing of it must stay.
    let outermost = conn.is_autocommit();
    conn.execute_batch("SAVEPOINT _dirk_returning")?;
    let streamed = stream_rows(conn, &mut stmt, sql, options, sink, naming);
    drop(stmt);
    end_savepoint(conn, "_dirk_returning", streamed.is_ok(), outermost)?;
    streamed.map(|()| Last::RelationOk)
}

/// A client's statement compiled: from its text, or its shape taken from the connection's
/// statement cache with the values bound ([`crate::statement_shape`]).
enum Prepared<'c> {
    Text(Statement<'c>),
    Shaped(CachedStatement<'c>),
}

impl<'c> std::ops::Deref for Prepared<'c> {
    type Target = Statement<'c>;

    fn deref(&self) -> &Statement<'c> {
        match self {
            Prepared::Text(s) => s,
            Prepared::Shaped(s) => s,
        }
    }
}

impl std::ops::DerefMut for Prepared<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Prepared::Text(s) => s,
            Prepared::Shaped(s) => s,
        }
    }
}

/// Compiles `sql`, through its shape when it has one that compiles (see
/// [`crate::statement_shape`]; never under MULTI_PRIMARY, whose ownership check is the
/// authorizer's, at compile time).
fn prepare<'c>(
    conn: &'c Connection,
    sql: &str,
    options: &RunOptions,
) -> Result<Prepared<'c>, RunError> {
    if !options.ownership.active() {
        if let Some(shape) = statement_shape::parameterize(sql) {
            if let Ok(mut stmt) = conn.prepare_cached(&shape.text) {
                if shape.bind(&mut stmt).is_ok() {
                    options.metrics.shaped_one();
                    return Ok(Prepared::Shaped(stmt));
                }
            }
        }
    }
    Ok(Prepared::Text(conn.prepare(sql)?))
}

/// Runs CREATE/DROP/ALTER and records it as an oplog entry in the same transaction, with the
/// capture triggers brought up to date. Changes to TEMP objects are not recorded.
fn run_schema_change(
    conn: &Connection,
    mut stmt: Prepared<'_>,
    sql: &str,
) -> Result<String, RunError> {
    // A savepoint also inside an explicit transaction: a failed ALTER must not leave the
    // table's capture triggers dropped.
    let outermost = conn.is_autocommit();
    conn.execute_batch("SAVEPOINT _dirk_ddl")?;
    let result = (|| -> Result<(), RunError> {
        let before = schema_version(conn)?;
        if let Some(o) = schema_object(sql).filter(|o| o.verb == "ALTER") {
            as_internal(|| capture::drop_triggers_for(conn, &o.name))?;
        }
        stmt.raw_execute()?;
        if schema_version(conn)? != before {
            as_internal(|| record_schema_change(conn, sql))?;
        }
        Ok(())
    })();
    drop(stmt);
    end_savepoint(conn, "_dirk_ddl", result.is_ok(), outermost)?;
    result.map(|()| success_text(sql))
}

/// Releases a savepoint, first rolling back to it when the work failed. The RELEASE of an
/// `outermost` savepoint (opened outside a transaction) commits; when that commit fails
/// (SQLITE_BUSY leaves the transaction open, a refused commit leaves SQLite counting one as
/// open), the transaction is rolled back, so the statement leaves nothing behind and the session
/// is back outside a transaction, and the error says so.
fn end_savepoint(
    conn: &Connection,
    name: &str,
    keep: bool,
    outermost: bool,
) -> Result<(), ServerError> {
    let ended = if keep {
        conn.execute_batch(&format!("RELEASE {name}"))
    } else {
        conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))
    };
    let Err(cause) = ended else {
        return Ok(());
    };
    if !outermost {
        return Err(cause.into());
    }
    if !conn.is_autocommit() {
        if let Err(error) = conn.execute_batch("ROLLBACK") {
            tracing::error!(%error, "cannot roll back a statement whose commit failed");
        }
    }
    Err(ServerError::CommitFailed {
        cause: Box::new(cause.into()),
        rolled_back: conn.is_autocommit(),
    })
}

fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA main.schema_version", [], |r| r.get(0))
}

fn record_schema_change(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    capture::reconcile_triggers(conn)?;
    let object = schema_object(sql);
    let name = object.as_ref().map(|o| o.name.clone()).unwrap_or_default();
    let created_table = object
        .as_ref()
        .filter(|o| o.verb == "CREATE" && o.kind == "TABLE")
        .map(|o| o.name.clone());
    // CREATE TABLE … AS SELECT: replicate the table's definition and then its rows, which no
    // trigger saw, so values from random() or datetime('now') arrive as they are here.
    let canonical: Option<String> = match &created_table {
        Some(table) => conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .ok(),
        None => None,
    };
    let ddl = canonical.as_deref().unwrap_or(sql);
    let data = serde_json::json!({ "sql": ddl }).to_string();
    capture::record(conn, &name, Op::Ddl, Some(&data))?;
    if let Some(table) = created_table {
        capture::record_existing_rows(conn, &table)?;
    }
    Ok(())
}

fn stream_rows(
    conn: &Connection,
    stmt: &mut Statement<'_>,
    sql: &str,
    options: &RunOptions,
    sink: &FrameSink,
    naming: Option<&Naming>,
) -> Result<(), RunError> {
    let mut columns = columns_of(stmt);
    let mut name = columns.first().and_then(|c| c.origin.clone());
    if let Some(naming) = naming {
        name = Some(naming.relation.clone());
        if let Some(named) = naming.columns.as_ref().filter(|n| n.len() == columns.len()) {
            for (column, (n, origin)) in columns.iter_mut().zip(named) {
                column.name = n.clone();
                column.origin = origin.clone();
            }
        }
    }
    let width = columns.len();
    let readonly = stmt.readonly();
    let mut rows = stmt.raw_query();
    let window = options.page_rows.saturating_mul(WINDOW_PAGES);
    let mut ahead = Vec::new();
    let mut exhausted = false;
    while ahead.len() < window {
        match rows.next()? {
            Some(row) => ahead.push(row_values(row, width)?),
            None => {
                exhausted = true;
                break;
            }
        }
    }
    let total_rows = if exhausted {
        ahead.len() as u64
    } else if let Some(n) = readonly.then(|| count_rows(conn, sql)).flatten() {
        n
    } else {
        // Not countable (a write with RETURNING, a PRAGMA): read it all, within the limit.
        while let Some(row) = rows.next()? {
            ahead.push(row_values(row, width)?);
            check_limit(ahead.len() as u64, options)?;
        }
        exhausted = true;
        ahead.len() as u64
    };
    check_limit(total_rows, options)?;
    let mut pager = Pager::new(name, columns, total_rows, options.page_rows);
    // DirkDB's answers write their doubles as DirkDB's Java server does (`1.2345678E7`).
    pager.java_numbers = naming.is_some();
    for row in ahead {
        pager.push(row, sink)?;
    }
    if !exhausted {
        loop {
            match rows.next() {
                Ok(Some(row)) => pager.push(row_values(row, width)?, sink)?,
                Ok(None) => break,
                Err(e) => return pager.abort(e.into(), sink),
            }
        }
    }
    pager.finish(sink)
}

fn check_limit(rows: u64, options: &RunOptions) -> Result<(), RunError> {
    if options.max_result_rows > 0 && rows > options.max_result_rows {
        return Err(RunError::Failed(ServerError::TooManyRows {
            rows,
            limit: options.max_result_rows,
        }));
    }
    Ok(())
}

fn count_rows(conn: &Connection, sql: &str) -> Option<u64> {
    let count_sql = format!("SELECT count(*) FROM ({sql}\n)");
    conn.query_row(&count_sql, [], |r| r.get::<_, i64>(0))
        .ok()
        .map(|n| n.max(0) as u64)
}

fn columns_of(stmt: &Statement<'_>) -> Vec<Column> {
    stmt.columns_with_metadata()
        .map(|c| Column {
            name: c.name().to_string(),
            origin: c.table_name().map(str::to_string),
        })
        .collect()
}

fn row_values(row: &rusqlite::Row<'_>, width: usize) -> Result<Vec<Value>, RunError> {
    let mut values = Vec::with_capacity(width);
    for i in 0..width {
        values.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::from(n),
            ValueRef::Real(f) => value::real(f),
            ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
            // DirkDB's boolean values (see `dirkdb_core::sql::dirkdb::values`) are answered as such.
            ValueRef::Blob(b) => {
                dirkdb::values::blob_bool(b).map_or_else(|| value::blob(b), Value::Bool)
            }
        });
    }
    Ok(values)
}

/// Cuts rows into pages and sends each as soon as it is full.
struct Pager {
    java_numbers: bool,
    name: Option<String>,
    columns: Vec<Column>,
    total_pages: u64,
    page_rows: usize,
    sent: u64,
    rows: Vec<Vec<Value>>,
}

impl Pager {
    fn new(name: Option<String>, columns: Vec<Column>, total_rows: u64, page_rows: usize) -> Pager {
        let per_page = page_rows.max(1) as u64;
        Pager {
            java_numbers: false,
            name,
            columns,
            total_pages: total_rows.div_ceil(per_page).max(1),
            page_rows: page_rows.max(1),
            sent: 0,
            rows: Vec::with_capacity(page_rows.min(4096)),
        }
    }

    fn push(&mut self, row: Vec<Value>, sink: &FrameSink) -> Result<(), RunError> {
        self.rows.push(row);
        if self.rows.len() >= self.page_rows {
            self.send_page(sink)?;
        }
        Ok(())
    }

    fn send_page(&mut self, sink: &FrameSink) -> Result<(), RunError> {
        self.sent += 1;
        let page = RelationPage {
            name: self.name.clone(),
            page: self.sent,
            total_pages: self.total_pages.max(self.sent),
            columns: self.columns.clone(),
            rows: std::mem::take(&mut self.rows),
        };
        let frame = if self.java_numbers {
            PageFrame::from_page_java(&page)
        } else {
            PageFrame::from_page(&page)
        }
        .map_err(|e| RunError::Failed(ServerError::Internal(e.to_string())))?;
        sink.emit(Frame::Page(frame))?;
        Ok(())
    }

    fn finish(mut self, sink: &FrameSink) -> Result<(), RunError> {
        while !self.rows.is_empty() || self.sent < self.total_pages {
            self.send_page(sink)?;
        }
        sink.emit(Frame::RelationEnd)?;
        Ok(())
    }

    /// A row failed after pages went out: close the relation; the caller sends the error.
    fn abort(mut self, error: ServerError, sink: &FrameSink) -> Result<(), RunError> {
        if !self.rows.is_empty() {
            self.send_page(sink)?;
        }
        sink.emit(Frame::RelationEnd)?;
        Err(RunError::Failed(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dirkdb_core::sql::transaction::{FAILED_COMMIT_ROLLED_BACK, FAILED_COMMIT_STILL_OPEN};

    /// #14: the RELEASE that ends a write with RETURNING, refused by the commit hook (the lease
    /// ended), used to leave the connection inside a transaction: the session's next writes ran
    /// in it, never committed, and were answered as done (acknowledged writes lost in the fault
    /// harness).
    #[test]
    fn a_refused_release_leaves_no_transaction_open() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE c(n INT); INSERT INTO c VALUES (0);")
            .unwrap();
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hook = refuse.clone();
        conn.commit_hook(Some(move || hook.load(std::sync::atomic::Ordering::SeqCst)))
            .unwrap();
        conn.execute_batch("SAVEPOINT _dirk_returning; UPDATE c SET n = n + 1;")
            .unwrap();
        let refused = end_savepoint(&conn, "_dirk_returning", true, true).map_err(RunError::from);
        assert!(refused.is_err());
        forget_refused_commit(&conn, &refused.map(|()| Last::RelationOk));
        assert!(conn.is_autocommit(), "a transaction stayed open");
        refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        conn.execute_batch("UPDATE c SET n = n + 10").unwrap();
        assert!(conn.is_autocommit());
        let n: i64 = conn.query_row("SELECT n FROM c", [], |r| r.get(0)).unwrap();
        assert_eq!(
            n, 10,
            "the refused write is rolled back, the next one committed"
        );
    }

    /// A write the commit hook refused because the primary's write lease ended after the
    /// write took the gate is answered with the lease's reason, not SQLite's bare "constraint
    /// failed" (seen in etcd_e2e: a primary cut off from etcd answered that).
    #[test]
    fn a_commit_refused_for_an_ended_lease_says_so() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE c(n INT)").unwrap();
        conn.commit_hook(Some(|| true)).unwrap();
        let lease = Arc::new(crate::lease::Lease::new(true, true));
        let path = Arc::new(
            WritePath::new(Arc::default(), std::time::Duration::from_secs(1)).with_lease(lease),
        );
        let options = RunOptions {
            page_rows: 100,
            max_result_rows: 0,
            read_only: None,
            no_database: false,
            writer: Some(Writer {
                path,
                owner: 1,
                database: "d".into(),
                last_write: Arc::default(),
            }),
            access: crate::auth::Access::default(),
            schema_epoch: 0,
            ownership: Arc::default(),
            metrics: Arc::default(),
        };
        let refused = conn
            .execute_batch("INSERT INTO c VALUES (1)")
            .map_err(|e| RunError::Failed(e.into()));
        let text = failure_text(leased(refused.map(|()| Last::RelationOk), &options));
        assert!(text.contains("holds no write lease"), "{text}");
    }

    /// Two connections to one file in rollback-journal mode, the first holding a read
    /// transaction: the second's commits then fail with SQLITE_BUSY (a commit needs the
    /// exclusive lock), which leaves SQLite's transaction open.
    fn busy_database(dir: &std::path::Path) -> (Connection, Connection) {
        let path = dir.join("busy.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=DELETE; CREATE TABLE c(n INT); INSERT INTO c VALUES (0);",
            )
            .unwrap();
        writer.busy_timeout(std::time::Duration::ZERO).unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let n: i64 = reader
            .query_row("SELECT n FROM c", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        (reader, writer)
    }

    fn counter(conn: &Connection) -> i64 {
        conn.query_row("SELECT n FROM c", [], |r| r.get(0)).unwrap()
    }

    fn failure_text(outcome: Result<Last, RunError>) -> String {
        match outcome {
            Err(RunError::Failed(e)) => e.to_string(),
            Err(RunError::Dirk(text)) => text,
            Err(RunError::Gone) => "client gone".into(),
            Ok(_) => panic!("the statement succeeded"),
        }
    }

    /// #14: the RELEASE ending a write's own savepoint (RETURNING, a schema change) that fails
    /// with SQLITE_BUSY used to leave the transaction open: the session's next statements ran
    /// inside it. The write is now rolled back, and its error says so.
    #[test]
    fn a_write_whose_release_finds_the_database_busy_is_rolled_back_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = busy_database(dir.path());
        writer
            .execute_batch("SAVEPOINT _dirk_returning; UPDATE c SET n = n + 1;")
            .unwrap();
        let busy = end_savepoint(&writer, "_dirk_returning", true, true).map(|()| Last::RelationOk);
        let text = failure_text(busy.map_err(RunError::from));
        assert!(text.contains("locked") || text.contains("busy"), "{text}");
        assert!(text.ends_with(FAILED_COMMIT_ROLLED_BACK), "{text}");
        assert!(
            writer.is_autocommit(),
            "the write's transaction stayed open"
        );
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(counter(&writer), 0, "nothing of the write stays");
        writer.execute_batch("UPDATE c SET n = n + 10").unwrap();
        assert_eq!(counter(&reader), 10, "the next write commits on its own");
    }

    /// #14: a client's COMMIT (or outermost RELEASE) that fails with SQLITE_BUSY leaves its
    /// transaction open and usable, and its error says so; a retried COMMIT commits it.
    #[test]
    fn a_commit_that_finds_the_database_busy_says_the_transaction_is_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = busy_database(dir.path());
        for end in ["COMMIT", "RELEASE a"] {
            let open = if end == "COMMIT" {
                "BEGIN"
            } else {
                "SAVEPOINT a"
            };
            writer.execute_batch(open).unwrap();
            writer.execute_batch("UPDATE c SET n = n + 1").unwrap();
            assert!(ends_transaction(end));
            let failed = writer
                .execute_batch(end)
                .map(|()| Last::RelationOk)
                .map_err(RunError::from);
            let text = failure_text(say_where_a_failed_commit_left(&writer, true, failed));
            assert!(text.ends_with(FAILED_COMMIT_STILL_OPEN), "{end}: {text}");
            assert!(
                !writer.is_autocommit(),
                "{end}: the transaction is still open"
            );
            writer.execute_batch("ROLLBACK").unwrap();
        }
        writer
            .execute_batch("BEGIN; UPDATE c SET n = n + 5")
            .unwrap();
        assert!(writer.execute_batch("COMMIT").is_err(), "still busy");
        reader.execute_batch("COMMIT").unwrap();
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(
            counter(&reader),
            5,
            "the retried COMMIT committed the transaction"
        );
    }

    /// A client's RELEASE that the commit hook refused (the lease ended) is rolled back, and its
    /// error says so.
    #[test]
    fn a_client_s_refused_release_says_the_transaction_was_rolled_back() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE c(n INT); INSERT INTO c VALUES (0);")
            .unwrap();
        conn.commit_hook(Some(|| true)).unwrap();
        conn.execute_batch("SAVEPOINT a; UPDATE c SET n = n + 1;")
            .unwrap();
        let refused = conn
            .execute_batch("RELEASE a")
            .map(|()| Last::RelationOk)
            .map_err(RunError::from);
        let text = failure_text(say_where_a_failed_commit_left(&conn, true, refused));
        assert!(text.ends_with(FAILED_COMMIT_ROLLED_BACK), "{text}");
        assert!(conn.is_autocommit());
        assert_eq!(counter(&conn), 0);
    }
}
