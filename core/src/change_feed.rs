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
//!
//! Row images: `images`, when present, runs beside `rows` (one list per table of `rows`, one
//! item per key, in the same order): the row a key names after the notice's entries — every
//! stored column, `{"id":5,"k":3,"v":"x"}`, in the oplog's value encoding — or `null` when no
//! row has that key any more (deleted, or its key changed) or its image was not sent (the
//! notice's images would pass `replication.oplog.changeFeedRowImageBytes`). A reader may
//! refresh what it keeps of a row from its image instead of dropping it; one that ignores
//! `images` loses nothing.
//!
//! Sync: a reader may send `DIRK SYNC <n>` on the feed (the only statement a feed reads; a
//! proxy passes it on to the primary). Once every change written on the primary when the
//! request arrived is in the notices sent, a notice with `"synced": n` follows. A reader that
//! kept an answer read before it sent the request then knows that the notices after that one
//! are all newer than the answer: its rows can be refreshed from their images without going
//! back in time. A newer request answers the older ones.

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

/// The statement a feed's reader sends to learn when the notices cover what it has read.
pub const SYNC_STATEMENT: &str = "DIRK SYNC";

/// `DIRK SYNC <n>` for token `n`.
pub fn sync_statement(token: u64) -> String {
    format!("{SYNC_STATEMENT} {token}")
}

/// The token of a `DIRK SYNC <n>` (any case, any whitespace), `None` for anything else.
pub fn sync_token(sql: &str) -> Option<u64> {
    let mut words = sql.split_whitespace();
    let ok =
        words.next()?.eq_ignore_ascii_case("DIRK") && words.next()?.eq_ignore_ascii_case("SYNC");
    let token = words.next()?.parse().ok()?;
    (ok && words.next().is_none()).then_some(token)
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
    /// Beside `rows`: each key's row after the notice, or `null` (see the module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Vec<Option<RowImage>>>,
    /// The answer to `DIRK SYNC <n>`: every change written when the request arrived is in
    /// this notice or an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<u64>,
    /// In the first notice: the feed lists row keys, at most this many per notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
}

/// The changed rows of one table: `(database, table, key objects)`.
pub type TableRows = (String, String, Vec<RowKey>);

/// One row's key object: column (or `rowid`) → value, in the oplog's value encoding.
pub type RowKey = serde_json::Map<String, serde_json::Value>;

/// One row's stored columns (column → value, in the oplog's value encoding), as the JSON text
/// the oplog holds: passed on without being parsed, and read ([`RowImage::columns`]) only by a
/// reader that has a use for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RowImage(Box<serde_json::value::RawValue>);

impl RowImage {
    /// The image of a JSON object's text; `None` when it is not JSON.
    pub fn from_json(text: String) -> Option<RowImage> {
        serde_json::value::RawValue::from_string(text)
            .ok()
            .map(RowImage)
    }

    /// Its columns; `None` when it is not a JSON object.
    pub fn columns(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_str(self.0.get()).ok()
    }
}

impl PartialEq for RowImage {
    fn eq(&self, other: &RowImage) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for RowImage {}

/// Bytes of row images a notice carries at most by default
/// (`replication.oplog.changeFeedRowImageBytes`).
pub const DEFAULT_FEED_ROW_IMAGE_BYTES: u64 = 65_536;

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
    fn sync_requests_are_recognized_with_their_token() {
        assert_eq!(sync_token(&sync_statement(42)), Some(42));
        assert_eq!(sync_token(" dirk\tsync  7 "), Some(7));
        assert_eq!(sync_token("DIRK SYNC"), None);
        assert_eq!(sync_token("DIRK SYNC x"), None);
        assert_eq!(sync_token("DIRK SYNC 1 2"), None);
        assert_eq!(sync_token("DIRK CHANGES"), None);
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
            images: vec![vec![Some(
                serde_json::from_str(r#"{"id":5,"code":"a"}"#).unwrap(),
            )]],
            synced: Some(2),
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
