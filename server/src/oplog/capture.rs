//! Change capture: the triggers that write oplog entries, and the entries written by code.
//!
//! Every user table of a database gets three triggers (`_dirk_cap_i_<t>`, `_u_`, `_d_`) that
//! insert one `_dirk_oplog` row per changed row, in the statement's own transaction. Cascades and
//! the effects of user triggers fire these triggers too, and with `recursive_triggers` on, the
//! rows `INSERT OR REPLACE` deletes are captured as well. The trigger text is derived from the
//! table's columns, so after any schema change [`reconcile_triggers`] drops the stale ones and
//! creates what is missing (a renamed table, an added column). A row is keyed by its rowid, or by
//! its primary key in a WITHOUT ROWID table; generated columns are not captured (the replica
//! computes them). The key objects (`old_key`, `new_key`) also carry the columns of the table's
//! other unique keys (UNIQUE constraints and indexes, a non-INTEGER primary key), so the change
//! feed can tell a cache which rows changed by any of their keys, old and new.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Entry, Op, CREATE_OPLOG_SQL, NEXT_SEQ_SQL};

/// Prefix of every capture trigger.
const TRIGGER_PREFIX: &str = "_dirk_cap_";

/// Creates the oplog table and the capture triggers of every table.
pub(crate) fn install(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CREATE_OPLOG_SQL)?;
    reconcile_triggers(conn)
}

/// Makes the capture triggers match the current tables exactly.
pub(crate) fn reconcile_triggers(conn: &Connection) -> rusqlite::Result<()> {
    let expected = expected_triggers(conn)?;
    let mut existing: HashMap<String, String> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' \
             AND name LIKE '\\_dirk\\_cap\\_%' ESCAPE '\\'",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            let (name, sql): (String, String) = row?;
            existing.insert(name, sql);
        }
    }
    for (name, sql) in &existing {
        if expected.get(name) != Some(sql) {
            conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", ident(name)))?;
        }
    }
    for (name, sql) in &expected {
        if existing.get(name) != Some(sql) {
            conn.execute_batch(sql)?;
        }
    }
    Ok(())
}

/// Drops the capture triggers of one table (before an ALTER TABLE that could conflict with
/// them, such as dropping a column they name); [`reconcile_triggers`] recreates them.
pub(crate) fn drop_triggers_for(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    for kind in ["i", "u", "d"] {
        let name = format!("{TRIGGER_PREFIX}{kind}_{table}");
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", ident(&name)))?;
    }
    Ok(())
}

/// A user table and what its triggers need to know.
struct TableShape {
    name: String,
    columns: Vec<String>,
    key: Vec<String>,
    /// The declared primary key's columns when it is not the rowid (a rowid table with a TEXT
    /// or composite primary key, or a WITHOUT ROWID table); else empty.
    primary: Vec<String>,
    /// Columns of the other unique keys, not in `key` (captured in the key objects only).
    unique: Vec<String>,
}

/// User tables of the main schema (DirkDB's and SQLite's own are skipped).
pub(crate) fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_dirk%' ESCAPE '\\' \
         ORDER BY name",
    )?;
    let names = stmt.query_map([], |r| r.get(0))?;
    names.collect()
}

fn table_shape(conn: &Connection, table: &str) -> rusqlite::Result<TableShape> {
    let without_rowid: bool = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    let mut stmt =
        conn.prepare("SELECT name, hidden, pk FROM pragma_table_xinfo(?1) ORDER BY cid")?;
    let mut columns = Vec::new();
    let mut pk: Vec<(i64, String)> = Vec::new();
    let rows = stmt.query_map([table], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (name, hidden, pk_index) = row?;
        if hidden == 0 {
            columns.push(name.clone());
        }
        if pk_index > 0 {
            pk.push((pk_index, name));
        }
    }
    pk.sort();
    let pk: Vec<String> = pk.into_iter().map(|(_, n)| n).collect();
    let rowid_alias = !without_rowid && pk.len() == 1 && is_rowid_alias(conn, table, &pk[0])?;
    let primary = if rowid_alias { Vec::new() } else { pk.clone() };
    let key: Vec<String> = if without_rowid {
        pk
    } else {
        vec!["rowid".to_string()]
    };
    let unique = unique_key_columns(conn, table, &columns)?
        .into_iter()
        .filter(|c| !key.contains(c))
        .collect();
    Ok(TableShape {
        name: table.to_string(),
        columns,
        key,
        primary,
        unique,
    })
}

