//! Which columns identify a row, per table of one database, as the server's catalog says: the
//! rowid (and the `INTEGER PRIMARY KEY` column that names it), a WITHOUT ROWID table's primary
//! key, and every full UNIQUE index over plain columns. A cached query that pins one of these
//! keys to literals depends only on the rows holding those key values
//! ([`TableKeys::pinned_rows`]); the change feed names changed rows by the same keys
//! ([`tuple_of_row`]).
//!
//! The cache asks the upstream [`SCHEMA_QUERY`] (views and keys in one round trip) the first
//! time it keeps a query of a database, and forgets the answer whenever that database's schema
//! changes. Nothing is guessed from names: a table the catalog does not list has no keys.
//!
//! Values are compared in a canonical text form ([`canonical_json`], [`Literal`]): numbers by
//! value (`5`, `5.0` and `5e0` are one key), text byte for byte. A literal is used only where
//! SQLite's comparison would not convert it (a number against a numeric column, text against a
//! TEXT column, either against an untyped one), and a table whose definition mentions a
//! collation keys nothing but its rowid, so two values equal for SQLite always share one
//! canonical form.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::statement_analysis::{Literal, TablePins};

/// The catalog query: one row per view (`v`, name, sql), per column of a table (`c`, table,
/// column, declared type, pk, `wr + 2 * hidden`, table sql) and per column of a full unique
/// index (`u`, table, index, column or NULL for an expression, origin).
pub const SCHEMA_QUERY: &str = "SELECT 'v', name, sql, NULL, NULL, NULL, NULL FROM sqlite_master \
     WHERE type = 'view' \
     UNION ALL SELECT 'c', t.name, c.name, c.type, c.pk, t.wr + 2 * c.hidden, m.sql \
     FROM pragma_table_list t JOIN sqlite_master m ON m.type = 'table' AND m.name = t.name, \
     pragma_table_xinfo(t.name) c WHERE t.schema = 'main' AND t.type = 'table' \
     UNION ALL SELECT 'u', m.name, il.name, ii.name, il.origin, ii.seqno, NULL \
     FROM sqlite_master m, pragma_index_list(m.name) il, pragma_index_xinfo(il.name) ii \
     WHERE m.type = 'table' AND il.\"unique\" = 1 AND il.partial = 0 AND ii.key = 1";

/// The name the change feed gives a rowid table's rowid.
pub const ROWID: &str = "rowid";

/// Most key tuples one cached query may depend on; more make it depend on the table.
pub const MAX_TUPLES: usize = 256;

/// How SQLite compares a column with a literal (its affinity, from the declared type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Affinity {
    /// INTEGER, REAL, NUMERIC: text literals would be converted, so only numbers are used.
    Numeric,
    /// TEXT: number literals would be converted, so only text is used.
    Text,
    /// BLOB or no type: no conversion, either literal compares as it is.
    None,
}

fn affinity(declared: &str) -> Affinity {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        Affinity::Numeric
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        Affinity::Text
    } else if t.contains("BLOB") || t.trim().is_empty() {
        Affinity::None
    } else {
        Affinity::Numeric
    }
}

/// One unique key: its columns (lower case, `rowid` for the rowid) and how each compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// The key's columns, lower case, in index order.
    pub columns: Vec<String>,
    affinities: Vec<Affinity>,
}

impl UniqueKey {
    /// The key's name in the store: its columns joined by commas.
    pub fn id(&self) -> String {
        self.columns.join(",")
    }
}

/// The keys of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableKeys {
    /// The table's unique keys, the rowid first when it has one.
    pub keys: Vec<UniqueKey>,
    /// Names that mean the rowid in a query (`rowid`, `_rowid_`, `oid` unless a column takes
    /// them, and the `INTEGER PRIMARY KEY` column).
    rowid_names: Vec<String>,
}

/// What a query pinned on one table: a key and the tuples of its values (canonical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRows {
    /// The key (see [`UniqueKey`]).
    pub key: UniqueKey,
    /// Each tuple is the key's values in column order, canonical, joined by `\u{1f}`.
    pub tuples: Vec<String>,
}

