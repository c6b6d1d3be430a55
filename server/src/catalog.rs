//! The databases of one instance: one SQLite file each under the data directory.
//!
//! The catalog owns the name → [`Database`] map; CREATE and DROP DATABASE change it under a write
//! lock, USE reads it. Each [`Database`] keeps a few idle SQLite connections so that sessions which
//! come and go do not reopen files; a connection goes back to the pool only outside a transaction.
//! Every connection is opened the same way ([`open_connection`]): WAL journal (readers never block
//! the writer), the configured `synchronous` level, a busy timeout, foreign keys on, and an
//! authorizer that refuses ATTACH/DETACH so no statement can reach a file outside the catalog.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dirkdb_core::config::Synchronous;
use dirkdb_core::sync::{lock, read, write};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Result, ServerError};
use crate::oplog::{capture, register_functions};
use crate::ownership::TransactionWrites;

/// File extension of database files.
const DB_EXTENSION: &str = "db";
/// Idle connections kept per database.
const MAX_IDLE: usize = 32;
/// WAL pages after which a commit checkpoints inline. The background checkpointer
/// ([`Catalog::checkpoint_passive`], every second) normally keeps the WAL far below this, so
/// commits (and a replica's apply) do not pay for checkpoints; this is only the safety net.
const INLINE_CHECKPOINT_PAGES: u32 = 10_000;
/// Prefix reserved for DirkDB's own files and tables.
pub(crate) const RESERVED_PREFIX: &str = "_dirk";

/// How every SQLite connection of this instance is set up.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Commit durability.
    pub synchronous: Synchronous,
    /// How long a writer waits for the lock.
    pub busy_timeout: Duration,
    /// The committed sequence the capture triggers read (`dirk_committed()`).
    pub committed: Arc<AtomicU64>,
    /// The primary's write lease, checked by every client connection's commit hook.
    pub lease: Arc<crate::lease::Lease>,
    /// MULTI_PRIMARY: the objects this master owns, checked by every client connection's
    /// authorizer (see `ownership.rs`).
    pub ownership: Arc<crate::ownership::Ownership>,
}

/// One database: its file and its idle connections.
pub struct Database {
    name: String,
    path: PathBuf,
    dropped: AtomicBool,
    idle: Mutex<Vec<Connection>>,
    settings: ConnectionSettings,
}

impl Database {
    /// The name clients USE.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True once DROP DATABASE removed it; sessions still holding it must stop using it.
    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A connection for one session: an idle one or a new one.
    pub fn lease(&self) -> Result<Connection> {
        if self.is_dropped() {
            return Err(ServerError::DatabaseDropped(self.name.clone()));
        }
        if let Some(conn) = lock(&self.idle).pop() {
            return Ok(conn);
        }
        open_connection(&self.path, &self.settings, false)
    }