/// True when `column`, the single-column primary key of rowid table `table`, is an alias of the
/// rowid (declared `INTEGER`, exactly as SQLite decides it).
fn is_rowid_alias(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let ty: Option<String> = conn
        .query_row(
            "SELECT type FROM pragma_table_xinfo(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )
        .optional()?;
    Ok(ty.is_some_and(|t| t.eq_ignore_ascii_case("INTEGER")))
}

/// The columns of every full unique index of `table` (UNIQUE constraints and indexes, a primary
/// key other than the rowid) whose columns are all plain stored columns, each listed once.
fn unique_key_columns(
    conn: &Connection,
    table: &str,
    stored: &[String],
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT il.name, ii.name FROM pragma_index_list(?1) il, pragma_index_xinfo(il.name) ii \
         WHERE il.\"unique\" = 1 AND il.partial = 0 AND ii.key = 1 ORDER BY il.seq, ii.seqno",
    )?;
    let rows = stmt.query_map([table], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut by_index: Vec<(String, Vec<Option<String>>)> = Vec::new();
    for row in rows {
        let (index, column) = row?;
        match by_index.last_mut() {
            Some((name, columns)) if *name == index => columns.push(column),
            _ => by_index.push((index, vec![column])),
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (_, columns) in by_index {
        // An expression or a generated column makes the index no key the triggers can name.
        let plain: Option<Vec<String>> = columns
            .into_iter()
            .map(|c| c.filter(|c| stored.contains(c)))
            .collect();
        for column in plain.into_iter().flatten() {
            if !out.contains(&column) {
                out.push(column);
            }
        }
    }
    Ok(out)
}

fn expected_triggers(conn: &Connection) -> rusqlite::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for table in user_tables(conn)? {
        let shape = table_shape(conn, &table)?;
        for (kind, event, old, new) in [
            ("i", "INSERT", false, true),
            ("u", "UPDATE", true, true),
            ("d", "DELETE", true, false),
        ] {
            let name = format!("{TRIGGER_PREFIX}{kind}_{}", shape.name);
            let sql = trigger_sql(&name, event, &shape, old, new);
            out.insert(name, sql);
        }
    }
    Ok(out)
}

fn trigger_sql(name: &str, event: &str, shape: &TableShape, old: bool, new: bool) -> String {
    let op = match event {
        "INSERT" => Op::Insert,
        "UPDATE" => Op::Update,
        _ => Op::Remove,
    };
    let keys: Vec<String> = shape.key.iter().chain(&shape.unique).cloned().collect();
    let old_key = if old {
        row_expr("OLD", &keys)
    } else {
        "NULL".into()
    };
    let new_key = if new {
        row_expr("NEW", &keys)
    } else {
        "NULL".into()
    };
    let data = row_expr(if new { "NEW" } else { "OLD" }, &shape.columns);
    format!(
        "CREATE TRIGGER {} AFTER {event} ON {} BEGIN {} END",
        ident(name),
        ident(&shape.name),
        entry_insert_sql(&literal(&shape.name), op, &old_key, &new_key, &data)
    )
}

/// The INSERT of one entry with a freshly allocated sequence number; the other fields are SQL
/// expressions.
fn entry_insert_sql(table: &str, op: Op, old_key: &str, new_key: &str, data: &str) -> String {
    let op = literal(op.code());
    format!(
        "INSERT INTO _dirk_oplog(seq, ts, tbl, op, old_key, new_key, data, crc) \
         SELECT s, t, {table}, {op}, o, n, d, dirk_crc(s, t, {table}, {op}, o, n, d) \
         FROM (SELECT {NEXT_SEQ_SQL} AS s, dirk_now() AS t, {old_key} AS o, {new_key} AS n, {data} AS d \
         FROM _dirk_oplog);"
    )
}

fn row_expr(prefix: &str, columns: &[String]) -> String {
    let args: Vec<String> = columns
        .iter()
        .map(|c| format!("{}, {prefix}.{}", literal(c), ident(c)))
        .collect();
    format!("dirk_row({})", args.join(", "))
}

/// Records an entry written by code (DDL, database events): allocates its sequence number in
/// SQL like the triggers do, and returns it.
pub(crate) fn record(
    conn: &Connection,
    table: &str,
    op: Op,
    data: Option<&str>,
) -> rusqlite::Result<u64> {
    let sql = entry_insert_sql("?1", op, "NULL", "NULL", "?2");
    conn.execute(&sql, params![table, data])?;
    conn.query_row("SELECT max(seq) FROM _dirk_oplog", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|s| s.max(0) as u64)
}

/// `SELECT <key JSON>, <row JSON> FROM table`: every row in the oplog's encoding.
pub(crate) fn rows_sql(conn: &Connection, table: &str) -> rusqlite::Result<String> {
    let shape = table_shape(conn, table)?;
    Ok(format!(
        "SELECT {}, {} FROM {}",
        row_expr(&ident(table), &shape.key),
        row_expr(&ident(table), &shape.columns),
        ident(table)
    ))
}

/// `SELECT <key JSON>, <row JSON> FROM table` keyed as rows are compared between nodes
/// (checksums): by the declared primary key when the table has one that is not the rowid, else
/// by the rowid. MULTI_PRIMARY masters apply each other's rows of such tables by that key, so a
/// row can sit under different rowids on two masters that hold the same data.
pub(crate) fn digest_rows_sql(conn: &Connection, table: &str) -> rusqlite::Result<String> {
    let shape = table_shape(conn, table)?;
    let key = if shape.primary.is_empty() {
        &shape.key
    } else {
        &shape.primary
    };
    Ok(format!(
        "SELECT {}, {} FROM {}",
        row_expr(&ident(table), key),
        row_expr(&ident(table), &shape.columns),
        ident(table)
    ))
}

/// Records every row of `table` as an insert (after `CREATE TABLE … AS SELECT`, whose rows no
/// trigger saw).
pub(crate) fn record_existing_rows(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    let sql = rows_sql(conn, table)?;
    let rows: Vec<(String, String)> = {
        let mut stmt = conn.prepare(&sql)?;
        let mapped = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        mapped.collect::<rusqlite::Result<_>>()?
    };
    let insert = entry_insert_sql("?1", Op::Insert, "NULL", "?2", "?3");
    for (key, data) in rows {
        conn.execute(&insert, params![table, key, data])?;
    }
    Ok(())
}

/// Writes an entry received from the primary, with its own sequence, time and checksum.
pub(crate) fn insert_entry(conn: &Connection, e: &Entry) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO _dirk_oplog(seq, ts, tbl, op, old_key, new_key, data, crc) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.seq as i64,
        e.ts,
        e.table,
        e.op.code(),
        e.old_key,
        e.new_key,
        e.data,
        i64::from(e.crc)
    ])?;
    Ok(())
}