impl TableKeys {
    /// The rows of this table a query with `pins` can read, when the pins cover a whole key
    /// with literals that compare exactly; `None`: the query depends on the whole table.
    pub fn pinned_rows(&self, pins: &TablePins) -> Option<PinnedRows> {
        let literals_of = |column: &str, affinity: Affinity| -> Option<&Vec<Literal>> {
            let names: Vec<&str> = if column == ROWID {
                self.rowid_names.iter().map(String::as_str).collect()
            } else {
                vec![column]
            };
            let (_, literals) = pins
                .columns
                .iter()
                .filter(|(c, _)| names.contains(&c.as_str()))
                .min_by_key(|(_, l)| l.len())?;
            literals
                .iter()
                .all(|l| usable(l, affinity))
                .then_some(literals)
        };
        self.keys.iter().find_map(|key| {
            let lists: Option<Vec<&Vec<Literal>>> = key
                .columns
                .iter()
                .zip(&key.affinities)
                .map(|(c, a)| literals_of(c, *a))
                .collect();
            let tuples = cross_product(&lists?)?;
            Some(PinnedRows {
                key: key.clone(),
                tuples,
            })
        })
    }
}

fn usable(literal: &Literal, affinity: Affinity) -> bool {
    matches!(
        (literal, affinity),
        (Literal::Number(_), Affinity::Numeric | Affinity::None)
            | (Literal::Text(_), Affinity::Text | Affinity::None)
    )
}

fn cross_product(lists: &[&Vec<Literal>]) -> Option<Vec<String>> {
    let mut tuples = vec![String::new()];
    for (i, list) in lists.iter().enumerate() {
        if list.is_empty() || tuples.len() * list.len() > MAX_TUPLES {
            return None;
        }
        tuples = tuples
            .iter()
            .flat_map(|prefix| {
                list.iter().map(move |l| {
                    let sep = if i == 0 { "" } else { "\u{1f}" };
                    format!("{prefix}{sep}{}", l.canonical())
                })
            })
            .collect();
    }
    tuples.sort();
    tuples.dedup();
    Some(tuples)
}

/// The tuple of `columns` in a changed row's key object (keys compared in lower case), or
/// `None` when the object lacks one of them (then any tuple may have changed).
pub fn tuple_of_row(row: &HashMap<String, &Value>, columns: &[String]) -> Option<String> {
    let mut out = String::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push('\u{1f}');
        }
        out.push_str(&canonical_json(row.get(c)?));
    }
    Some(out)
}

/// A number's canonical text: integral values as integers, others as Rust prints an `f64`.
pub fn canonical_number(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e18 {
        format!("n:{}", value as i64)
    } else {
        format!("n:{value:?}")
    }
}

/// The canonical form of a value of the oplog's encoding (see `dirkdb_server::oplog`).
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(i) => format!("n:{i}"),
            None => canonical_number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => format!("s:{s}"),
        // NULL never equals a literal; blobs and infinities are never pinned.
        other => format!("x:{other}"),
    }
}

/// The keys of every table of a database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMap {
    tables: HashMap<String, TableKeys>,
}

/// An index's columns by position (`None`: an expression).
type IndexColumns = Vec<(i64, Option<String>)>;

/// A column as the catalog lists it.
struct ColumnRow {
    name: String,
    declared: String,
    pk: i64,
    flags: i64,
    table_sql: String,
}

impl KeyMap {
    /// The keys of `table` (lower case), if the catalog listed it.
    pub fn table(&self, table: &str) -> Option<&TableKeys> {
        self.tables.get(table)
    }

