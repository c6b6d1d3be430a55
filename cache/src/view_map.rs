//! The views of one database and the tables each one reads, so that a cached query over a view
//! is dropped when a table under it changes.
//!
//! The cache learns a database's views by asking the upstream (`SELECT name, sql FROM
//! sqlite_master WHERE type = 'view'`) the first time it caches a query in it, and forgets them
//! whenever that database's schema changes. A view whose definition the parser cannot read makes
//! every query over it depend on the whole database ([`ANY_TABLE`]).

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{visit_relations, Statement};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use crate::statement_analysis::table_name;

/// A dependency meaning "any table of the database".
pub const ANY_TABLE: &str = "*";

/// The statement that lists a database's views.
pub const VIEWS_QUERY: &str = "SELECT name, sql FROM sqlite_master WHERE type = 'view'";

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
