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
    /// A statement the proxy sends on a client's behalf (`DIRK WAIT`, `DIRK WAIT REPLICAS`,
    /// `DIRK POSITION HISTORY`, …) got no answer within the wait it asks the server for plus
    /// `loadBalancer.statementTimeoutMs` (a frozen or cut-off instance); its connection is
    /// dropped.
    #[error("`{statement}` got no answer from instance {instance} within {ms} ms (loadBalancer.statementTimeoutMs)")]
    ExtensionTimeout {
        /// The statement the proxy sent.
        statement: String,
        /// Instance id.
        instance: String,
        /// How long it waited.
        ms: u64,
    },
    /// A write ran on the primary and its answer said so, but what settles it (its position,
    /// its write concern) failed: the client cannot know whether it is kept.
    #[error("the write's outcome is unknown: it ran on the primary {instance}, but settling it failed ({cause}); read it back before writing it again")]
    OutcomeUnknown {
        /// The primary's id.
        instance: String,
        /// What failed.
        cause: Box<ProxyError>,
    },
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
    /// READ_YOUR_WRITES: the session's last write is not in the primary's history (a failover
    /// rolled it back); the session now follows the primary's history.
    #[error("read-your-writes: this session's last write ({position}) is not in the history of the primary {instance}: a failover rolled it back (the node that took it keeps it in a rollback file); this read was refused, the session's next reads follow {instance}'s history")]
    OwnWriteRolledBack {
        /// The session's position (sequence and history).
        position: String,
        /// The primary.
        instance: String,
    },
    /// MULTI_PRIMARY: the statement would break the one-writer-per-object rule (the text names
    /// the objects and their owners).
    #[error("{0}")]
    Ownership(String),
    /// The client connection broke.
    #[error(transparent)]
    Client(#[from] dirkdb_core::connection::ConnectionError),
}

/// Why a request to an instance's admin API failed ([`crate::http`]).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer within the caller's timeout (`loadBalancer.healthIntervalMillis` for health
    /// checks).
    #[error("{method} {path} timed out")]
    Timeout {
        /// `GET` or `POST`.
        method: &'static str,
        /// The path asked for.
        path: String,
    },
    /// The connection (TCP, then TLS with `security.tls`) could not be made.
    #[error(transparent)]
    Connect(#[from] dirkdb_core::tls::ConnectError),
    /// The connection could not be made or broke.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The answer was not HTTP.
    #[error("malformed HTTP response")]
    Malformed,
    /// The instance answered with another status than 200 (its `{"error": …}` when it gave one).
    #[error("{line}{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Status {
        /// The status code.
        code: u16,
        /// The whole status line.
        line: String,
        /// The reason the instance gave.
        reason: Option<String>,
    },
    /// The body of a 200 answer was not JSON.
    #[error("bad JSON from {addr}{path}: {source}")]
    Json {
        /// The instance's admin address.
        addr: String,
        /// The path asked for.
        path: String,
        /// The parser's error.
        source: serde_json::Error,
    },
}

impl HttpError {
    /// Whether the instance answered 404 (an endpoint an older server does not have).
    pub fn is_not_found(&self) -> bool {
        matches!(self, HttpError::Status { code: 404, .. })
    }
}

/// Why a failover promoted nobody ([`crate::failover`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FailoverError {
    /// The coordinator (`failover.coordinator`) did not let this proxy decide, or refused the
    /// decision.
    #[error("{0}")]
    Coordinator(String),
    /// `POST /cluster/failover {"to": …}` named no instance of the config.
    #[error("no instance `{0}` in config.json")]
    UnknownInstance(String),
    /// The requested instance is the primary already.
    #[error("{0} is already the primary")]
    AlreadyPrimary(String),
    /// The candidate has no admin API to be promoted through.
    #[error("{0} has no adminPort")]
    NoAdminPort(String),
    /// No replica answered its status.
    #[error("no reachable replica to promote")]
    NoReachableReplica,
    /// No candidate holds every acknowledged write (the text says where each stands).
    #[error("{0}")]
    Behind(String),
    /// A candidate's admin API failed.
    #[error(transparent)]
    Admin(#[from] HttpError),
}
