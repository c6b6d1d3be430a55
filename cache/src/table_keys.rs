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
//! value (`5`, `5.0` and `5e0` are one key), text as the key's collation compares it (byte for
//! byte under BINARY, ASCII letters folded under NOCASE, trailing spaces cut under RTRIM:
//! [`Collation`]). A literal is used only where SQLite's comparison would not convert it (a
//! number against a numeric column, text against a TEXT column, either against an untyped one),
//! and a key only when the equality the query states is the one its index enforces: the
//! query's `COLLATE`, or else the column's own collation (read from the table's definition), is
//! the index's (`pragma_index_xinfo`'s `coll`). So two values equal for SQLite's comparison
//! always share one canonical form. An index with another collation, over an expression, or
//! partial (the change feed does not carry its columns) is no key.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use sqlparser::ast::{ColumnOption, Statement};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use crate::statement_analysis::{Literal, Pin, TablePins};

/// The catalog query: one row per view (`v`, name, sql), per column of a table (`c`, table,
/// column, declared type, pk, `wr + 2 * hidden`, table sql) and per column of a full unique
/// index (`u`, table, index, column or NULL for an expression, origin, position, collation).
pub const SCHEMA_QUERY: &str = "SELECT 'v', name, sql, NULL, NULL, NULL, NULL FROM sqlite_master \
     WHERE type = 'view' \
     UNION ALL SELECT 'c', t.name, c.name, c.type, c.pk, t.wr + 2 * c.hidden, m.sql \
     FROM pragma_table_list t JOIN sqlite_master m ON m.type = 'table' AND m.name = t.name, \
     pragma_table_xinfo(t.name) c WHERE t.schema = 'main' AND t.type = 'table' \
     UNION ALL SELECT 'u', m.name, il.name, ii.name, il.origin, ii.seqno, ii.coll \
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

/// SQLite's built-in collations: how a key's index compares text, and so how its values are
/// folded into one canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collation {
    /// Byte for byte.
    Binary,
    /// ASCII letters without case (SQLite folds nothing else).
    Nocase,
    /// Byte for byte, trailing spaces ignored.
    Rtrim,
}

impl Collation {
    /// The built-in collation `name` (any case), `None` for any other.
    pub fn named(name: &str) -> Option<Collation> {
        match name.to_ascii_lowercase().as_str() {
            "binary" => Some(Collation::Binary),
            "nocase" => Some(Collation::Nocase),
            "rtrim" => Some(Collation::Rtrim),
            _ => None,
        }
    }

    /// The form every text equal to `canonical`'s under this collation has (numbers and other
    /// values unchanged).
    fn fold(self, canonical: String) -> String {
        let Some(text) = canonical.strip_prefix("s:") else {
            return canonical;
        };
        match self {
            Collation::Binary => canonical,
            Collation::Nocase => format!("s:{}", text.to_ascii_lowercase()),
            Collation::Rtrim => format!("s:{}", text.trim_end_matches(' ')),
        }
    }
}

/// A key column: its name as the change feed names it (lower case, `rowid` for the rowid) and
/// the collation its index compares it by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyColumn {
    /// The column.
    pub name: String,
    /// Its index's collation.
    pub collation: Collation,
}

/// A key's name in the store: its columns joined by commas, each with its collation unless it
/// is BINARY.
pub fn key_id(columns: &[KeyColumn]) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|c| match c.collation {
            Collation::Binary => c.name.clone(),
            other => format!("{}/{other:?}", c.name).to_lowercase(),
        })
        .collect();
    names.join(",")
}

/// One unique key: its columns and how each compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// The key's columns, in index order.
    pub columns: Vec<KeyColumn>,
    affinities: Vec<Affinity>,
    /// Each column's own collation (what a query compares it by without a `COLLATE`); `None`
    /// when the table's definition could not be read.
    declared: Vec<Option<Collation>>,
}

impl UniqueKey {
    /// The key's name in the store (see [`key_id`]).
    pub fn id(&self) -> String {
        key_id(&self.columns)
    }

