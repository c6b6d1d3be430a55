//! The change feed: how a primary tells a cache which tables changed, as they commit.
//!
//! A client sends the extension statement `DIRK CHANGES;` to a primary (directly or through the
//! proxy, which forwards it to the current primary). The connection then stops taking
//! statements and carries only message frames, each holding one [`ChangeNotice`] as JSON: the
//! first says where the feed starts (`upto` = the committed position, nothing changed), and each
//! later one lists what the entries up to `upto` touched. An idle feed sends an empty notice
//! every [`FEED_HEARTBEAT`], so a reader can tell a quiet primary from a dead connection. When
//! the server cannot say precisely what changed (the feed fell behind its in-memory backlog, or
//! the instance installed a full sync), the notice has `all: true`: drop everything.
//!
//! Row keys (since the first notice says `"keys": N`): `rows` lists, for tables of `tables`, the
//! key objects of the rows the entries changed — the rowid (or a WITHOUT ROWID table's primary
//! key) and the table's other unique keys, `{"rowid":5,"email":"a@b"}`, both the old and the new
//! key of an UPDATE. A table listed in `tables` but not in `rows` changed in ways the notice does
//! not list row by row (more than `N` keys in one notice): every row of it may have changed. A
//! reader that ignores `rows` sees the notices it always saw.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The statement that turns a connection into a change feed.
pub const CHANGES_STATEMENT: &str = "DIRK CHANGES";

/// True when `incoming` is `DIRK CHANGES` (any case, any whitespace between and around the words).
pub fn is_changes_statement(incoming: &crate::connection::Incoming) -> bool {
    matches!(incoming, crate::connection::Incoming::Statement(sql) if is_changes_sql(sql))
}

/// [`is_changes_statement`] on a statement's text.
pub fn is_changes_sql(sql: &str) -> bool {
    let mut words = sql.split_whitespace();
    let mut expected = CHANGES_STATEMENT.split_whitespace();
    loop {
        match (words.next(), expected.next()) {
            (None, None) => return true,
            (Some(w), Some(e)) if w.eq_ignore_ascii_case(e) => {}
            _ => return false,
        }
    }
}

/// How often an idle feed sends an empty notice.
pub const FEED_HEARTBEAT: Duration = Duration::from_millis(500);

/// What committed between the previous notice and `upto`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNotice {
    /// The oplog position this notice brings the reader to.
    pub upto: u64,
    /// `[database, table]` pairs whose rows changed (each pair once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<(String, String)>,
    /// Databases whose schema changed (any DDL: CREATE/ALTER/DROP of tables, views, indexes,
    /// triggers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// Databases created or dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// True when the server cannot list the changes precisely: everything may have changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// `[database, table, [key, …]]`: the keys of the rows changed in tables of `tables` (see
    /// the module docs); a table of `tables` missing here changed as a whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<TableRows>,
    /// In the first notice: the feed lists row keys, at most this many per notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
}

/// The changed rows of one table: `(database, table, key objects)`.
pub type TableRows = (String, String, Vec<RowKey>);

/// One row's key object: column (or `rowid`) → value, in the oplog's value encoding.
pub type RowKey = serde_json::Map<String, serde_json::Value>;

/// Row keys a notice lists at most by default (`replication.oplog.changeFeedRowKeys`).
pub const DEFAULT_FEED_ROW_KEYS: u64 = 1000;

impl ChangeNotice {
    /// True when the notice reports no change (the first notice, heartbeats).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.schemas.is_empty() && self.databases.is_empty() && !self.all
    }

    /// The notice as the text of a message frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"upto\":{},\"all\":true}}", self.upto))
    }

    /// Reads a notice from a message frame's text.
    pub fn from_text(text: &str) -> Result<ChangeNotice, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_is_recognized_in_any_spelling() {
        use crate::connection::Incoming;
        let st = |s: &str| Incoming::Statement(s.into());
        assert!(is_changes_statement(&st("DIRK CHANGES")));
        assert!(is_changes_statement(&st("\n dirk\tChanges  ")));
        assert!(!is_changes_statement(&st("DIRK CHANGES 5")));
        assert!(!is_changes_statement(&st("DIRK CHANGE")));
        assert!(!is_changes_statement(&st("DIRKCHANGES")));
        assert!(!is_changes_statement(&Incoming::InvalidUtf8));
    }

    #[test]
    fn notices_round_trip_and_stay_small() {
        let heartbeat = ChangeNotice {
            upto: 7,
            ..ChangeNotice::default()
        };
        assert_eq!(heartbeat.to_text(), r#"{"upto":7}"#);
        assert!(heartbeat.is_empty());
        let notice = ChangeNotice {
            upto: 9,
            tables: vec![("shop".into(), "orders".into())],
            schemas: vec!["shop".into()],
            databases: vec!["old".into()],
            all: false,
            rows: vec![(
                "shop".into(),
                "orders".into(),
                vec![serde_json::from_str(r#"{"rowid":5,"code":"a"}"#).unwrap()],
            )],
            keys: None,
        };
        assert_eq!(ChangeNotice::from_text(&notice.to_text()).unwrap(), notice);
        assert!(notice
            .to_text()
            .contains(r#""rows":[["shop","orders",[{"code":"a","rowid":5}]]]"#));
        // A notice of an older server (no rows) still reads, and one with fields this reader
        // does not know too.
        let old = ChangeNotice::from_text(r#"{"upto":3,"tables":[["d","t"]],"later":1}"#).unwrap();
        assert!(old.rows.is_empty() && old.keys.is_none());
        assert!(!notice.is_empty());
        assert!(ChangeNotice::from_text("not json").is_err());
    }
}
