//! DirkDB's joins where SQLite's differ (DIRKDB-DIALECT.md §4.2; checked against the Java
//! source's `Relation.jointureExterneGauche` / `…Droite` / `…Pleine` and `NaturalJoinHelper`):
//!
//! * **order**: an outer join answers its matched rows first, in product order (left-major),
//!   then the padded rows — each left row without a match (left join), each right row without
//!   one (right join), or both, left ones first (full join: left join ∪ right join). SQLite
//!   interleaves them;
//! * **natural joins** pair rows whose same-named columns are equal by DirkDB's row equality, in
//!   which null equals null (SQLite's `NATURAL JOIN` uses `=`); their `#ka` filters the joined
//!   relation before any later join.
//!
//! Each source is numbered in its scan order (`row_number() OVER ()`, a column `_dirk_p<k>`
//! that is never answered) and the select is ordered by DirkDB's key: for every outer join, from
//! the last to the first, whether (and on which side) its row is padded, then the sources'
//! numbers in order. This needs each source's column names (to list `*` without the numbers
//! and to pair a natural join's columns), so it runs only with a schema that can prepare them;
//! without one (classification, cache keys) the select keeps SQLite's joins.

use std::collections::HashMap;

use super::ast::*;
use super::error::DirkError;
use super::translate::{
    column_sql, dedups, group_item_sql, group_order_sql, grouped, ident, item_sql, origin_alias,
    push_limit, source_sql, truth_sql, Schema,
};

/// One source of the join chain as the ordered select reads it.
struct Source {
    /// What its columns are qualified with.
    alias: String,
    /// Its columns' names, in order.
    columns: Vec<String>,
    /// Its scan-order number, qualified.
    position: String,
}

/// The select in DirkDB's join order and pairing, or `None` when the schema cannot name the
/// sources' columns.
pub(super) fn ordered_select(s: &Select, schema: &dyn Schema) -> Result<Option<String>, DirkError> {
    let Some(from) = &s.from else {
        return Ok(None);
    };
    let dedup = dedups(s);
    let origins: Vec<&Origin> = std::iter::once(from)
        .chain(s.joins.iter().map(|j| &j.origin))
        .collect();
    let mut sources = Vec::with_capacity(origins.len());
    let mut positioned = Vec::with_capacity(origins.len());
    for (k, origin) in origins.iter().enumerate() {
        let inner = source_sql(origin, dedup, schema)?;
        let Some(columns) = schema.columns(&format!("SELECT * FROM {inner}")) else {
            return Ok(None);
        };
        let alias = origin_alias(origin);
        let number = format!("_dirk_p{k}");
        positioned.push(format!(
            "(SELECT *, row_number() OVER () AS {number} FROM {inner}) AS {}",
            ident(&alias)
        ));
        sources.push(Source {
            position: format!("{}.{number}", ident(&alias)),
            alias,
            columns: columns.into_iter().map(|(name, _)| name).collect(),
        });
    }
    let mut chain = Chain {
        visible: sources[0].columns.iter().map(|c| (0, c.clone())).collect(),
        common: HashMap::new(),
        flags: Vec::new(),
    };
    let mut sql_from = positioned[0].clone();
    for (k, join) in s.joins.iter().enumerate().map(|(i, j)| (i + 1, j)) {
        sql_from.push_str(&chain.join(k, join, &sources, &positioned[k]));
    }
    Ok(Some(chain.select(s, &sources, &sql_from)))
}

/// The join chain so far: its visible columns, the natural joins' common names, and the
/// outer joins' padding flags.
struct Chain {
    /// (source, column name) of every column the relation so far has.
    visible: Vec<(usize, String)>,
    /// A natural join's common column name → the alias of the left column it kept.
    common: HashMap<String, String>,
    /// Per outer join, the SQL of "this row is padded" (0 matched, 1 or 2 padded).
    flags: Vec<String>,
}