    /// Builds the map from the `c` and `u` rows of [`SCHEMA_QUERY`] (`row[0]` is the kind).
    pub fn from_rows(rows: &[Vec<Value>]) -> KeyMap {
        let text = |row: &[Value], i: usize| row.get(i).and_then(Value::as_str).map(str::to_string);
        let int = |row: &[Value], i: usize| row.get(i).and_then(Value::as_i64);
        let mut columns: HashMap<String, Vec<ColumnRow>> = HashMap::new();
        let mut indexes: BTreeMap<(String, String), IndexColumns> = BTreeMap::new();
        for row in rows {
            match text(row, 0).as_deref() {
                Some("c") => {
                    let (Some(table), Some(name)) = (text(row, 1), text(row, 2)) else {
                        continue;
                    };
                    columns
                        .entry(table.to_lowercase())
                        .or_default()
                        .push(ColumnRow {
                            name: name.to_lowercase(),
                            declared: text(row, 3).unwrap_or_default(),
                            pk: int(row, 4).unwrap_or(0),
                            flags: int(row, 5).unwrap_or(0),
                            table_sql: text(row, 6).unwrap_or_default(),
                        });
                }
                Some("u") => {
                    let (Some(table), Some(index)) = (text(row, 1), text(row, 2)) else {
                        continue;
                    };
                    let column = text(row, 3).map(|c| c.to_lowercase());
                    indexes
                        .entry((table.to_lowercase(), index))
                        .or_default()
                        .push((int(row, 5).unwrap_or(0), column));
                }
                _ => {}
            }
        }
        let mut by_table: HashMap<String, Vec<Vec<Option<String>>>> = HashMap::new();
        for ((table, _), mut cols) in indexes {
            cols.sort();
            by_table
                .entry(table)
                .or_default()
                .push(cols.into_iter().map(|(_, c)| c).collect());
        }
        let tables = columns
            .into_iter()
            .map(|(table, cols)| {
                let unique = by_table.remove(&table).unwrap_or_default();
                (table, table_keys(&cols, unique))
            })
            .collect();
        KeyMap { tables }
    }
}

