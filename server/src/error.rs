//! The server's typed errors: each becomes one `Hadisoana : …` frame for the client.

/// Why a statement failed; the `Display` text is what the client reads after `Hadisoana : `.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// SQLite refused or failed the statement.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// `USE x` or `DROP DATABASE x` for a database that does not exist.
    #[error("unknown database `{0}`")]
    UnknownDatabase(String),
    /// `CREATE DATABASE x` when x exists.
    #[error("database `{0}` already exists")]
    DatabaseExists(String),
    /// A database name that cannot be a file name.
    #[error("invalid database name `{0}`: use letters, digits, `_` and `-` (at most 64, not starting with `_dirk`)")]
    InvalidDatabaseName(String),
    /// The session's current database was dropped by someone.
    #[error("database `{0}` was dropped; USE another database")]
    DatabaseDropped(String),
    /// A write sent to a replica.
    #[error("this instance ({0}) is a read-only REPLICA: send writes to the primary")]
    ReadOnlyReplica(String),
    /// USE or DROP of the current database while a transaction is open.
    #[error("a transaction is open: COMMIT or ROLLBACK before {0}")]
    TransactionOpen(&'static str),
    /// A result larger than `limits.maxResultRows`.
    #[error("result has {rows} rows, more than the limit of {limit} (limits.maxResultRows)")]
    TooManyRows {
        /// Rows the statement would return.
        rows: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A database statement with a syntax error.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// File system trouble in the data directory.
    #[error("data directory error: {0}")]
    Io(#[from] std::io::Error),
    /// A statement that was to commit (`COMMIT`, `END`, the outermost `RELEASE`, a write's own
    /// savepoint) failed; the text says whether the transaction was rolled back or is still open.
    #[error("{cause}; {}", if *.rolled_back {
        dirkdb_core::sql::transaction::FAILED_COMMIT_ROLLED_BACK
    } else {
        dirkdb_core::sql::transaction::FAILED_COMMIT_STILL_OPEN
    })]
    CommitFailed {
        /// Why the commit failed (SQLITE_BUSY, the commit hook's refusal, …).
        cause: Box<ServerError>,
        /// True when nothing of the transaction stays; false when it is still open.
        rolled_back: bool,
    },
    /// Another transaction held the instance's writer gate for longer than the busy timeout.
    #[error("database is locked: another transaction has been writing for more than {0} ms (limits.busyTimeoutMs); retry")]
    WriterBusy(u64),
    /// Statements that would break replication.
    #[error("{0}")]
    Refused(String),
    /// The oplog's reader failed (including a corrupt entry).
    #[error("oplog: {0}")]
    Store(#[from] crate::oplog::store::StoreError),
    /// The user's grants do not cover the statement.
    #[error("{0}")]
    PermissionDenied(String),
    /// The `security` section or the cluster password file is unusable.
    #[error(transparent)]
    Security(#[from] dirkdb_core::security::SecurityError),
    /// The server is stopping and its shutdown deadline interrupted the statement.
    #[error("the server is shutting down: the statement was interrupted after limits.shutdownTimeoutMs ({0})")]
    ShutdownInterrupted(String),
    /// A worker task died; the session goes on with a fresh connection.
    #[error("internal error: {0}")]
    Internal(String),
    /// A blocking or spawned task panicked or was cancelled (its join error is the source).
    #[error("internal error: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Result alias of the server crate.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration does not name this instance.
    #[error(transparent)]
    Config(#[from] dirkdb_core::config::ConfigError),
    /// The data directory could not be opened.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The SQL or admin port is taken or not allowed.
    #[error(transparent)]
    Bind(#[from] dirkdb_core::accept_loop::BindError),
}
