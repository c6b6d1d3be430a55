//! Statements that change the connection they run on, beyond the data: a pooled connection that
//! ran one must not serve another client afterwards.
//!
//! SQLite keeps PRAGMA settings (`synchronous`, `foreign_keys`, `recursive_triggers`, …),
//! ATTACHed databases and TEMP objects per connection. The server pools SQLite connections and
//! the proxy pools server connections, so without care `PRAGMA foreign_keys=OFF` from one client
//! would stay on for the next unrelated sessions. Both pools therefore close, instead of pooling,
//! a connection that ran a statement this module flags.

use super::lexer::{Lexer, TokenKind};

/// Words that, among a statement's first few, mark it as changing connection state. `EXPLAIN
/// PRAGMA …` counts too: SQLite applies a PRAGMA's setting while compiling it.
const STATEFUL_WORDS: [&str; 5] = ["PRAGMA", "ATTACH", "DETACH", "TEMP", "TEMPORARY"];

/// How many leading words are looked at (`EXPLAIN QUERY PLAN PRAGMA …`, `CREATE TEMP …`).
const LEADING_WORDS: usize = 4;

/// True when `sql` may change the state of the connection it runs on (a PRAGMA, ATTACH or
/// DETACH, a TEMP object): its connection must not be pooled for another client afterwards.
/// Over-reports rather than misses (a harmless `PRAGMA table_info(t)` counts too; its cost is
/// one new connection).
pub fn changes_connection_state(sql: &str) -> bool {
    Lexer::new(sql)
        .filter(|t| !t.kind.is_trivia())
        .take(LEADING_WORDS)
        .any(|t| {
            t.kind == TokenKind::Word
                && STATEFUL_WORDS
                    .iter()
                    .any(|w| t.text(sql).eq_ignore_ascii_case(w))
        })
}

#[cfg(test)]
mod tests {
    use super::changes_connection_state as stateful;

    #[test]
    fn settings_attachments_and_temp_objects_are_flagged() {
        for sql in [
            "PRAGMA synchronous=OFF",
            "pragma foreign_keys = off",
            "EXPLAIN PRAGMA query_only = 1",
            "ATTACH 'x.db' AS x",
            "DETACH x",
            "CREATE TEMP TABLE t(a)",
            "manamboara TEMPORARY TABLE t(a)",
            "CREATE TEMP VIEW v AS SELECT 1",
        ] {
            assert!(stateful(sql), "{sql}");
        }
    }

    #[test]
    fn ordinary_statements_are_not() {
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES ('PRAGMA')",
            "SELECT * FROM t WHERE a = 1 AND b = 'TEMP'",
            "CREATE TABLE temp_stats(a)",
            "-- PRAGMA foreign_keys = OFF\nSELECT 1",
        ] {
            assert!(!stateful(sql), "{sql}");
        }
    }
}
