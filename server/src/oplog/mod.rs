//! The oplog: every committed change of a PRIMARY, in order, with a checksum.
//!
//! Each database file keeps its own changes in a `_dirk_oplog` table written by capture triggers
//! ([`capture`]) inside the transaction that makes the change, so there is never a change without
//! its entry or an entry without its change. Database-level events (CREATE/DROP DATABASE) live in
//! the same table of the instance's meta file ([`crate::meta`]). Sequence numbers are global to
//! the instance: the write gate ([`crate::write_path`]) lets one write transaction run at a time,
//! and the trigger computes `max(committed, max seq of this file) + 1`, so numbers are gap-free
//! even across savepoint rollbacks and follow commit order. [`store`] reads entries back across
//! all files, merged by sequence.
//!
//! Row images are JSON objects built by the `dirk_row` SQL function: INTEGER and REAL are JSON
//! numbers (a REAL always with a fraction or exponent), TEXT a string, NULL null, a BLOB
//! `{"blob":"<hex>"}` and a non-finite REAL `{"real":"inf"|"-inf"}`, so every value replicates
//! with its exact type.

pub(crate) mod capture;
pub(crate) mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Creates the oplog table of a file if it is missing.
pub(crate) const CREATE_OPLOG_SQL: &str = "CREATE TABLE IF NOT EXISTS _dirk_oplog (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,
    old_key TEXT,
    new_key TEXT,
    data TEXT,
    crc INTEGER NOT NULL
)";

/// The next sequence number, as SQL: used by triggers and internal inserts alike. It is an
/// aggregate, evaluated in a query over `_dirk_oplog` (`max(seq)` is one b-tree seek): a scalar
/// subquery gave the same value but made every statement that fires a capture trigger compile
/// one more subquery (the trigger is compiled into each statement that fires it, and clients'
/// SQL arrives as text, so it is compiled at every write).
pub(crate) const NEXT_SEQ_SQL: &str = "max(dirk_committed(), coalesce(max(seq), 0)) + 1";

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A row was inserted (`data` is the new row).
    #[serde(rename = "I")]
    Insert,
    /// A row was updated (`old_key` → `new_key`, `data` is the new row).
    #[serde(rename = "U")]
    Update,
    /// A row was removed (`data` is the old row).
    #[serde(rename = "R")]
    Remove,
    /// A schema change inside a database (`data` is `{"sql": …}`).
    #[serde(rename = "DDL")]
    Ddl,
    /// CREATE DATABASE (meta file; `tbl` is the database name).
    #[serde(rename = "CREATEDB")]
    CreateDatabase,
    /// DROP DATABASE (meta file; `tbl` is the database name).
    #[serde(rename = "DROPDB")]
    DropDatabase,
}

impl Op {
    /// The code stored in the `op` column.
    pub fn code(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Remove => "R",
            Op::Ddl => "DDL",
            Op::CreateDatabase => "CREATEDB",
            Op::DropDatabase => "DROPDB",
        }
    }

    /// Parses a stored code.
    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "I" => Op::Insert,
            "U" => Op::Update,
            "R" => Op::Remove,
            "DDL" => Op::Ddl,
            "CREATEDB" => Op::CreateDatabase,
            "DROPDB" => Op::DropDatabase,
            _ => return None,
        })
    }
}

/// One oplog entry as it is stored, served by the admin API and streamed to replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Global, gap-free sequence number.
    pub seq: u64,
    /// Commit time on the primary, ms since the Unix epoch.
    pub ts: i64,
    /// Database the change belongs to (`""` for database-level events).
    pub db: String,
    /// Table (or, for CREATEDB/DROPDB, database) name.
    pub table: String,
    /// What happened.
    pub op: Op,
    /// Key of the row before the change (JSON object).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub old_key: Option<String>,
    /// Key of the row after the change (JSON object).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub new_key: Option<String>,
    /// Row image or DDL text (JSON).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<String>,
    /// CRC-32 of every field but `db`, computed when the entry was written.
    pub crc: u32,
}

impl Entry {
    /// True when the stored checksum matches the fields.
    pub fn checksum_ok(&self) -> bool {
        entry_crc(
            self.seq,
            self.ts,
            &self.table,
            self.op.code(),
            self.old_key.as_deref(),
            self.new_key.as_deref(),
            self.data.as_deref(),
        ) == self.crc
    }
}

/// The checksum of an entry's fields (the same function the triggers call as `dirk_crc`).
pub(crate) fn entry_crc(
    seq: u64,
    ts: i64,
    table: &str,
    op: &str,
    old_key: Option<&str>,
    new_key: Option<&str>,
    data: Option<&str>,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&ts.to_le_bytes());
    for field in [Some(table), Some(op), old_key, new_key, data] {
        match field {
            Some(text) => {
                h.update(&[1]);
                h.update(&(text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            None => h.update(&[0]),
        }
    }
    h.finalize()
}

/// The oplog JSON form of one SQL value.
pub(crate) fn encode_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::from(n),
        ValueRef::Real(f) => match serde_json::Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => serde_json::json!({ "real": if f > 0.0 { "inf" } else { "-inf" } }),
        },
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => dirkdb_core::value::blob(b),
    }
}

