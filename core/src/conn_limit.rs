//! Per-connection limits that keep one client from locking the others out: how long a session
//! may sit idle inside an open transaction (`limits.idleInTransactionTimeoutMs`, PostgreSQL's
//! `idle_in_transaction_session_timeout`).
//!
//! A session idle in a transaction holds the instance's writer lock, so every other writer
//! waits until its `busyTimeoutMs` fails. The server, the proxy and the cache therefore set an
//! [`IdleLimit`] on the connection after each statement that leaves a transaction open; a client
//! that sends nothing within it is told so, its connection is closed, and closing it rolls the
//! transaction back (the server closes the SQLite connection; the proxy and the cache close
//! their upstream connection, which does the same one hop further).

use std::time::Duration;

use crate::config::LimitsConfig;
use crate::connection::IdleLimit;

/// The limit on waiting for a session's next statement: `limits.idleInTransactionTimeoutMs`
/// while a transaction is open (0 turns it off), none otherwise.
pub fn idle_limit(limits: &LimitsConfig, in_transaction: bool) -> Option<IdleLimit> {
    let ms = limits.idle_in_transaction_timeout_ms;
    (in_transaction && ms > 0).then(|| IdleLimit {
        after: Duration::from_millis(ms),
        reason: format!(
            "idle in a transaction for {ms} ms: the transaction was rolled back and the \
             connection closed (limits.idleInTransactionTimeoutMs)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_open_transaction_has_a_limit() {
        let mut limits = LimitsConfig::default();
        assert_eq!(idle_limit(&limits, false), None);
        let limit = idle_limit(&limits, true).expect("on by default");
        assert_eq!(limit.after, Duration::from_secs(60));
        assert!(limit.reason.contains("limits.idleInTransactionTimeoutMs"));
        limits.idle_in_transaction_timeout_ms = 0;
        assert_eq!(idle_limit(&limits, true), None, "0 turns it off");
    }
}