    /// Returns a session's connection; one inside a transaction is closed (rolling it back).
    pub fn give_back(&self, conn: Connection) {
        if conn.is_autocommit() && !self.is_dropped() {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    fn checkpoint(&self) -> Result<()> {
        let conn = self.lease()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// All databases of the instance.
pub struct Catalog {
    dir: PathBuf,
    databases: RwLock<HashMap<String, Arc<Database>>>,
    settings: ConnectionSettings,
    generation: AtomicU64,
}

impl Catalog {
    /// The databases whose file is in the data directory (at start-up, before registration).
    pub fn files_on_disk(dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(DB_EXTENSION) {
                continue;
            }
            if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                if validate_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens (creating it if needed) a data directory and registers the databases in it.
    pub fn open(dir: &Path, settings: ConnectionSettings) -> Result<Catalog> {
        std::fs::create_dir_all(dir)?;
        let catalog = Catalog {
            dir: dir.to_path_buf(),
            databases: RwLock::new(HashMap::new()),
            settings,
            generation: AtomicU64::new(0),
        };
        catalog.reload()?;
        Ok(catalog)
    }

    /// Registers every database file of the directory not registered yet, making sure each has
    /// its oplog table and capture triggers.
    pub fn reload(&self) -> Result<()> {
        for name in Self::files_on_disk(&self.dir)? {
            if self.get(&name).is_ok() {
                continue;
            }
            let conn = open_connection(&self.path_of(&name), &self.settings, false)?;
            as_internal(|| capture::install(&conn))?;
            self.register(name).give_back(conn);
        }
        Ok(())
    }

    /// Retires every database (a replica about to install a full sync): sessions holding one
    /// see it as replaced and reattach to the new file of the same name.
    pub fn forget_all(&self) {
        let retired: Vec<Arc<Database>> =
            write(&self.databases).drain().map(|(_, db)| db).collect();
        for db in retired {
            db.dropped.store(true, Ordering::Release);
            lock(&db.idle).clear();
        }
        self.changed();
    }

    /// Changes whenever a database is created, dropped or replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn register(&self, name: String) -> Arc<Database> {
        let db = Arc::new(Database {
            path: self.path_of(&name),
            name: name.clone(),
            dropped: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            settings: self.settings.clone(),
        });
        write(&self.databases).insert(name, db.clone());
        self.changed();
        db
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{DB_EXTENSION}"))
    }

    /// The database called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Database>> {
        read(&self.databases)
            .get(name)
            .cloned()
            .ok_or_else(|| ServerError::UnknownDatabase(name.to_string()))
    }

    /// Database names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.databases).keys().cloned().collect();
        names.sort();
        names
    }

    /// CREATE DATABASE: creates the file in WAL mode. Returns false when it existed and
    /// `if_not_exists` was given.
    pub fn create(&self, name: &str, if_not_exists: bool) -> Result<bool> {
        validate_name(name)?;
        let mut map = write(&self.databases);
        if map.contains_key(name) {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(ServerError::DatabaseExists(name.to_string()))
            };
        }
        let path = self.path_of(name);
        let conn = open_connection(&path, &self.settings, true)?;
        as_internal(|| capture::install(&conn))?;
        let db = Arc::new(Database {
            path,
            name: name.to_string(),
            dropped: AtomicBool::new(false),
            idle: Mutex::new(vec![conn]),
            settings: self.settings.clone(),
        });
        map.insert(name.to_string(), db);
        drop(map);
        self.changed();
        Ok(true)
    }

    /// DROP DATABASE: forgets it, marks it dropped for sessions that hold it, deletes its files.
    /// Returns false when it did not exist and `if_exists` was given.
    pub fn drop_database(&self, name: &str, if_exists: bool) -> Result<bool> {
        let Some(db) = write(&self.databases).remove(name) else {
            return if if_exists {
                Ok(false)
            } else {
                Err(ServerError::UnknownDatabase(name.to_string()))
            };
        };
        db.dropped.store(true, Ordering::Release);
        lock(&db.idle).clear();
        self.changed();
        for suffix in ["", "-wal", "-shm"] {
            let mut file = db.path.clone().into_os_string();
            file.push(suffix);
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(true)
    }

    /// Copies WAL content back into every database file without blocking readers or writers
    /// (`PRAGMA wal_checkpoint(PASSIVE)`); called every second.
    pub fn checkpoint_passive(&self) {
        let databases: Vec<Arc<Database>> = read(&self.databases).values().cloned().collect();
        for db in databases {
            let done = db.lease().and_then(|conn| {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                db.give_back(conn);
                Ok(())
            });
            if let Err(e) = done {
                tracing::debug!(database = db.name(), error = %e, "background checkpoint failed");
            }
        }
    }

    /// Folds every WAL back into its database file (on shutdown).
    pub fn checkpoint_all(&self) {
        let databases: Vec<Arc<Database>> = read(&self.databases).values().cloned().collect();
        for db in databases {
            if let Err(e) = db.checkpoint() {
                tracing::warn!(database = db.name(), error = %e, "checkpoint failed");
            }
        }
    }
}

/// True for names in DirkDB's reserved namespace, in any letter case (SQLite's `LIKE` and its
/// identifiers are case-insensitive, so `_DIRKx` must be as reserved as `_dirkx`).
pub(crate) fn is_reserved(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name.as_bytes()[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes())
}

/// Database names become file names: keep them to a safe alphabet.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !is_reserved(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ServerError::InvalidDatabaseName(name.to_string()))
    }
}