/// The SQL value of an oplog JSON value (the inverse of [`encode_value`]).
pub(crate) fn decode_value(value: &Value) -> Result<SqlValue, String> {
    Ok(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => SqlValue::Integer(i),
            _ => SqlValue::Real(n.as_f64().ok_or("number out of range")?),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Object(map) => match (map.get("blob"), map.get("real")) {
            (Some(Value::String(h)), None) => SqlValue::Blob(unhex(h)?),
            (None, Some(Value::String(r))) if r == "inf" => SqlValue::Real(f64::INFINITY),
            (None, Some(Value::String(r))) if r == "-inf" => SqlValue::Real(f64::NEG_INFINITY),
            _ => return Err(format!("unknown value encoding {value}")),
        },
        Value::Array(_) => return Err(format!("unknown value encoding {value}")),
    })
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("bad hex digit in blob `{text}`")),
        }
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(format!("odd-length hex blob `{text}`"));
    }
    bytes
        .chunks(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Registers the SQL functions the capture triggers call: `dirk_committed()` (the instance's
/// last committed sequence), `dirk_now()`, `dirk_row(name, value, …)` and `dirk_crc(…)`.
pub(crate) fn register_functions(
    conn: &Connection,
    committed: Arc<AtomicU64>,
) -> rusqlite::Result<()> {
    let deterministic = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("dirk_committed", 0, FunctionFlags::SQLITE_UTF8, move |_| {
        Ok(committed.load(Ordering::Acquire) as i64)
    })?;
    conn.create_scalar_function("dirk_now", 0, FunctionFlags::SQLITE_UTF8, |_| {
        Ok(dirkdb_core::clock::now_ms())
    })?;
    conn.create_scalar_function("dirk_row", -1, deterministic, row_function)?;
    conn.create_scalar_function("dirk_crc", 7, deterministic, crc_function)?;
    Ok(())
}

fn row_function(ctx: &Context<'_>) -> rusqlite::Result<String> {
    let mut map = Map::new();
    let mut i = 0;
    while i + 1 < ctx.len() {
        let name = match ctx.get_raw(i) {
            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            _ => i.to_string(),
        };
        map.insert(name, encode_value(ctx.get_raw(i + 1)));
        i += 2;
    }
    Ok(Value::Object(map).to_string())
}

fn crc_function(ctx: &Context<'_>) -> rusqlite::Result<i64> {
    let text = |i: usize| -> rusqlite::Result<Option<String>> { ctx.get::<Option<String>>(i) };
    let crc = entry_crc(
        ctx.get::<i64>(0)?.max(0) as u64,
        ctx.get::<i64>(1)?,
        &text(2)?.unwrap_or_default(),
        &text(3)?.unwrap_or_default(),
        text(4)?.as_deref(),
        text(5)?.as_deref(),
        text(6)?.as_deref(),
    );
    Ok(i64::from(crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_their_types() {
        let cases = [
            SqlValue::Null,
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(2.0),
            SqlValue::Real(-0.5),
            SqlValue::Real(f64::INFINITY),
            SqlValue::Real(f64::NEG_INFINITY),
            SqlValue::Text("{\"blob\":\"00\"}".into()),
            SqlValue::Blob(vec![0, 255, 16]),
        ];
        for v in cases {
            let json = encode_value(ValueRef::from(&v));
            let text = json.to_string();
            let back = decode_value(&serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back, v, "{text}");
        }
    }

    #[test]
    fn every_real_survives_the_json_round_trip_bit_for_bit() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if !f.is_finite() {
                continue;
            }
            let text = encode_value(ValueRef::Real(f)).to_string();
            let back = decode_value(&serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back, SqlValue::Real(f), "{text}");
        }
    }

    #[test]
    fn crc_covers_every_field() {
        let base = entry_crc(1, 2, "t", "I", None, Some("{}"), Some("{}"));
        assert_ne!(
            base,
            entry_crc(2, 2, "t", "I", None, Some("{}"), Some("{}"))
        );
        assert_ne!(
            base,
            entry_crc(1, 2, "t", "I", Some("{}"), None, Some("{}"))
        );
        assert_ne!(
            base,
            entry_crc(1, 2, "t", "U", None, Some("{}"), Some("{}"))
        );
        assert_ne!(
            base,
            entry_crc(1, 2, "t", "I", None, Some("{}"), Some("{ }"))
        );
    }

    #[test]
    fn sql_functions_match_rust() {
        let conn = Connection::open_in_memory().unwrap();
        register_functions(&conn, Arc::new(AtomicU64::new(7))).unwrap();
        let (row, committed): (String, i64) = conn
            .query_row(
                "SELECT dirk_row('a', 1, 'b', x'ff', 'c', 1.5), dirk_committed()",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(row, r#"{"a":1,"b":{"blob":"ff"},"c":1.5}"#);
        assert_eq!(committed, 7);
        let crc: i64 = conn
            .query_row(
                "SELECT dirk_crc(1, 2, 't', 'I', NULL, '{}', '{}')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            crc as u32,
            entry_crc(1, 2, "t", "I", None, Some("{}"), Some("{}"))
        );
    }
}