/// `"name"` with inner quotes doubled.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::register_functions;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        register_functions(&conn, Arc::new(AtomicU64::new(0))).unwrap();
        conn.execute_batch("PRAGMA recursive_triggers = ON; PRAGMA foreign_keys = ON;")
            .unwrap();
        install(&conn).unwrap();
        conn
    }

    /// (seq, table, op, new key, data) of one stored entry.
    type StoredEntry = (i64, String, String, Option<String>, Option<String>);

    fn entries(conn: &Connection) -> Vec<StoredEntry> {
        let mut stmt = conn
            .prepare("SELECT seq, tbl, op, new_key, data FROM _dirk_oplog ORDER BY seq")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn dml_cascades_and_replace_are_captured_in_order() {
        let conn = db();
        conn.execute_batch(
            "CREATE TABLE p(id INTEGER PRIMARY KEY, v TEXT UNIQUE);
             CREATE TABLE c(id INTEGER PRIMARY KEY, p INT REFERENCES p(id) ON DELETE CASCADE);",
        )
        .unwrap();
        reconcile_triggers(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO p VALUES (1, 'a'), (2, 'b');
             INSERT INTO c VALUES (10, 1);
             UPDATE p SET v = 'z' WHERE id = 2;
             INSERT OR REPLACE INTO p VALUES (3, 'z');
             DELETE FROM p WHERE id = 1;",
        )
        .unwrap();
        let e = entries(&conn);
        let ops: Vec<(String, String)> = e.iter().map(|x| (x.1.clone(), x.2.clone())).collect();
        let want = [
            ("p", "I"),
            ("p", "I"),
            ("c", "I"),
            ("p", "U"),
            ("p", "R"),
            ("p", "I"),
            ("c", "R"),
            ("p", "R"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(ops, want);
        let seqs: Vec<i64> = e.iter().map(|x| x.0).collect();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
        assert_eq!(e[0].3.as_deref(), Some(r#"{"rowid":1,"v":"a"}"#));
        assert_eq!(e[0].4.as_deref(), Some(r#"{"id":1,"v":"a"}"#));
        let keys: (String, String) = conn
            .query_row(
                "SELECT old_key, new_key FROM _dirk_oplog WHERE op = 'U'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            keys,
            (
                r#"{"rowid":2,"v":"b"}"#.into(),
                r#"{"rowid":2,"v":"z"}"#.into()
            ),
            "an UPDATE of a unique key carries the old and the new value"
        );
    }

    #[test]
    fn key_objects_name_every_plain_unique_key_once() {
        let conn = db();
        conn.execute_batch(
            "CREATE TABLE k(code TEXT PRIMARY KEY, a INT, b INT, e TEXT, g AS (a + 1) UNIQUE,
                 UNIQUE (a, b), UNIQUE (b));
             CREATE UNIQUE INDEX k_e ON k(e);
             CREATE UNIQUE INDEX k_part ON k(a) WHERE a > 0;
             CREATE UNIQUE INDEX k_expr ON k(lower(e));
             CREATE TABLE plain(id INTEGER PRIMARY KEY, v);",
        )
        .unwrap();
        reconcile_triggers(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO k(code, a, b, e) VALUES ('x', 1, 2, 'E'); INSERT INTO plain VALUES (7, 1);",
        )
        .unwrap();
        let e = entries(&conn);
        assert_eq!(
            e[0].3.as_deref(),
            Some(r#"{"a":1,"b":2,"code":"x","e":"E","rowid":1}"#)
        );
        assert_eq!(e[1].3.as_deref(), Some(r#"{"rowid":7}"#));
    }

    #[test]
    fn savepoint_rollback_leaves_no_gap_and_without_rowid_uses_the_key() {
        let conn = db();
        conn.execute_batch("CREATE TABLE w(a TEXT, b INT, v, PRIMARY KEY (b, a)) WITHOUT ROWID")
            .unwrap();
        reconcile_triggers(&conn).unwrap();
        conn.execute_batch(
            "BEGIN; SAVEPOINT s; INSERT INTO w VALUES ('x', 1, 0); ROLLBACK TO s; RELEASE s;
             INSERT INTO w VALUES ('y', 2, x'01'); COMMIT;",
        )
        .unwrap();
        let e = entries(&conn);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, 1);
        assert_eq!(e[0].3.as_deref(), Some(r#"{"a":"y","b":2}"#));
    }

    #[test]
    fn reconcile_follows_schema_changes_and_entries_have_valid_checksums() {
        let conn = db();
        conn.execute_batch("CREATE TABLE t(a)").unwrap();
        reconcile_triggers(&conn).unwrap();
        conn.execute_batch("ALTER TABLE t ADD COLUMN b; ALTER TABLE t RENAME TO u;")
            .unwrap();
        reconcile_triggers(&conn).unwrap();
        conn.execute_batch("INSERT INTO u VALUES (1, 2)").unwrap();
        let e = entries(&conn);
        assert_eq!(e.last().unwrap().1, "u");
        assert_eq!(e.last().unwrap().4.as_deref(), Some(r#"{"a":1,"b":2}"#));
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, ["_dirk_cap_d_u", "_dirk_cap_i_u", "_dirk_cap_u_u"]);
        let seq = record(&conn, "u", Op::Ddl, Some(r#"{"sql":"x"}"#)).unwrap();
        assert_eq!(seq, 2);
        for entry in store::read_file_entries(&conn, "d", 0, 100).unwrap() {
            assert!(entry.checksum_ok(), "{entry:?}");
        }
    }

    use crate::oplog::store;
}
