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
    /// The client connection broke.
    #[error(transparent)]
    Client(#[from] dirkdb_core::connection::ConnectionError),
}
