//! Content digests: an order-independent hash of everything a database holds, so anyone can
//! check that replicas hold exactly what the primary holds (`GET /replication/checksum`).
//!
//! The digest is the wrapping sum of a 64-bit FNV-1a hash per schema object (type, name, table,
//! SQL) and per row (table, key — its declared primary key when that is not the rowid, else its
//! rowid — and every column in the oplog's exact-type encoding), read in one transaction. Summing makes it independent of row order while duplicates still count; DirkDB's
//! own tables and triggers are left out, since each node prunes its oplog on its own schedule.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde::Serialize;

use crate::oplog::capture::{digest_rows_sql, user_tables};

/// Digest and row count of one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Digest {
    /// 16 hex digits.
    pub digest: String,
    /// Rows in all user tables.
    pub rows: u64,
}

/// Computes the digest of the database `conn` is open on.
pub(crate) fn database_digest(conn: &Connection) -> rusqlite::Result<Digest> {
    let tx = conn.unchecked_transaction()?;
    let mut sum: u64 = 0;
    let mut rows: u64 = 0;
    {
        let mut schema = tx.prepare(
            "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema \
             WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_dirk%' ESCAPE '\\'",
        )?;
        let objects = schema.query_map([], |r| {
            Ok([r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?])
        })?;
        for object in objects {
            sum = sum.wrapping_add(fnv1a(&object?));
        }
    }
    for table in user_tables(&tx)? {
        let mut stmt = tx.prepare(&digest_rows_sql(&tx, &table)?)?;
        let mut cursor = stmt.query([])?;
        while let Some(row) = cursor.next()? {
            let key: String = row.get(0)?;
            let data: String = row.get(1)?;
            sum = sum.wrapping_add(fnv1a(&[table.as_str(), &key, &data]));
            rows += 1;
        }
    }
    tx.commit()?;
    Ok(Digest {
        digest: format!("{sum:016x}"),
        rows,
    })
}

/// The digest of each user table of the database `conn` is open on: its schema objects (the
/// table, its indexes and triggers) and its rows, as in [`database_digest`]; comparable across
/// nodes table by table (MULTI_PRIMARY masters each own some of them).
pub(crate) fn table_digests(conn: &Connection) -> rusqlite::Result<BTreeMap<String, Digest>> {
    let tx = conn.unchecked_transaction()?;
    let mut out = BTreeMap::new();
    for table in user_tables(&tx)? {
        let mut sum: u64 = 0;
        let mut rows: u64 = 0;
        {
            let mut schema = tx.prepare(
                "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema \
                 WHERE tbl_name = ?1 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                 AND name NOT LIKE '\\_dirk%' ESCAPE '\\'",
            )?;
            let objects = schema.query_map([&table], |r| {
                Ok([r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?])
            })?;
            for object in objects {
                sum = sum.wrapping_add(fnv1a(&object?));
            }
        }
        let mut stmt = tx.prepare(&digest_rows_sql(&tx, &table)?)?;
        let mut cursor = stmt.query([])?;
        while let Some(row) = cursor.next()? {
            let key: String = row.get(0)?;
            let data: String = row.get(1)?;
            sum = sum.wrapping_add(fnv1a(&[table.as_str(), &key, &data]));
            rows += 1;
        }
        out.insert(
            table,
            Digest {
                digest: format!("{sum:016x}"),
                rows,
            },
        );
    }
    tx.commit()?;
    Ok(out)
}

/// FNV-1a 64 over the parts, each followed by a 0 byte so that ("ab","c") ≠ ("a","bc").
pub(crate) fn fnv1a<S: AsRef<str>>(parts: &[S]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_ref().as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::register_functions;

    fn db(script: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        register_functions(&conn, Default::default()).unwrap();
        conn.execute_batch(script).unwrap();
        conn
    }

    #[test]
    fn digest_ignores_order_but_not_content() {
        let a = db("CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'), (2, 'y');");
        let b =
            db("CREATE TABLE t(a, b); INSERT INTO t(rowid, a, b) VALUES (2, 2, 'y'), (1, 1, 'x');");
        let c = db("CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'), (2, 'z');");
        let d = db("CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'), (2, 2.0);");
        let da = database_digest(&a).unwrap();
        assert_eq!(da, database_digest(&b).unwrap());
        assert_eq!(da.rows, 2);
        assert_ne!(da, database_digest(&c).unwrap());
        assert_ne!(database_digest(&c).unwrap(), database_digest(&d).unwrap());
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
        let per_table = |c: &Connection| table_digests(c).unwrap();
        assert_eq!(per_table(&a), per_table(&b));
        assert_ne!(per_table(&a), per_table(&c));
        let e =
            db("CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'), (2, 'y'); CREATE TABLE u(x);");
        assert_eq!(
            per_table(&e)["t"],
            per_table(&a)["t"],
            "another table changes nothing"
        );
        assert_eq!(per_table(&e)["u"].rows, 0);
    }
}
