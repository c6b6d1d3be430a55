//! The proxy's typed errors; each reaches the client as one `Hadisoana : …` frame.

/// Why the proxy could not serve a statement.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No instance can serve the statement.
    #[error("no instance available for {0}")]
    NoBackend(&'static str),
    /// An instance could not be reached or broke mid-statement.
    #[error("instance {instance}: {reason}")]
    Backend {
        /// Instance id.
        instance: String,
        /// What happened.
        reason: String,
    },
    /// The statement ran longer than `loadBalancer.statementTimeoutMs`.
    #[error("statement timed out after {0} ms on instance {1} (loadBalancer.statementTimeoutMs)")]
    Timeout(u64, String),
    /// A statement of an open transaction failed and took the session's primary connection,
    /// and so the transaction, with it (the server rolls back a closed connection's transaction).
    #[error(
        "{0}; the open transaction was rolled back, and its statements are refused until ROLLBACK"
    )]
    TransactionRolledBack(Box<ProxyError>),
    /// A statement sent after the session's transaction was rolled back, before ROLLBACK.
    #[error("refused: the transaction was rolled back after an error ({0}); send ROLLBACK to start again")]
    InRolledBackTransaction(String),
    /// COMMIT (or RELEASE) of a transaction that had been rolled back.
    #[error("nothing was committed: the transaction had been rolled back after an error ({0})")]
    NothingCommitted(String),
    /// The primary is down and an automatic failover waits for a replica holding every
    /// acknowledged write (see `ack_watermark::failover_waiting`).
    #[error("{0}")]
    FailoverWaiting(String),
    /// MULTI_PRIMARY: the statement would break the one-writer-per-object rule (the text names
    /// the objects and their owners).
    #[error("{0}")]
    Ownership(String),
    /// The client connection broke.
    #[error(transparent)]
    Client(#[from] dirkdb_core::connection::ConnectionError),
}