impl Chain {
    /// The SQL of join `k` onto the chain; updates the visible columns and flags.
    fn join(&mut self, k: usize, join: &Join, sources: &[Source], right: &str) -> String {
        let source = &sources[k];
        let on = |chain: &Chain| join.on.as_ref().map(|e| truth_sql(&chain.qualified(e)));
        let clause = match join.kind {
            JoinKind::Inner => match on(self) {
                Some(on) => format!(" JOIN {right} ON {on}"),
                None => format!(" CROSS JOIN {right}"),
            },
            JoinKind::Natural => {
                let mut conditions = self.natural_pairs(k, sources);
                conditions.extend(on(self));
                if conditions.is_empty() {
                    format!(" CROSS JOIN {right}")
                } else {
                    format!(" JOIN {right} ON {}", conditions.join(" AND "))
                }
            }
            kind => {
                let earlier_padded = sources[..k]
                    .iter()
                    .map(|s| format!("{} IS NULL", s.position))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let (word, flag) = match kind {
                    JoinKind::Left => ("LEFT", format!("({} IS NULL)", source.position)),
                    JoinKind::Right => ("RIGHT", format!("({earlier_padded})")),
                    _ => (
                        "FULL",
                        format!(
                            "(CASE WHEN {} IS NULL THEN 1 WHEN {earlier_padded} THEN 2 ELSE 0 END)",
                            source.position
                        ),
                    ),
                };
                self.flags.push(flag);
                format!(
                    " {word} JOIN {right} ON {}",
                    on(self).unwrap_or_else(|| "1".into())
                )
            }
        };
        if join.kind != JoinKind::Natural {
            self.visible
                .extend(source.columns.iter().map(|c| (k, c.clone())));
        }
        clause
    }

    /// A natural join's pairing (NaturalJoinHelper): each left column is paired with the first
    /// right column of the same name, by DirkDB's row equality (`IS`: null equals null); the
    /// paired right columns leave the relation.
    fn natural_pairs(&mut self, k: usize, sources: &[Source]) -> Vec<String> {
        let source = &sources[k];
        let mut paired = vec![false; source.columns.len()];
        let mut conditions = Vec::new();
        for (left, name) in &self.visible {
            if let Some(j) = source.columns.iter().position(|c| c == name) {
                paired[j] = true;
                let left_alias = &sources[*left].alias;
                conditions.push(format!(
                    "{}.{} IS {}.{}",
                    ident(left_alias),
                    ident(name),
                    ident(&source.alias),
                    ident(&source.columns[j])
                ));
                self.common
                    .entry(name.clone())
                    .or_insert_with(|| left_alias.clone());
            }
        }
        self.visible.extend(
            source
                .columns
                .iter()
                .zip(&paired)
                .filter(|(_, p)| !**p)
                .map(|(c, _)| (k, c.clone())),
        );
        conditions
    }

    /// `e` with unqualified references to a natural join's common columns qualified by the
    /// source whose column the join kept (SQL would find them ambiguous).
    fn qualified(&self, e: &Expr) -> Expr {
        match e {
            Expr::Column(c) if c.origin.is_none() => match self.common.get(&c.name) {
                Some(alias) => Expr::Column(ColumnRef {
                    origin: Some(alias.clone()),
                    name: c.name.clone(),
                }),
                None => e.clone(),
            },
            Expr::Call(f, args) => {
                Expr::Call(f.clone(), args.iter().map(|a| self.qualified(a)).collect())
            }
            Expr::Neg(x) => Expr::Neg(Box::new(self.qualified(x))),
            Expr::Not(x) => Expr::Not(Box::new(self.qualified(x))),
            Expr::IsNull(x, not) => Expr::IsNull(Box::new(self.qualified(x)), *not),
            Expr::Binary(l, op, r) => Expr::Binary(
                Box::new(self.qualified(l)),
                *op,
                Box::new(self.qualified(r)),
            ),
            other => other.clone(),
        }
    }

    /// The whole select over the chain, in DirkDB's row order.
    fn select(&self, s: &Select, sources: &[Source], from: &str) -> String {
        let grouped = grouped(s);
        let items = match &s.items {
            Items::All => self
                .visible
                .iter()
                .map(|(k, c)| format!("{}.{}", ident(&sources[*k].alias), ident(c)))
                .collect::<Vec<_>>()
                .join(", "),
            Items::List(items) => items
                .iter()
                .map(|(e, a)| {
                    let e = self.qualified(e);
                    if grouped {
                        group_item_sql(&e, a.as_deref())
                    } else {
                        item_sql(&e, a.as_deref())
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut sql = format!("SELECT {items} FROM {from}");
        if let Some(f) = &s.filter {
            sql.push_str(&format!(" WHERE {}", truth_sql(&self.qualified(f))));
        }
        if let Some(group) = s.group.as_ref().filter(|g| !g.is_empty()) {
            let keys: Vec<String> = group
                .iter()
                .map(|c| match self.qualified(&Expr::Column(c.clone())) {
                    Expr::Column(c) => column_sql(&c),
                    _ => column_sql(c),
                })
                .collect();
            sql.push_str(&format!(" GROUP BY {}", keys.join(", ")));
            sql.push_str(&group_order_sql(&keys, None));
        } else {
            let order: Vec<String> = self
                .flags
                .iter()
                .rev()
                .cloned()
                .chain(sources.iter().map(|s| s.position.clone()))
                .collect();
            sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
        }
        push_limit(&mut sql, s);
        sql
    }
}