fn table_keys(columns: &[ColumnRow], unique: Vec<Vec<Option<String>>>) -> TableKeys {
    let without_rowid = columns.first().is_some_and(|c| c.flags & 1 == 1);
    let collates = columns
        .first()
        .is_some_and(|c| c.table_sql.to_ascii_lowercase().contains("collate"));
    let stored = |name: &str| columns.iter().find(|c| c.name == name && c.flags & 2 == 0);
    let mut keys = Vec::new();
    let mut rowid_names = Vec::new();
    if !without_rowid {
        rowid_names = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .filter(|n| !columns.iter().any(|c| c.name == *n))
            .map(str::to_string)
            .collect();
        let pk: Vec<&ColumnRow> = columns.iter().filter(|c| c.pk > 0).collect();
        if let [only] = pk.as_slice() {
            // An INTEGER PRIMARY KEY names the rowid, unless it has an index of its own (`…
            // PRIMARY KEY DESC` is no alias): then it is one of the unique keys below.
            let indexed = unique
                .iter()
                .any(|index| index.len() == 1 && index[0].as_deref() == Some(&only.name));
            if only.declared.eq_ignore_ascii_case("INTEGER") && !indexed {
                rowid_names.push(only.name.clone());
            }
        }
        keys.push(UniqueKey {
            columns: vec![ROWID.to_string()],
            affinities: vec![Affinity::Numeric],
        });
    }
    if !collates {
        for index in unique {
            let plain: Option<Vec<&ColumnRow>> = index
                .iter()
                .map(|c| c.as_deref().and_then(stored))
                .collect();
            let Some(plain) = plain else { continue };
            let key = UniqueKey {
                columns: plain.iter().map(|c| c.name.clone()).collect(),
                affinities: plain.iter().map(|c| affinity(&c.declared)).collect(),
            };
            if !plain.is_empty() && !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    TableKeys { keys, rowid_names }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(table: &str, name: &str, ty: &str, pk: i64, flags: i64, sql: &str) -> Vec<Value> {
        vec![
            json!("c"),
            json!(table),
            json!(name),
            json!(ty),
            json!(pk),
            json!(flags),
            json!(sql),
        ]
    }

    fn idx(table: &str, index: &str, column: Option<&str>, seq: i64) -> Vec<Value> {
        vec![
            json!("u"),
            json!(table),
            json!(index),
            json!(column),
            json!("u"),
            json!(seq),
            Value::Null,
        ]
    }

    fn pins(columns: &[(&str, Vec<Literal>)]) -> TablePins {
        TablePins {
            table: "t".into(),
            columns: columns
                .iter()
                .map(|(c, l)| (c.to_string(), l.clone()))
                .collect(),
        }
    }

    fn n(v: &str) -> Literal {
        Literal::number(v).unwrap()
    }

    fn s(v: &str) -> Literal {
        Literal::Text(v.into())
    }

    #[test]
    fn keys_come_from_the_catalog_with_their_affinities() {
        let sql = "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE, a INT, b)";
        let map = KeyMap::from_rows(&[
            col("T", "id", "INTEGER", 1, 0, sql),
            col("T", "email", "TEXT", 0, 0, sql),
            col("T", "a", "INT", 0, 0, sql),
            col("T", "b", "", 0, 0, sql),
            idx("T", "a_autoindex_t_1", Some("email"), 0),
            idx("T", "t_ab", Some("b"), 1),
            idx("T", "t_ab", Some("a"), 0),
            idx("T", "t_expr", None, 0),
        ]);
        let t = map.table("t").unwrap();
        let ids: Vec<String> = t.keys.iter().map(UniqueKey::id).collect();
        assert_eq!(ids, ["rowid", "email", "a,b"], "indexes by name");
        let pinned = t
            .pinned_rows(&pins(&[("id", vec![n("5"), n("2.0")])]))
            .unwrap();
        assert_eq!(pinned.key.id(), "rowid");
        assert_eq!(pinned.tuples, ["n:2", "n:5"]);
        assert!(t.pinned_rows(&pins(&[("id", vec![s("5")])])).is_none());
        assert_eq!(
            t.pinned_rows(&pins(&[("email", vec![s("x")])]))
                .unwrap()
                .tuples,
            ["s:x"]
        );
        assert!(
            t.pinned_rows(&pins(&[("email", vec![n("1")])])).is_none(),
            "a number would be converted to text"
        );
        assert!(t.pinned_rows(&pins(&[("a", vec![n("1")])])).is_none());
        let ab = t
            .pinned_rows(&pins(&[("b", vec![s("q"), n("3")]), ("a", vec![n("1")])]))
            .unwrap();
        assert_eq!(ab.tuples, ["n:1\u{1f}n:3", "n:1\u{1f}s:q"]);
        assert!(map.table("v").is_none(), "not in the catalog: no keys");
    }

    #[test]
    fn without_rowid_collations_and_shadowed_rowids() {
        let map = KeyMap::from_rows(&[
            col(
                "w",
                "k",
                "TEXT",
                1,
                1,
                "CREATE TABLE w(k TEXT PRIMARY KEY) WITHOUT ROWID",
            ),
            idx("w", "sqlite_autoindex_w_1", Some("k"), 0),
            col(
                "c",
                "e",
                "TEXT",
                0,
                0,
                "CREATE TABLE c(e TEXT COLLATE NOCASE UNIQUE)",
            ),
            idx("c", "sqlite_autoindex_c_1", Some("e"), 0),
            col("r", "oid", "TEXT", 0, 0, "CREATE TABLE r(oid TEXT)"),
        ]);
        let w = map.table("w").unwrap();
        assert_eq!(w.keys.len(), 1);
        assert!(w.pinned_rows(&pins(&[("rowid", vec![n("1")])])).is_none());
        assert!(w.pinned_rows(&pins(&[("k", vec![s("a")])])).is_some());
        let c = map.table("c").unwrap();
        assert!(c.pinned_rows(&pins(&[("e", vec![s("a")])])).is_none());
        assert!(c.pinned_rows(&pins(&[("rowid", vec![n("1")])])).is_some());
        let r = map.table("r").unwrap();
        assert!(r.pinned_rows(&pins(&[("oid", vec![n("1")])])).is_none());
        assert!(r.pinned_rows(&pins(&[("_rowid_", vec![n("1")])])).is_some());
    }

    #[test]
    fn feed_values_and_literals_share_one_form() {
        assert_eq!(canonical_json(&json!(5)), n("5").canonical());
        assert_eq!(canonical_json(&json!(5.0)), n("5").canonical());
        assert_eq!(canonical_json(&json!(5.5)), n("5.5").canonical());
        assert_eq!(canonical_json(&json!(1000)), n("1e3").canonical());
        assert_eq!(canonical_json(&json!(-3)), n("-3").canonical());
        assert_eq!(canonical_json(&json!("5")), s("5").canonical());
        assert_ne!(canonical_json(&json!("5")), n("5").canonical());
        assert_ne!(canonical_json(&Value::Null), s("null").canonical());
        let row = json!({"a": 1, "b": "q"});
        let map: HashMap<String, &Value> = row
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect();
        assert_eq!(
            tuple_of_row(&map, &["a".into(), "b".into()]).as_deref(),
            Some("n:1\u{1f}s:q")
        );
        assert_eq!(tuple_of_row(&map, &["c".into()]), None);
    }
}