/// Opens a database file with the instance's settings; `create` allows a new file.
pub(crate) fn open_connection(
    path: &Path,
    settings: &ConnectionSettings,
    create: bool,
) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(settings.busy_timeout)?;
    let synchronous = settings.synchronous.as_str();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA foreign_keys=ON; \
         PRAGMA recursive_triggers=ON; PRAGMA wal_autocheckpoint={INLINE_CHECKPOINT_PAGES};"
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    keep_plans_across_bindings(&conn)?;
    register_functions(&conn, settings.committed.clone())?;
    register_domain_violation(&conn)?;
    crate::dirkdb_functions::register(&conn)?;
    let ownership = settings.ownership.clone();
    let db = path
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let writes = Arc::new(TransactionWrites::default());
    let noted = writes.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        noted.forget_when_a_transaction_starts();
        match refuse_outside_files(ctx) {
            Authorization::Allow if !owns_target(&ownership, &db, &ctx, &noted) => {
                Authorization::Deny
            }
            decision => decision,
        }
    }))?;
    let lease = settings.lease.clone();
    let ownership = settings.ownership.clone();
    // Ownership first: its refusal names the objects and why (the write lease's does not).
    // No rollback hook: see `ownership::run_statement_of_client`.
    conn.commit_hook(Some(move || {
        !is_internal() && (writes.refuses_commit(&ownership) || lease.refuses_commit())
    }))?;
    Ok(conn)
}

/// A replica's connection for applying the primary's changes: triggers and foreign-key actions
/// off (their effects arrive as entries of their own), DirkDB's tables writable, and
/// `synchronous=NORMAL`: a process crash costs nothing, and this keeps an fsync out of every
/// applied batch (and out of the replication lag). A power loss could cost one file's newest
/// commits while another's survive; a replica that restarts after such a reboot resyncs fully
/// (see `state::lost_power_since_last_run`).
pub(crate) fn open_apply_connection(
    path: &Path,
    settings: &ConnectionSettings,
) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_CREATE;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(settings.busy_timeout)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; \
         PRAGMA wal_autocheckpoint={INLINE_CHECKPOINT_PAGES};"
    ))?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )?;
    keep_plans_across_bindings(&conn)?;
    register_functions(&conn, settings.committed.clone())?;
    register_domain_violation(&conn)?;
    crate::dirkdb_functions::register(&conn)?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee (QPSG): a cached statement keeps its
/// plan whatever values are bound to it. Without it, SQLite (built with STAT4, as the bundled
/// one is) marks a statement whose plan could depend on a bound value, a `LIMIT ?` among them,
/// for a full re-prepare at its next step after every new binding: the oplog read-back behind
/// every write (`oplog::store::read_file_entries`) was compiled again at each write, a tenth of
/// a primary's CPU under single-row updates. Clients' SQL arrives as text with its literals,
/// which the planner still sees; only DirkDB's own parameterised statements are concerned.
fn keep_plans_across_bindings(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// The function DirkDB's domain CHECK constraints call for a value that does not fit (see
/// `dirkdb_core::sql::dirkdb::domain`): it fails the statement with DirkDB's text,
/// `can not convert into domain d : <domain> at values ind=<i> { <value> } `.
pub(crate) fn register_domain_violation(conn: &Connection) -> rusqlite::Result<()> {
    use dirkdb_core::sql::dirkdb::domain::{violation_text, DomainValue};
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function(
        dirkdb_core::sql::dirkdb::translate::VIOLATION_FUNCTION,
        3,
        flags,
        |ctx| -> rusqlite::Result<bool> {
            let text;
            let value = match ctx.get_raw(0) {
                ValueRef::Null => DomainValue::Null,
                ValueRef::Integer(n) => DomainValue::Number(n as f64),
                ValueRef::Real(f) => DomainValue::Number(f),
                ValueRef::Text(t) => {
                    text = String::from_utf8_lossy(t).into_owned();
                    DomainValue::Text(&text)
                }
                ValueRef::Blob(b) => dirkdb_core::sql::dirkdb::values::blob_bool(b)
                    .map_or(DomainValue::Other, DomainValue::Bool),
            };
            let index = ctx.get::<i64>(1)?.max(0) as usize;
            let domain = ctx.get::<String>(2)?;
            Err(rusqlite::Error::UserFunctionError(
                violation_text(&domain, index, &value).into(),
            ))
        },
    )
}

/// The scratch connection of a session with no current database: expressions only.
pub(crate) fn open_scratch() -> Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    conn.execute_batch("PRAGMA query_only=1;")?;
    crate::dirkdb_functions::register(&conn)?;
    conn.authorizer(Some(refuse_outside_files))?;
    Ok(conn)
}