    /// True when `pin` compares column `i` by the key's collation.
    fn compares_as_index(&self, i: usize, pin: &Pin) -> bool {
        let query = match &pin.collation {
            Some(name) => Collation::named(name),
            None => self.declared[i],
        };
        query == Some(self.columns[i].collation)
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
    /// with literals that compare exactly, by the key's own equality; `None`: the query
    /// depends on the whole table.
    pub fn pinned_rows(&self, pins: &TablePins) -> Option<PinnedRows> {
        self.keys.iter().find_map(|key| {
            let lists: Option<Vec<Vec<String>>> = (0..key.columns.len())
                .map(|i| self.values_of(key, i, pins))
                .collect();
            let tuples = cross_product(&lists?)?;
            Some(PinnedRows {
                key: key.clone(),
                tuples,
            })
        })
    }

    /// The canonical values `pins` allow in column `i` of `key` (the shortest list when
    /// several pins name it), when a pin compares it as the key's index does.
    fn values_of(&self, key: &UniqueKey, i: usize, pins: &TablePins) -> Option<Vec<String>> {
        let column = &key.columns[i];
        // The rowid is an integer: no collation applies to it.
        let rowid = column.name == ROWID;
        let pin = pins
            .columns
            .iter()
            .filter(|p| match rowid {
                true => self.rowid_names.contains(&p.column),
                false => p.column == column.name && key.compares_as_index(i, p),
            })
            .filter(|p| p.literals.iter().all(|l| usable(l, key.affinities[i])))
            .min_by_key(|p| p.literals.len())?;
        let values = pin.literals.iter().map(Literal::canonical);
        Some(values.map(|v| column.collation.fold(v)).collect())
    }
}

fn usable(literal: &Literal, affinity: Affinity) -> bool {
    matches!(
        (literal, affinity),
        (Literal::Number(_), Affinity::Numeric | Affinity::None)
            | (Literal::Text(_), Affinity::Text | Affinity::None)
    )
}

fn cross_product(lists: &[Vec<String>]) -> Option<Vec<String>> {
    let mut tuples = vec![String::new()];
    for (i, list) in lists.iter().enumerate() {
        if list.is_empty() || tuples.len() * list.len() > MAX_TUPLES {
            return None;
        }
        tuples = tuples
            .iter()
            .flat_map(|prefix| {
                list.iter().map(move |value| {
                    let sep = if i == 0 { "" } else { "\u{1f}" };
                    format!("{prefix}{sep}{value}")
                })
            })
            .collect();
    }
    tuples.sort();
    tuples.dedup();
    Some(tuples)
}

/// The tuple of `columns` in a changed row's key object (keys compared in lower case, values
/// folded by each column's collation), or `None` when the object lacks one of them (then any
/// tuple may have changed).
pub fn tuple_of_row(row: &HashMap<String, &Value>, columns: &[KeyColumn]) -> Option<String> {
    let mut out = String::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push('\u{1f}');
        }
        out.push_str(&c.collation.fold(canonical_json(row.get(&c.name)?)));
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

/// An index's columns by position: the column (`None`: an expression) and its collation.
type IndexColumns = Vec<(i64, Option<String>, Option<String>)>;

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
                        .push((int(row, 5).unwrap_or(0), column, text(row, 6)));
                }
                _ => {}
            }
        }
        let mut by_table: HashMap<String, Vec<Vec<IndexColumn>>> = HashMap::new();
        for ((table, _), mut cols) in indexes {
            cols.sort();
            by_table.entry(table).or_default().push(
                cols.into_iter()
                    .map(|(_, column, collation)| IndexColumn { column, collation })
                    .collect(),
            );
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

/// One column of a unique index: the table's column (`None`: an expression) and the index's
/// collation for it.
struct IndexColumn {
    column: Option<String>,
    collation: Option<String>,
}

/// Each column's own collation by lower-case name, as the table's definition declares it
/// (absent: BINARY); `None` when the definition mentions a collation but cannot be read. A
/// collation other than the built-in ones maps to `None`.
fn declared_collations(table_sql: &str) -> Option<HashMap<String, Option<Collation>>> {
    if !table_sql.to_ascii_lowercase().contains("collate") {
        return Some(HashMap::new());
    }
    let statements = Parser::parse_sql(&SQLiteDialect {}, table_sql).ok()?;
    let [Statement::CreateTable(create)] = statements.as_slice() else {
        return None;
    };
    let mut out = HashMap::new();
    for column in &create.columns {
        let named: Vec<Option<Collation>> = column
            .options
            .iter()
            .filter_map(|o| match &o.option {
                ColumnOption::Collation(name) => Some(match name.0.as_slice() {
                    [only] => only.as_ident().and_then(|i| Collation::named(&i.value)),
                    _ => None,
                }),
                _ => None,
            })
            .collect();
        let collation = match named.as_slice() {
            [] => continue,
            [one] => *one,
            _ => None,
        };
        out.insert(column.name.value.to_lowercase(), collation);
    }
    Some(out)
}

fn table_keys(columns: &[ColumnRow], unique: Vec<Vec<IndexColumn>>) -> TableKeys {
    let without_rowid = columns.first().is_some_and(|c| c.flags & 1 == 1);
    let declared = declared_collations(columns.first().map_or("", |c| c.table_sql.as_str()));
    let declared_of = |name: &str| match &declared {
        Some(map) => map.get(name).copied().unwrap_or(Some(Collation::Binary)),
        None => None,
    };
    // Hidden (of a virtual table) and generated columns are not in the change feed's keys.
    let stored = |name: &str| columns.iter().find(|c| c.name == name && c.flags >> 1 == 0);
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
                .any(|index| index.len() == 1 && index[0].column.as_deref() == Some(&only.name));
            if only.declared.eq_ignore_ascii_case("INTEGER") && !indexed {
                rowid_names.push(only.name.clone());
            }
        }
        keys.push(UniqueKey {
            columns: vec![KeyColumn {
                name: ROWID.to_string(),
                collation: Collation::Binary,
            }],
            affinities: vec![Affinity::Numeric],
            declared: vec![Some(Collation::Binary)],
        });
    }
    for index in unique {
        let plain: Option<Vec<(&ColumnRow, Collation)>> = index
            .iter()
            .map(|c| {
                let column = c.column.as_deref().and_then(stored)?;
                Some((column, Collation::named(c.collation.as_deref()?)?))
            })
            .collect();
        let Some(plain) = plain else { continue };
        let key = UniqueKey {
            columns: plain
                .iter()
                .map(|(c, collation)| KeyColumn {
                    name: c.name.clone(),
                    collation: *collation,
                })
                .collect(),
            affinities: plain.iter().map(|(c, _)| affinity(&c.declared)).collect(),
            declared: plain.iter().map(|(c, _)| declared_of(&c.name)).collect(),
        };
        if !plain.is_empty() && !keys.contains(&key) {
            keys.push(key);
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
        idx_coll(table, index, column, seq, "BINARY")
    }

    fn idx_coll(
        table: &str,
        index: &str,
        column: Option<&str>,
        seq: i64,
        coll: &str,
    ) -> Vec<Value> {
        vec![
            json!("u"),
            json!(table),
            json!(index),
            json!(column),
            json!("u"),
            json!(seq),
            json!(coll),
        ]
    }

    /// Pins of table `t`; a column written `c collate x` names the collation `x`.
    fn pins(columns: &[(&str, Vec<Literal>)]) -> TablePins {
        TablePins {
            table: "t".into(),
            columns: columns
                .iter()
                .map(|(c, l)| {
                    let (column, collation) = match c.split_once(" collate ") {
                        Some((c, x)) => (c, Some(x.to_string())),
                        None => (*c, None),
                    };
                    Pin {
                        column: column.to_string(),
                        collation,
                        literals: l.clone(),
                    }
                })
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
    fn without_rowid_generated_and_shadowed_rowids() {
        let g = "CREATE TABLE g(a INT, v INT AS (a + 1) UNIQUE, s INT AS (a + 2) STORED UNIQUE)";
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
            col("g", "a", "INT", 0, 0, g),
            col("g", "v", "INT", 0, 4, g),
            col("g", "s", "INT", 0, 6, g),
            idx("g", "sqlite_autoindex_g_1", Some("v"), 0),
            idx("g", "sqlite_autoindex_g_2", Some("s"), 0),
            col("r", "oid", "TEXT", 0, 0, "CREATE TABLE r(oid TEXT)"),
        ]);
        let w = map.table("w").unwrap();
        assert_eq!(w.keys.len(), 1);
        assert!(w.pinned_rows(&pins(&[("rowid", vec![n("1")])])).is_none());
        assert!(w.pinned_rows(&pins(&[("k", vec![s("a")])])).is_some());
        let g = map.table("g").unwrap();
        let ids: Vec<String> = g.keys.iter().map(UniqueKey::id).collect();
        assert_eq!(ids, ["rowid"], "the feed carries no generated column");
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
        let binary = |name: &str| KeyColumn {
            name: name.into(),
            collation: Collation::Binary,
        };
        assert_eq!(
            tuple_of_row(&map, &[binary("a"), binary("b")]).as_deref(),
            Some("n:1\u{1f}s:q")
        );
        assert_eq!(tuple_of_row(&map, &[binary("c")]), None);
    }

    /// A key is used only when the query compares by its index's collation: a column's own
    /// collation (also one of several in the table), an index's (`CREATE UNIQUE INDEX … (c
    /// COLLATE x)`, `UNIQUE (c COLLATE x)`), or the query's `COLLATE`; values are folded as
    /// the collation compares them, literals and the feed's alike.
    #[test]
    fn keys_compare_as_their_index_does() {
        let sql = "CREATE TABLE t(id INTEGER PRIMARY KEY, e TEXT COLLATE NOCASE UNIQUE, \
                   b TEXT UNIQUE, r TEXT COLLATE \"RTRIM\", x TEXT, y TEXT, UNIQUE (x COLLATE nocase))";
        let map = KeyMap::from_rows(&[
            col("t", "id", "INTEGER", 1, 0, sql),
            col("t", "e", "TEXT", 0, 0, sql),
            col("t", "b", "TEXT", 0, 0, sql),
            col("t", "r", "TEXT", 0, 0, sql),
            col("t", "x", "TEXT", 0, 0, sql),
            col("t", "y", "TEXT", 0, 0, sql),
            idx_coll("t", "sqlite_autoindex_t_1", Some("e"), 0, "NOCASE"),
            idx("t", "sqlite_autoindex_t_2", Some("b"), 0),
            idx_coll("t", "sqlite_autoindex_t_3", Some("x"), 0, "NOCASE"),
            idx_coll("t", "t_r", Some("r"), 0, "RTRIM"),
            idx_coll("t", "t_y", Some("y"), 0, "NOCASE"),
            idx_coll("t", "t_custom", Some("y"), 0, "my_collation"),
        ]);
        let t = map.table("t").unwrap();
        let ids: Vec<String> = t.keys.iter().map(UniqueKey::id).collect();
        assert_eq!(
            ids,
            ["rowid", "e/nocase", "b", "x/nocase", "r/rtrim", "y/nocase"]
        );
        let tuples = |pin: (&str, Vec<Literal>)| t.pinned_rows(&pins(&[pin])).map(|p| p.tuples);
        assert_eq!(
            tuples(("e", vec![s("Ab"), s("aB")])),
            Some(vec!["s:ab".into()])
        );
        assert_eq!(
            tuples(("e collate nocase", vec![s("A")])),
            Some(vec!["s:a".into()])
        );
        assert_eq!(tuples(("e collate binary", vec![s("A")])), None);
        assert_eq!(tuples(("b", vec![s("A")])), Some(vec!["s:A".into()]));
        assert_eq!(tuples(("b collate nocase", vec![s("A")])), None);
        assert_eq!(
            tuples(("b collate BINARY", vec![s("A")])),
            Some(vec!["s:A".into()])
        );
        assert_eq!(
            tuples(("x", vec![s("A")])),
            None,
            "x itself compares by BINARY"
        );
        assert_eq!(
            tuples(("x collate NoCase", vec![s("A")])),
            Some(vec!["s:a".into()])
        );
        assert_eq!(tuples(("r", vec![s("a  ")])), Some(vec!["s:a".into()]));
        assert_eq!(tuples(("y", vec![s("A")])), None, "an index-only collation");
        assert_eq!(
            tuples(("y collate nocase", vec![s("A")])),
            Some(vec!["s:a".into()])
        );
        assert_eq!(tuples(("y collate my_collation", vec![s("A")])), None);
        assert_eq!(
            tuples(("id collate nocase", vec![n("3")])),
            Some(vec!["n:3".into()])
        );
        let e = KeyColumn {
            name: "e".into(),
            collation: Collation::Nocase,
        };
        let row = json!({"E": "AB", "n": 5});
        let row: HashMap<String, &Value> = row
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect();
        assert_eq!(tuple_of_row(&row, &[e]).as_deref(), Some("s:ab"));
        let unreadable = "CREATE TABLE t(e TEXT COLLATE NOCASE UNIQUE) STRICT, WITHOUT ROWID junk";
        let map = KeyMap::from_rows(&[
            col("t", "e", "TEXT", 0, 0, unreadable),
            idx_coll("t", "sqlite_autoindex_t_1", Some("e"), 0, "NOCASE"),
        ]);
        let t = map.table("t").unwrap();
        assert_eq!(t.keys.len(), 2);
        assert!(
            t.pinned_rows(&pins(&[("e", vec![s("a")])])).is_none(),
            "unread: no key"
        );
        assert!(t
            .pinned_rows(&pins(&[("e collate nocase", vec![s("a")])]))
            .is_some());
    }
}
