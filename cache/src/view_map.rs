//! The views of one database and the tables each one reads, so that a cached query over a view
//! is dropped when a table under it changes; with the tables' keys ([`DbSchema`]), what a
//! cached query depends on.
//!
//! The cache learns a database's views and keys by asking the upstream
//! (`crate::table_keys::SCHEMA_QUERY`) the first time it caches a query in it, and forgets them
//! whenever that database's schema changes. A view whose definition the parser cannot read makes
//! every query over it depend on the whole database ([`ANY_TABLE`]).

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{visit_relations, Statement};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use crate::result_store::{Dependencies, KeyedRows};
use crate::statement_analysis::{table_name, TablePins};
use crate::table_keys::KeyMap;

/// A dependency meaning "any table of the database".
pub const ANY_TABLE: &str = "*";

/// What the cache knows of one database's schema: its views and its tables' keys, both from
/// one catalog query (`crate::table_keys::SCHEMA_QUERY`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DbSchema {
    /// The views.
    pub views: ViewMap,
    /// The tables' unique keys.
    pub keys: KeyMap,
}

impl DbSchema {
    /// Builds the schema from the rows of `SCHEMA_QUERY`.
    pub fn from_rows(rows: &[Vec<serde_json::Value>]) -> DbSchema {
        let views = ViewMap::from_definitions(rows.iter().filter_map(|row| {
            match (
                row.first()?.as_str()?,
                row.get(1)?.as_str(),
                row.get(2)?.as_str(),
            ) {
                ("v", Some(name), Some(sql)) => Some((name, sql)),
                _ => None,
            }
        }));
        DbSchema {
            views,
            keys: KeyMap::from_rows(rows),
        }
    }

    /// What a query naming `relations` and pinning `pins` depends on: keyed rows for each
    /// pinned table whose pins cover one of its keys (and that no view reads too), whole
    /// tables for everything else (views resolved to their tables).
    pub fn dependencies(&self, relations: &[String], pins: &[TablePins]) -> Dependencies {
        let mut keyed: Vec<KeyedRows> = pins
            .iter()
            .filter_map(|p| {
                let rows = self.keys.table(&p.table)?.pinned_rows(p)?;
                Some(KeyedRows {
                    table: p.table.clone(),
                    columns: rows.key.columns.into(),
                    tuples: rows.tuples,
                })
            })
            .collect();
        let others: Vec<String> = relations
            .iter()
            .filter(|r| !keyed.iter().any(|k| k.table == **r))
            .cloned()
            .collect();
        let tables = self.views.resolve(&others);
        // A keyed table a view reads too is read whole.
        keyed.retain(|k| {
            let whole = tables.contains(&k.table);
            !whole
        });
        Dependencies {
            tables,
            rows: keyed,
        }
    }
}

/// Views by lower-case name: the relations each names, or `None` when it could not be parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ViewMap {
    views: HashMap<String, Option<Vec<String>>>,
}

/// Deepest chain of views over views that is followed.
const MAX_DEPTH: usize = 32;

impl ViewMap {
    /// Builds the map from `(name, sql)` rows of `sqlite_master`.
    pub fn from_definitions<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> ViewMap {
        let views = rows
            .into_iter()
            .map(|(name, sql)| (name.to_lowercase(), view_relations(sql)))
            .collect();
        ViewMap { views }
    }

    /// The tables a query naming `relations` depends on: every relation, and for each view the
    /// relations under it, recursively; [`ANY_TABLE`] when a view cannot be resolved.
    pub fn resolve(&self, relations: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut pending: Vec<(String, usize)> = relations.iter().map(|r| (r.clone(), 0)).collect();
        while let Some((name, depth)) = pending.pop() {
            if out.contains(&name) {
                continue;
            }
            match self.views.get(&name) {
                Some(Some(under)) if depth < MAX_DEPTH => {
                    pending.extend(under.iter().map(|u| (u.clone(), depth + 1)));
                }
                Some(_) => out.push(ANY_TABLE.to_string()),
                None => {}
            }
            out.push(name);
        }
        out
    }
}

fn view_relations(sql: &str) -> Option<Vec<String>> {
    let statements = Parser::parse_sql(&SQLiteDialect {}, sql).ok()?;
    let [Statement::CreateView(view)] = statements.as_slice() else {
        return None;
    };
    let mut relations = Vec::new();
    let _ = visit_relations(&view.query, |name| {
        relations.extend(table_name(name));
        ControlFlow::<()>::Continue(())
    });
    Some(relations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_resolve_to_their_tables_recursively() {
        let map = ViewMap::from_definitions([
            (
                "Rich",
                "CREATE VIEW Rich AS SELECT * FROM customers WHERE balance > 100",
            ),
            (
                "rich_orders",
                "CREATE VIEW rich_orders AS SELECT o.* FROM orders o JOIN rich r ON r.id = o.cid",
            ),
            ("broken", "CREATE VIEW broken AS this is not sql"),
        ]);
        let mut deps = map.resolve(&["rich_orders".to_string()]);
        deps.sort();
        assert_eq!(deps, vec!["customers", "orders", "rich", "rich_orders"]);
        assert_eq!(map.resolve(&["t".to_string()]), vec!["t"]);
        assert!(map
            .resolve(&["broken".to_string()])
            .contains(&ANY_TABLE.to_string()));
    }

    #[test]
    fn pinned_tables_depend_on_their_rows_and_the_rest_on_whole_tables() {
        use crate::statement_analysis::{analyze, Analysis};
        use serde_json::json;
        let sql = "CREATE TABLE t(id INTEGER PRIMARY KEY, v)";
        let c = |t: &str, name: &str, ty: &str, pk: i64| {
            vec![
                json!("c"),
                json!(t),
                json!(name),
                json!(ty),
                json!(pk),
                json!(0),
                json!(sql),
            ]
        };
        let schema = DbSchema::from_rows(&[
            vec![
                json!("v"),
                json!("tv"),
                json!("CREATE VIEW tv AS SELECT * FROM t"),
                json!(null),
                json!(null),
                json!(null),
                json!(null),
            ],
            c("t", "id", "INTEGER", 1),
            c("t", "v", "", 0),
            c("u", "id", "INTEGER", 1),
        ]);
        let deps = |q: &str| {
            let Analysis::Cacheable(read) = analyze(q) else {
                panic!("{q}")
            };
            schema.dependencies(&read.relations, &read.pins)
        };
        let d = deps("SELECT * FROM t JOIN u ON u.v = t.v WHERE t.id = 3");
        assert_eq!(d.tables, ["u"]);
        assert_eq!(d.rows.len(), 1);
        assert_eq!(
            (d.rows[0].table.as_str(), d.rows[0].tuples.clone()),
            ("t", vec!["n:3".to_string()])
        );
        assert_eq!(crate::table_keys::key_id(&d.rows[0].columns), "rowid");
        let d = deps("SELECT * FROM t JOIN tv ON 1 WHERE t.id = 3");
        assert!(d.rows.is_empty(), "the view reads t whole: {d:?}");
        assert!(d.tables.contains(&"t".to_string()));
        let d = deps("SELECT * FROM t WHERE v = 3");
        assert_eq!((d.tables, d.rows), (vec!["t".to_string()], vec![]));
    }

    #[test]
    fn a_cycle_ends() {
        let map = ViewMap::from_definitions([
            ("a", "CREATE VIEW a AS SELECT * FROM b"),
            ("b", "CREATE VIEW b AS SELECT * FROM a"),
        ]);
        let mut deps = map.resolve(&["a".to_string()]);
        deps.sort();
        assert_eq!(deps, vec!["a", "b"]);
    }
}