thread_local! {
    static INTERNAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with DirkDB's own tables and triggers writable on this thread (for the server's
/// bookkeeping: DDL entries, capture triggers, replica apply).
pub(crate) fn as_internal<T>(f: impl FnOnce() -> T) -> T {
    let previous = INTERNAL.with(|i| i.replace(true));
    let out = f();
    INTERNAL.with(|i| i.set(previous));
    out
}

/// True inside [`as_internal`] on this thread.
pub(crate) fn is_internal() -> bool {
    INTERNAL.with(|i| i.get())
}

/// MULTI_PRIMARY: false when the statement being authorized writes a table or view of the
/// `main` database that another master owns (a client's statement; the server's own
/// bookkeeping and DirkDB's `_dirk` and SQLite's `sqlite_` tables are not owned objects).
fn owns_target(
    ownership: &crate::ownership::Ownership,
    db: &str,
    ctx: &AuthContext<'_>,
    writes: &TransactionWrites,
) -> bool {
    use crate::ownership::Ownership;
    use dirkdb_core::rendezvous::ObjectKind::{Table, View};
    use AuthAction::*;
    if !ownership.active() || is_internal() || ctx.database_name.is_some_and(|d| d != "main") {
        return true;
    }
    let (kind, name) = match ctx.action {
        Insert { table_name }
        | Update { table_name, .. }
        | Delete { table_name }
        | CreateTable { table_name }
        | DropTable { table_name }
        | AlterTable { table_name, .. }
        | CreateIndex { table_name, .. }
        | DropIndex { table_name, .. }
        | CreateTrigger { table_name, .. }
        | DropTrigger { table_name, .. } => (Table, table_name),
        CreateView { view_name } | DropView { view_name } => (View, view_name),
        _ => return true,
    };
    let own_bookkeeping = |n: &str| {
        is_reserved(n) || n.len() >= 7 && n.as_bytes()[..7].eq_ignore_ascii_case(b"sqlite_")
    };
    let domain_row = crate::ownership::in_domain_statement()
        && name.eq_ignore_ascii_case(dirkdb_core::sql::dirkdb::translate::DOMAIN_TABLE);
    if own_bookkeeping(name) || domain_row {
        return true;
    }
    let allowed = Ownership::allows(ownership, db, kind, name);
    if allowed {
        writes.note(dirkdb_core::rendezvous::ObjectRef::object(db, kind, name));
    }
    allowed
}

/// Refuses ATTACH/DETACH (no file outside the catalog), and changes to DirkDB's own tables and
/// triggers except from its capture triggers or internal code.
fn refuse_outside_files(ctx: AuthContext<'_>) -> Authorization {
    use AuthAction::*;
    let target = match ctx.action {
        Attach { .. } | Detach { .. } => return Authorization::Deny,
        Insert { table_name }
        | Update { table_name, .. }
        | Delete { table_name }
        | DropTable { table_name }
        | AlterTable { table_name, .. }
        | CreateTable { table_name } => table_name,
        // DROP TABLE drops the table's capture triggers with it (explicit DROP TRIGGER of a
        // capture trigger is refused by the statement runner before it is prepared).
        DropTrigger {
            trigger_name,
            table_name,
        } if trigger_name.starts_with("_dirk_cap_") && !is_reserved(table_name) => {
            return Authorization::Allow
        }
        CreateTrigger { trigger_name, .. } | DropTrigger { trigger_name, .. } => trigger_name,
        CreateIndex { table_name, .. }
        | CreateView {
            view_name: table_name,
        } => table_name,
        _ => return Authorization::Allow,
    };
    let reserved = target.starts_with(RESERVED_PREFIX);
    let trusted =
        INTERNAL.with(|i| i.get()) || ctx.accessor.is_some_and(|a| a.starts_with(RESERVED_PREFIX));
    if reserved && !trusted {
        Authorization::Deny
    } else {
        Authorization::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ConnectionSettings {
        ConnectionSettings {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(1),
            committed: Arc::default(),
            lease: Arc::default(),
            ownership: Arc::default(),
        }
    }

    #[test]
    fn a_master_refuses_writes_to_tables_and_views_it_does_not_own() {
        use crate::ownership::{take_refusal, Ownership};
        let dir = tempfile::tempdir().unwrap();
        let masters = vec!["m1".to_string(), "m2".into(), "m3".into()];
        let settings = ConnectionSettings {
            ownership: Arc::new(Ownership::new("m2", masters)),
            ..settings()
        };
        let conn = open_connection(&dir.path().join("testdb.db"), &settings, true).unwrap();
        // By DirkDB's rendezvous (core::rendezvous vectors): commandes → m2, produits → m3,
        // v_clients (a view) → m1.
        conn.execute_batch("CREATE TABLE commandes (id INTEGER PRIMARY KEY, n)")
            .unwrap();
        conn.execute_batch("INSERT INTO commandes (n) VALUES (1)")
            .unwrap();
        assert!(conn.execute_batch("CREATE TABLE produits (id)").is_err());
        let why = take_refusal().unwrap();
        assert!(
            why.contains("table testdb.produits is owned by m3, not by m2"),
            "{why}"
        );
        assert!(conn
            .execute_batch("CREATE VIEW v_clients AS SELECT * FROM commandes")
            .is_err());
        assert!(take_refusal()
            .unwrap()
            .contains("view testdb.v_clients is owned by m1"));
        // A trigger of an owned table that writes a table owned elsewhere is refused too.
        as_internal(|| conn.execute_batch("CREATE TABLE produits (id)")).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER t AFTER INSERT ON commandes BEGIN INSERT INTO produits VALUES (1); END",
        )
        .unwrap();
        assert!(conn
            .execute_batch("INSERT INTO commandes (n) VALUES (2)")
            .is_err());
        assert!(take_refusal().unwrap().contains("produits is owned by m3"));
        conn.execute_batch("CREATE TEMP TABLE scratch (x); INSERT INTO scratch VALUES (1)")
            .unwrap();
    }

    /// DirkDB's own cached statements keep their plan when bound anew (QPSG): without it, the
    /// bundled SQLite re-prepared a statement with a bound `LIMIT` at every binding.
    #[test]
    fn cached_statements_are_not_prepared_again_for_new_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("testdb.db"), &settings(), true).unwrap();
        conn.execute_batch("CREATE TABLE t (seq INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');")
            .unwrap();
        let sql = "SELECT seq, v FROM t WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3";
        for after in 0..3_i64 {
            let mut stmt = conn.prepare_cached(sql).unwrap();
            let rows: Vec<i64> = stmt
                .query_map(rusqlite::params![after, i64::MAX, 100 + after], |r| {
                    r.get(0)
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(rows.len() as i64, 3 - after);
        }
        let stmt = conn.prepare_cached(sql).unwrap();
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the statement was compiled again for new bindings"
        );
    }

    #[test]
    fn create_list_drop_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path(), settings()).unwrap();
        assert!(cat.create("shop", false).unwrap());
        assert!(!cat.create("shop", true).unwrap());
        assert!(matches!(
            cat.create("shop", false),
            Err(ServerError::DatabaseExists(_))
        ));
        cat.create("a-b_1", false).unwrap();
        assert_eq!(cat.names(), vec!["a-b_1", "shop"]);
        let db = cat.get("shop").unwrap();
        let conn = db.lease().unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        db.give_back(conn);
        drop(cat);
        let cat = Catalog::open(dir.path(), settings()).unwrap();
        assert_eq!(cat.names(), vec!["a-b_1", "shop"]);
        let db = cat.get("shop").unwrap();
        let n: i64 = db
            .lease()
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(cat.drop_database("shop", false).unwrap());
        assert!(db.is_dropped());
        assert!(!dir.path().join("shop.db").exists());
        assert!(matches!(
            cat.get("shop"),
            Err(ServerError::UnknownDatabase(_))
        ));
        assert!(!cat.drop_database("shop", true).unwrap());
    }

    #[test]
    fn names_that_are_not_safe_file_names_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "_dirk_oplog",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attach_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path(), settings()).unwrap();
        cat.create("d", false).unwrap();
        let conn = cat.get("d").unwrap().lease().unwrap();
        let err = conn
            .execute_batch("ATTACH '/tmp/evil.db' AS e")
            .unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{err}");
    }
}
