//! What the cache makes of one statement: a cacheable read (its key and the relations it
//! reads), a read it must pass on every time, a write (and what it can change), session state
//! (`USE`, transactions), or one of the cache's own commands.
//!
//! Everything is decided on the statement after the Malagasy translation, with `sqlparser`, so
//! `alaivo * ao t` and `SELECT * FROM t` are the same statement. The cache key is the parsed
//! statement printed back (`sqlparser`'s `Display`): keyword case and whitespace no longer
//! matter, identifiers and literals keep their exact spelling. One thing in the text does show in
//! the answer: SQLite names an unaliased expression column (`count(*)`, `1 + 1`) by its text, so
//! a statement with such a column keeps its exact text in the key, and only statements that
//! would get the same column names share an entry.

use std::ops::ControlFlow;
use std::sync::Arc;

use dirkdb_core::sql::classify::{classify, leading_words, StatementClass, TransactionControl};
use dirkdb_core::sql::lexer::tokenize;
use dirkdb_core::sql::translate;
use sqlparser::ast::{
    visit_expressions, visit_relations, BinaryOperator, Distinct, Expr, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, JoinConstraint, JoinOperator, ObjectName,
    Query, SelectItem, SetExpr, Statement, TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::SQLiteDialect;

use crate::row_refresh::{Projection, RowRefresh};
use sqlparser::parser::Parser;

/// What the cache does with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    /// A read whose result may be kept.
    Cacheable(CacheableRead),
    /// A read that goes upstream every time, and why.
    Uncacheable(&'static str),
    /// A statement that may change data.
    Write(WriteTargets),
    /// `USE <database>`.
    Use(String),
    /// Transaction control.
    Transaction(TransactionControl),
    /// A statement the cache answers itself.
    Command(CacheCommand),
    /// A statement the cache refuses, with the reason.
    Refused(&'static str),
}

/// A cacheable read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheableRead {
    /// The normalized statement: the key within the session's database.
    pub key: Arc<str>,
    /// The relations it names (lower case, without a schema prefix); views among them are
    /// resolved to their tables by the store.
    pub relations: Vec<String>,
    /// Tables whose rows the query restricts to columns equal to literals (see
    /// [`TablePins`]); the catalog says whether the columns form a key
    /// (`crate::table_keys`).
    pub pins: Vec<TablePins>,
    /// How its answer follows from its one row, when it is a point query on one table that a
    /// change of the row can refresh instead of drop (`crate::row_refresh`).
    pub refresh: Option<Arc<RowRefresh>>,
}

/// Columns of one table that a query pins to literals: every row it reads from the table has
/// one of the listed values in each listed column. Only for a table named once in the whole
/// statement, in the top-level FROM of a plain SELECT (no WITH, no set operation), directly or
/// as DirkDB's `(SELECT DISTINCT * FROM t) AS t`, pinned by `col = literal` or
/// `col IN (literal, …)` among the top-level AND terms of the WHERE clause or of an inner
/// join's ON. A `COLLATE` on either side of the `=` (or on the column of an `IN`) is kept with
/// the pin: it is the equality the query states, which a key must enforce to be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePins {
    /// The table (lower case).
    pub table: String,
    /// The pinned columns.
    pub columns: Vec<Pin>,
}

/// One column pinned to literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The column (lower case).
    pub column: String,
    /// The collation the query names for the comparison (`COLLATE x`, lower case, unquoted);
    /// `None`: the column's own collation applies.
    pub collation: Option<String>,
    /// The values it is pinned to.
    pub literals: Vec<Literal>,
}

/// A literal a column is pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A number, in canonical form (see `crate::table_keys::canonical_number`).
    Number(String),
    /// A string literal.
    Text(String),
}

impl Literal {
    /// A number literal's canonical form (`5`, `5.0` and `5e0` are one value).
    pub fn number(text: &str) -> Option<Literal> {
        let canonical = match text.parse::<i64>() {
            Ok(i) => format!("n:{i}"),
            Err(_) => {
                let f: f64 = text.parse().ok()?;
                if !f.is_finite() {
                    return None;
                }
                crate::table_keys::canonical_number(f)
            }
        };
        Some(Literal::Number(canonical))
    }

    /// The canonical text compared with the change feed's values.
    pub fn canonical(&self) -> String {
        match self {
            Literal::Number(n) => n.clone(),
            Literal::Text(t) => format!("s:{t}"),
        }
    }
}

/// What a write can change, when the change feed does not say (see
/// `crate::session`): the current database, or the one a `CREATE`/`DROP DATABASE` names. Which
/// tables or rows a write changed only the feed tells (triggers and foreign-key actions
/// included), so the write's text is not parsed for them: that would cost a full parse of
/// every write, whose texts rarely repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTargets {
    /// Anything in the current database.
    CurrentDatabase,
    /// A whole database by name (`CREATE`/`DROP DATABASE`).
    Database(String),
}

/// The cache's own statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCommand {
    /// `SHOW CACHE STATS` (Malagasy: `ASEHOY CACHE STATS`).
    ShowStats,
    /// `FLUSH CACHE`.
    Flush,
}

/// Functions whose result is not a function of the data (the time, randomness, the connection).
const VOLATILE_FUNCTIONS: [&str; 10] = [
    "random",
    "randomblob",
    "changes",
    "total_changes",
    "last_insert_rowid",
    "current_timestamp",
    "current_date",
    "current_time",
    "sqlite_offset",
    "load_extension",
];

/// Date and time functions: deterministic only with literal arguments other than `'now'`.
const TIME_FUNCTIONS: [&str; 7] = [
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
];

/// Longest statement whose analysis is remembered (a long one is dominated by its own work).
pub const MEMO_MAX_STATEMENT_BYTES: usize = 4096;

/// Analyses of recent statement texts, so a statement seen before costs one hash lookup instead
/// of a parse (clients repeat the same statements; this is what makes a hit cheap). A
/// `quick_cache` (S3-FIFO, a read lock and a hash probe per lookup), not `moka`: an analysis is a
/// pure function of the text, so no eviction order matters for correctness, and `moka`'s
/// bookkeeping of every read was a tenth of the cache's CPU on point-select hits
/// (BENCHMARKS.md, "The statement memo").
pub struct AnalysisMemo {
    memo: quick_cache::sync::Cache<Box<str>, Arc<Analysis>>,
}

impl AnalysisMemo {
    /// A memo of at most `capacity` statement texts.
    pub fn new(capacity: u64) -> AnalysisMemo {
        AnalysisMemo {
            memo: quick_cache::sync::Cache::new(
                usize::try_from(capacity.max(1)).unwrap_or(usize::MAX),
            ),
        }
    }

    /// The analysis of `sql`, from the memo or made now. Statements longer than
    /// [`MEMO_MAX_STATEMENT_BYTES`] are not remembered, so the memo's memory stays bounded.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        if sql.len() > MEMO_MAX_STATEMENT_BYTES {
            return Arc::new(analyze(sql));
        }
        if let Some(found) = self.memo.get(sql) {
            return found;
        }
        let analysis = Arc::new(analyze(sql));
        self.memo.insert(sql.into(), analysis.clone());
        analysis
    }
}

/// Analyzes one statement as a client sent it.
pub fn analyze(sql: &str) -> Analysis {
    let translated = translate(sql);
    if dirkdb_core::sql::limits::check_expression_depth(&translated).is_err() {
        return Analysis::Refused("expression too deep to analyze (limits.maxExpressionDepth)");
    }
    let words = leading_words(&translated, 4);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", "CACHE", "STATS"] => return Analysis::Command(CacheCommand::ShowStats),
        ["FLUSH", "CACHE"] => return Analysis::Command(CacheCommand::Flush),
        ["DIRK", "CHANGES"] => {
            return Analysis::Refused(
                "the change feed is not served by the cache; subscribe to the proxy or a server",
            )
        }
        _ => {}
    }
    match classify(sql) {
        StatementClass::Use(db) => Analysis::Use(db),
        StatementClass::Transaction(control) => Analysis::Transaction(control),
        StatementClass::Write => Analysis::Write(write_targets(&translated)),
        StatementClass::Read => {
            let dirkdb = dirkdb_core::sql::dirkdb::routing_sql_of(sql).is_some();
            read_analysis(&translated, dirkdb)
        }
    }
}

/// What begins the key of a read written in DirkDB's language. DirkDB's answer to it (doubles
/// in Java's form, pages of 20 rows, DirkDB's names and row orders) is not SQLite's answer to
/// the SQL it stands for, so the two never share an entry; no English key (sqlparser's text of
/// a query) can begin so.
const DIRKDB_KEY_PREFIX: &str = "DIRKDB\n";

fn parse_one(sql: &str) -> Option<Statement> {
    let mut statements = Parser::parse_sql(&SQLiteDialect {}, sql).ok()?;
    (statements.len() == 1).then(|| statements.remove(0))
}

fn read_analysis(translated: &str, dirkdb: bool) -> Analysis {
    let Some(statement) = parse_one(translated) else {
        return Analysis::Uncacheable("the statement is not a query the cache can parse");
    };
    let Statement::Query(query) = &statement else {
        return Analysis::Uncacheable("only queries are cached (not SHOW or EXPLAIN)");
    };
    if has_volatile_function(&statement) {
        return Analysis::Uncacheable("the query calls a non-deterministic function");
    }
    let mut relations = Vec::new();
    let _ = visit_relations(&statement, |name| {
        if let Some(table) = table_name(name) {
            if !relations.contains(&table) {
                relations.push(table);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let mut occurrences: Vec<String> = Vec::new();
    let _ = visit_relations(&statement, |name| {
        occurrences.extend(table_name(name));
        ControlFlow::<()>::Continue(())
    });
    let pins = pinned_tables(query)
        .into_iter()
        .filter(|p| occurrences.iter().filter(|t| **t == p.table).count() == 1)
        .collect();
    let canonical = statement.to_string();
    let key = if column_names_are_stable(query) {
        canonical
    } else {
        format!("{canonical}\n{}", translated.trim())
    };
    let key = if dirkdb {
        format!("{DIRKDB_KEY_PREFIX}{key}")
    } else {
        key
    };
    // DirkDB's answers (its names, Java's doubles, its booleans) are not rewritten.
    let refresh = if dirkdb {
        None
    } else {
        row_refresh(query).map(Arc::new)
    };
    Analysis::Cacheable(CacheableRead {
        key: key.into(),
        relations,
        pins,
        refresh,
    })
}

/// The refresh of a point query (see `crate::row_refresh`): a plain SELECT of `*` or of plain
/// columns from one table, no join, grouping, ordering, limit or DISTINCT, whose WHERE is only
/// `column = literal` (or `IN`) terms on that table, none with a `COLLATE`. Whether the pinned
/// columns form a key the store decides (an entry with one keyed tuple).
fn row_refresh(query: &Query) -> Option<RowRefresh> {
    let SetExpr::Select(select) = &*query.body else {
        return None;
    };
    let plain_query = query.with.is_none()
        && query.order_by.is_none()
        && query.limit_clause.is_none()
        && query.fetch.is_none()
        && query.locks.is_empty();
    let plain_select = select.distinct.is_none()
        && select.top.is_none()
        && select.into.is_none()
        && select.exclude.is_none()
        && select.lateral_views.is_empty()
        && select.prewhere.is_none()
        && select.connect_by.is_empty()
        && select.cluster_by.is_empty()
        && select.distribute_by.is_empty()
        && select.sort_by.is_empty()
        && select.having.is_none()
        && select.named_window.is_empty()
        && select.qualify.is_none()
        && matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !plain_query || !plain_select || !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { args: None, .. } = &from.relation else {
        return None;
    };
    let TopTable { table, alias } = from_table(&from.relation)?;
    let ours = |qualifier: &Option<String>| qualifier.as_ref().is_none_or(|q| *q == alias);
    let projection = match select.projection.as_slice() {
        [SelectItem::Wildcard(_)] => Projection::Star,
        [SelectItem::QualifiedWildcard(_, _)] => return None,
        items => {
            let columns: Option<Vec<String>> = items
                .iter()
                .map(|item| match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                        column_of(e).filter(|(q, _)| ours(q)).map(|(_, c)| c)
                    }
                    _ => None,
                })
                .collect();
            Projection::Columns(columns?)
        }
    };
    let mut terms = Vec::new();
    and_terms(select.selection.as_ref()?, &mut terms);
    let pins: Option<Vec<(String, Vec<String>)>> = terms
        .into_iter()
        .map(|term| {
            let (qualifier, pin) = pin_of(term)?;
            (ours(&qualifier) && pin.collation.is_none()).then(|| {
                let allowed = pin.literals.iter().map(Literal::canonical).collect();
                (pin.column, allowed)
            })
        })
        .collect();
    Some(RowRefresh {
        table,
        projection,
        pins: pins?,
    })
}

/// A table of the top-level FROM: its name and the name columns are qualified with.
struct TopTable {
    table: String,
    alias: String,
}

/// The pins of a plain SELECT's top-level tables (see [`TablePins`]).
fn pinned_tables(query: &Query) -> Vec<TablePins> {
    let SetExpr::Select(select) = &*query.body else {
        return Vec::new();
    };
    if query.with.is_some() {
        return Vec::new();
    }
    let mut tables: Vec<TopTable> = Vec::new();
    let mut terms: Vec<&Expr> = Vec::new();
    let mut factors = 0;
    for from in &select.from {
        factors += 1 + from.joins.len();
        tables.extend(from_table(&from.relation));
        for join in &from.joins {
            tables.extend(from_table(&join.relation));
            if let JoinOperator::Join(JoinConstraint::On(on))
            | JoinOperator::Inner(JoinConstraint::On(on)) = &join.join_operator
            {
                and_terms(on, &mut terms);
            }
        }
    }
    if let Some(selection) = &select.selection {
        and_terms(selection, &mut terms);
    }
    let single = factors == 1 && tables.len() == 1;
    let mut out: Vec<TablePins> = Vec::new();
    for term in terms {
        let Some((qualifier, pin)) = pin_of(term) else {
            continue;
        };
        let table = match qualifier {
            Some(q) => tables.iter().find(|t| t.alias == q),
            None if single => tables.first(),
            None => None,
        };
        let Some(table) = table else { continue };
        match out.iter_mut().find(|p| p.table == table.table) {
            Some(pins) => pins.columns.push(pin),
            None => out.push(TablePins {
                table: table.table.clone(),
                columns: vec![pin],
            }),
        }
    }
    // A table listed twice (a self-join) is pinned by neither occurrence.
    out.retain(|p| tables.iter().filter(|t| t.table == p.table).count() == 1);
    out
}

/// A plain table of a FROM clause, or DirkDB's `(SELECT DISTINCT * FROM t) AS alias`.
fn from_table(factor: &TableFactor) -> Option<TopTable> {
    match factor {
        TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } => {
            let table = table_name(name)?;
            let alias = alias
                .as_ref()
                .map_or_else(|| table.clone(), |a| a.name.value.to_lowercase());
            Some(TopTable { table, alias })
        }
        TableFactor::Derived {
            lateral: false,
            subquery,
            alias: Some(alias),
            ..
        } => {
            let table = distinct_star_table(subquery)?;
            Some(TopTable {
                table,
                alias: alias.name.value.to_lowercase(),
            })
        }
        _ => None,
    }
}

/// `t` when `query` is exactly `SELECT DISTINCT * FROM t` (how DirkDB's grammar reads a table).
fn distinct_star_table(query: &Query) -> Option<String> {
    let SetExpr::Select(select) = &*query.body else {
        return None;
    };
    let plain = query.with.is_none()
        && query.order_by.is_none()
        && query.limit_clause.is_none()
        && matches!(select.distinct, Some(Distinct::Distinct))
        && matches!(select.projection.as_slice(), [SelectItem::Wildcard(_)])
        && select.selection.is_none()
        && select.having.is_none()
        && matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    match select.from.as_slice() {
        [only] if plain && only.joins.is_empty() => match &only.relation {
            TableFactor::Table {
                name, args: None, ..
            } => table_name(name),
            _ => None,
        },
        _ => None,
    }
}

fn and_terms<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            and_terms(left, out);
            and_terms(right, out);
        }
        Expr::Nested(inner) => and_terms(inner, out),
        other => out.push(other),
    }
}

/// The qualifier and pin of `col = literal`, `literal = col` or `col IN (literals)`, each side
/// possibly with a `COLLATE`. As in SQLite, an `=` compares by the left side's `COLLATE`, else
/// the right side's, else the column's own collation; an `IN` by its left side's (a `COLLATE`
/// inside the list is not read, so such a term pins nothing).
fn pin_of(term: &Expr) -> Option<(Option<String>, Pin)> {
    match term {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let (left_collation, left) = collated(left)?;
            let (right_collation, right) = collated(right)?;
            let (column, value) = match (column_of(left), column_of(right)) {
                (Some(c), None) => (c, right),
                (None, Some(c)) => (c, left),
                _ => return None,
            };
            let pin = Pin {
                column: column.1,
                collation: left_collation.or(right_collation),
                literals: vec![literal_of(value)?],
            };
            Some((column.0, pin))
        }
        Expr::InList {
            expr,
            list,
            negated: false,
        } => {
            let (collation, expr) = collated(expr)?;
            let (qualifier, column) = column_of(expr)?;
            let literals: Option<Vec<Literal>> = list.iter().map(literal_of).collect();
            let pin = Pin {
                column,
                collation,
                literals: literals?,
            };
            Some((qualifier, pin))
        }
        Expr::Nested(inner) => pin_of(inner),
        _ => None,
    }
}

/// An operand without its `COLLATE` (and the parentheses around either), and the collation it
/// names (lower case, unquoted). `None` for two `COLLATE`s in a row: which one SQLite applies
/// is not guessed.
fn collated(expr: &Expr) -> Option<(Option<String>, &Expr)> {
    match expr {
        Expr::Nested(inner) => collated(inner),
        Expr::Collate { expr, collation } => match collated(expr)? {
            (None, inner) => Some((Some(collation_name(collation)?), inner)),
            (Some(_), _) => None,
        },
        other => Some((None, other)),
    }
}

/// A collation's name as SQLite looks it up: case-insensitive, quotes removed.
fn collation_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [only] => only.as_ident().map(|i| i.value.to_lowercase()),
        _ => None,
    }
}

fn column_of(expr: &Expr) -> Option<(Option<String>, String)> {
    match expr {
        Expr::Identifier(ident) => Some((None, ident.value.to_lowercase())),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [table, column] => Some((
                Some(table.value.to_lowercase()),
                column.value.to_lowercase(),
            )),
            _ => None,
        },
        Expr::Nested(inner) => column_of(inner),
        _ => None,
    }
}

fn literal_of(expr: &Expr) -> Option<Literal> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::Number(n, _) => Literal::number(n),
            Value::SingleQuotedString(s) => Some(Literal::Text(s.clone())),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal_of(expr)? {
            Literal::Number(n) => {
                let digits = n.strip_prefix("n:")?;
                Literal::number(&format!("-{digits}"))
            }
            Literal::Text(_) => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => match literal_of(expr)? {
            number @ Literal::Number(_) => Some(number),
            Literal::Text(_) => None,
        },
        Expr::Nested(inner) => literal_of(inner),
        _ => None,
    }
}

/// The table part of a possibly qualified name, in lower case (SQLite names are
/// case-insensitive).
pub fn table_name(name: &ObjectName) -> Option<String> {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map(|ident| ident.value.to_lowercase())
}

/// True when the result's column names do not depend on how the statement is spelled: every
/// column of the first SELECT is `*`, `t.*`, aliased, or a plain column reference.
fn column_names_are_stable(query: &Query) -> bool {
    fn first_select_stable(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => select.projection.iter().all(|item| match item {
                SelectItem::Wildcard(_)
                | SelectItem::QualifiedWildcard(..)
                | SelectItem::ExprWithAlias { .. } => true,
                SelectItem::UnnamedExpr(expr) => {
                    matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
                }
                SelectItem::ExprWithAliases { .. } => false,
            }),
            SetExpr::SetOperation { left, .. } => first_select_stable(left),
            SetExpr::Query(inner) => first_select_stable(&inner.body),
            SetExpr::Values(_) => true,
            _ => false,
        }
    }
    first_select_stable(&query.body)
}

fn has_volatile_function(statement: &Statement) -> bool {
    visit_expressions(statement, |expr| {
        let volatile = match expr {
            Expr::Function(function) => {
                let name = table_name(&function.name).unwrap_or_default();
                is_volatile_call(&name, &function.args)
            }
            Expr::Identifier(ident) if ident.quote_style.is_none() => {
                let name = ident.value.to_lowercase();
                name.starts_with("current_") && VOLATILE_FUNCTIONS.contains(&name.as_str())
            }
            _ => false,
        };
        if volatile {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

fn is_volatile_call(name: &str, args: &FunctionArguments) -> bool {
    if VOLATILE_FUNCTIONS.contains(&name) || name.starts_with("dirk_") {
        return true;
    }
    let Some(min_args) = TIME_FUNCTIONS.iter().position(|f| *f == name).map(|i| {
        if TIME_FUNCTIONS[i] == "strftime" || TIME_FUNCTIONS[i] == "timediff" {
            2
        } else {
            1
        }
    }) else {
        return false;
    };
    let FunctionArguments::List(list) = args else {
        return true;
    };
    if list.args.len() < min_args {
        return true;
    }
    !list.args.iter().all(|arg| match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(value))) => match &value.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                !s.trim().eq_ignore_ascii_case("now")
            }
            Value::Number(..) => true,
            _ => false,
        },
        _ => false,
    })
}

/// What a write statement can change when the change feed does not say (see [`WriteTargets`]).
fn write_targets(translated: &str) -> WriteTargets {
    match database_statement_target(translated) {
        Some(db) => WriteTargets::Database(db),
        None => WriteTargets::CurrentDatabase,
    }
}

/// The database named by `CREATE DATABASE x` / `DROP DATABASE [IF EXISTS] x` (or SCHEMA).
fn database_statement_target(translated: &str) -> Option<String> {
    let words = leading_words(translated, 2);
    let is_database_statement =
        matches!(words.first().map(String::as_str), Some("CREATE" | "DROP"))
            && matches!(
                words.get(1).map(String::as_str),
                Some("DATABASE" | "SCHEMA")
            );
    if !is_database_statement {
        return None;
    }
    let last = tokenize(translated)
        .into_iter()
        .filter(|t| !t.kind.is_trivia())
        .rfind(|t| t.text(translated) != ";")?;
    let text = last.text(translated);
    let name = match text.as_bytes().first() {
        Some(b'"' | b'`' | b'[') => text.get(1..text.len().saturating_sub(1)).unwrap_or(""),
        _ => text,
    };
    Some(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        match analyze(sql) {
            Analysis::Cacheable(read) => read.key.to_string(),
            other => panic!("{sql}: not cacheable: {other:?}"),
        }
    }

    #[test]
    fn spelling_case_and_malagasy_share_one_key() {
        let a = key("SELECT * FROM users WHERE id = 1");
        assert_eq!(a, key("select   *\n from users where id=1"));
        assert_eq!(a, key("alaivo * FROM users rehefa id = 1"));
        assert_ne!(a, key("SELECT * FROM users WHERE id = 2"));
        assert_ne!(
            a,
            key("SELECT * FROM Users WHERE id = 1"),
            "identifiers keep their case"
        );
        assert_eq!(key("SELECT name FROM t"), key("select name from t"));
    }

    #[test]
    fn dirkdb_forms_share_a_key_with_their_spellings_only() {
        let a = key("alaivo * #ao@ users #rehefa id = 1");
        assert_eq!(a, key("ALAIVO * ao users rehefa id = 1"));
        assert_eq!(a, key("alaivo * # ao @ users # rehefa id = 1"));
        assert_ne!(
            a,
            key("SELECT * FROM users WHERE id = 1"),
            "DirkDB's meaning (set semantics, doubles) is not SQLite's"
        );
        assert_ne!(a, key("alaivo * #ao@ users #rehefa id = 2"));
        let join = "alaivo ja.k, a, b #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k";
        let Analysis::Cacheable(read) = analyze(join) else {
            panic!("not cacheable")
        };
        assert!(read.relations.contains(&"ja".to_string()));
        assert!(read.relations.contains(&"jb".to_string()));
        let Analysis::Cacheable(read) =
            analyze("alaivo n #ao@ t #ankambana@ (alaivo n #ao@ u #analana alaivo x #ao@ v)")
        else {
            panic!("not cacheable")
        };
        for t in ["t", "u", "v"] {
            assert!(read.relations.contains(&t.to_string()), "{t}");
        }
        assert_ne!(key("alaivo 1 antso x"), key("alaivo 1 antso y"));
    }

    /// A DirkDB read is answered with DirkDB's meaning (doubles in Java's form, pages of 20,
    /// DirkDB's names, its join, group and set orders), so it never shares an entry with the
    /// English SQL it stands for, even when a client sends exactly that SQL.
    #[test]
    fn dirkdb_reads_never_share_a_key_with_english_sql() {
        for dirk in [
            "alaivo a #ao@ t",
            "alaivo * #ao@ t",
            "alaivo ja.k, a, b #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k",
            "alaivo a, b #ao@ ja #tonona jb",
            "alaivo * #ao@ ja #tonona:natoraly@ jb",
            "alaivo c, count(v) #ao@ g #vondrona (c)",
            "alaivo n #ao@ t #ankambana@ alaivo n #ao@ u",
            "alaivo n #ao@ t #analana@ alaivo n #ao@ u",
            "alaivo * #ao@ t #fetra 1 3",
            "alaivo x #ao@ (alaivo n antso x #ao@ t #rehefa n = 5) q",
            "alaivo * #ao@ v",
        ] {
            let english = dirkdb_core::sql::translate(dirk);
            assert_ne!(english, dirk, "{dirk} has a DirkDB translation");
            if let Analysis::Cacheable(read) = analyze(&english) {
                assert_ne!(key(dirk), read.key.to_string(), "{dirk} / {english}");
            }
        }
    }

    #[test]
    fn dirkdb_writes_name_what_they_change() {
        // The table a write names is not read from its text any more (see `WriteTargets`).
        let tables = |_: &str| Analysis::Write(WriteTargets::CurrentDatabase);
        assert_eq!(analyze("manampia #ao@ t (n) #sanda (1)"), tables("t"));
        assert_eq!(analyze("manampia ao @ t (n) alaivo n #ao@ u"), tables("t"));
        assert_eq!(
            analyze("havaozy t ova n = n + 1 #rehefa n = 3"),
            tables("t")
        );
        assert_eq!(analyze("fafao #ao@ t #rehefa n = 3"), tables("t"));
        assert_eq!(
            analyze("manamboara efitra d (ISA(0,1))"),
            tables("dirkdb_domains")
        );
        assert_eq!(analyze("ravao ny efitra d"), tables("dirkdb_domains"));
        for ddl in [
            "manamboara tabilao t (a ISA(0,10))",
            "manamboara jery v @ alaivo n #ao@ t",
            "ravao ny tabilao t",
            "ravao ny jery v",
        ] {
            assert_eq!(
                analyze(ddl),
                Analysis::Write(WriteTargets::CurrentDatabase),
                "{ddl}"
            );
        }
        assert_eq!(
            analyze("ravao ny tahiry Shop"),
            Analysis::Write(WriteTargets::Database("shop".into()))
        );
        assert_eq!(analyze("ampiasao shop"), Analysis::Use("shop".into()));
        assert!(matches!(
            analyze("asehoy ny tahiry"),
            Analysis::Uncacheable(_)
        ));
    }

    #[test]
    fn expression_columns_keep_their_text() {
        assert_ne!(key("select count(*) from t"), key("select COUNT(*) from t"));
        assert_ne!(key("SELECT 1+1"), key("SELECT 1 + 1"));
        assert_eq!(key("SELECT 1+1"), key("SELECT 1+1"));
        assert_eq!(
            key("select count(*) AS n from t"),
            key("SELECT count( * )  AS n FROM t")
        );
    }

    #[test]
    fn relations_include_joins_subqueries_and_ctes() {
        let Analysis::Cacheable(read) = analyze(
            "WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN main.B ON 1 WHERE id IN (SELECT id FROM c)",
        ) else {
            panic!("not cacheable")
        };
        for t in ["a", "b", "c"] {
            assert!(
                read.relations.contains(&t.to_string()),
                "{t} in {:?}",
                read.relations
            );
        }
    }

    #[test]
    fn volatile_and_connection_reads_are_not_cached() {
        for sql in [
            "SELECT random()",
            "SELECT datetime('now')",
            "SELECT date()",
            "SELECT strftime('%s', created) FROM t",
            "SELECT CURRENT_TIMESTAMP",
            "SELECT * FROM t WHERE x < current_date",
            "SELECT dirk_now()",
        ] {
            assert!(matches!(analyze(sql), Analysis::Uncacheable(_)), "{sql}");
        }
        assert!(matches!(analyze("SELECT changes()"), Analysis::Write(_)));
        assert!(matches!(
            analyze("SELECT date('2024-01-01', '+1 day')"),
            Analysis::Cacheable(_)
        ));
        assert!(matches!(analyze("SHOW TABLES"), Analysis::Uncacheable(_)));
    }

    #[test]
    fn writes_name_what_they_change() {
        // The table a write names is not read from its text any more (see `WriteTargets`).
        let tables = |_: &str| Analysis::Write(WriteTargets::CurrentDatabase);
        assert_eq!(analyze("INSERT INTO Orders VALUES (1)"), tables("orders"));
        assert_eq!(analyze("manampia ao orders sanda (1)"), tables("orders"));
        assert_eq!(
            analyze("REPLACE INTO main.orders SELECT * FROM x"),
            tables("orders")
        );
        assert_eq!(
            analyze("UPDATE orders SET a = 1 WHERE b IN (SELECT b FROM c)"),
            tables("orders")
        );
        assert_eq!(analyze("DELETE FROM orders WHERE 1"), tables("orders"));
        assert_eq!(
            analyze("CREATE TABLE z (a)"),
            Analysis::Write(WriteTargets::CurrentDatabase)
        );
        assert_eq!(
            analyze("DROP DATABASE IF EXISTS Shop"),
            Analysis::Write(WriteTargets::Database("shop".into()))
        );
        assert_eq!(analyze("USE shop"), Analysis::Use("shop".into()));
    }

    #[test]
    fn the_memo_answers_what_analyze_answers() {
        let memo = AnalysisMemo::new(10);
        for sql in [
            "SELECT * FROM t",
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t",
        ] {
            assert_eq!(*memo.analyze(sql), analyze(sql));
        }
    }

    /// A table and its pinned columns (`c collate x` when the query names a collation) with
    /// their canonical values.
    type Pinned = (String, Vec<(String, Vec<String>)>);

    fn pins(sql: &str) -> Vec<Pinned> {
        let Analysis::Cacheable(read) = analyze(sql) else {
            panic!("{sql}: not cacheable")
        };
        read.pins
            .into_iter()
            .map(|p| {
                let columns = p
                    .columns
                    .into_iter()
                    .map(|pin| {
                        let column = match pin.collation {
                            Some(x) => format!("{} collate {x}", pin.column),
                            None => pin.column,
                        };
                        (
                            column,
                            pin.literals.iter().map(Literal::canonical).collect(),
                        )
                    })
                    .collect();
                (p.table, columns)
            })
            .collect()
    }

    fn one(table: &str, column: &str, values: &[&str]) -> Pinned {
        (
            table.into(),
            vec![(
                column.into(),
                values.iter().map(|v| v.to_string()).collect(),
            )],
        )
    }

    #[test]
    fn pins_of_point_queries_in_every_spelling() {
        assert_eq!(
            pins("SELECT id, v FROM T WHERE id = 5"),
            [one("t", "id", &["n:5"])]
        );
        assert_eq!(
            pins("SELECT * FROM t WHERE 5.0 = t.ID AND v > 3"),
            [one("t", "id", &["n:5"])]
        );
        assert_eq!(
            pins("SELECT * FROM t x WHERE (x.id IN (1, -2, 3e0)) AND x.k = 'a''b'"),
            [(
                "t".into(),
                vec![
                    ("id".into(), vec!["n:1".into(), "n:-2".into(), "n:3".into()]),
                    ("k".into(), vec!["s:a'b".into()]),
                ]
            )]
        );
        assert_eq!(
            pins("alaivo * #ao@ users #rehefa id = 1"),
            [one("users", "id", &["n:1"])]
        );
        assert_eq!(
            pins("alaivo ja.k, a #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k #rehefa ja.k = 3 ary jb.k = 3"),
            [one("ja", "k", &["n:3"]), one("jb", "k", &["n:3"])]
        );
        assert_eq!(
            pins("SELECT * FROM a JOIN b ON b.id = 7 AND b.x = a.x WHERE a.id = 1"),
            [one("b", "id", &["n:7"]), one("a", "id", &["n:1"])]
        );
    }

    /// The comparison's collation is SQLite's: the left side's `COLLATE`, else the right
    /// side's; an `IN` compares by its left side's.
    #[test]
    fn pins_keep_the_collation_the_query_names() {
        assert_eq!(
            pins("SELECT * FROM t WHERE name = 'A' COLLATE NOCASE"),
            [one("t", "name collate nocase", &["s:A"])]
        );
        assert_eq!(
            pins("SELECT * FROM t WHERE (t.name COLLATE \"RTrim\") = 'A' COLLATE NOCASE"),
            [one("t", "name collate rtrim", &["s:A"])]
        );
        assert_eq!(
            pins("SELECT * FROM t WHERE 'A' = name COLLATE nocase"),
            [one("t", "name collate nocase", &["s:A"])]
        );
        assert_eq!(
            pins("SELECT * FROM t WHERE name COLLATE BINARY IN ('a', 'b')"),
            [one("t", "name collate binary", &["s:a", "s:b"])]
        );
        for sql in [
            "SELECT * FROM t WHERE name IN ('a' COLLATE NOCASE)",
            "SELECT * FROM t WHERE (name COLLATE NOCASE) COLLATE BINARY = 'a'",
            "SELECT * FROM t WHERE name = 'a' COLLATE main.nocase",
        ] {
            assert_eq!(pins(sql), [], "{sql}");
        }
    }

    fn refresh(sql: &str) -> Option<RowRefresh> {
        let Analysis::Cacheable(read) = analyze(sql) else {
            panic!("{sql}: not cacheable")
        };
        read.refresh.map(|r| (*r).clone())
    }

    #[test]
    fn point_queries_on_one_table_can_be_rewritten_from_their_row() {
        let cols = |c: &[&str]| Projection::Columns(c.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            refresh("SELECT id, V AS value FROM T WHERE id = 5"),
            Some(RowRefresh {
                table: "t".into(),
                projection: cols(&["id", "v"]),
                pins: vec![("id".into(), vec!["n:5".into()])],
            })
        );
        assert_eq!(
            refresh("select * from acc a where a.email = 'x' and n in (1, 2)"),
            Some(RowRefresh {
                table: "acc".into(),
                projection: Projection::Star,
                pins: vec![
                    ("email".into(), vec!["s:x".into()]),
                    ("n".into(), vec!["n:1".into(), "n:2".into()]),
                ],
            })
        );
        for sql in [
            "SELECT id FROM t WHERE id = 5 ORDER BY id",
            "SELECT id FROM t WHERE id = 5 LIMIT 1",
            "SELECT DISTINCT id FROM t WHERE id = 5",
            "SELECT id + 1 FROM t WHERE id = 5",
            "SELECT count(*) FROM t WHERE id = 5",
            "SELECT id FROM t WHERE id = 5 OR id = 6",
            "SELECT id FROM t WHERE id = 5 AND v > 2",
            "SELECT id FROM t WHERE id = 5 COLLATE NOCASE",
            "SELECT id FROM t",
            "SELECT t.id FROM t JOIN u ON u.id = 1 WHERE t.id = 5",
            "SELECT u.id FROM t WHERE id = 5",
            "SELECT t.* FROM t WHERE id = 5",
            "WITH w AS (SELECT 1) SELECT id FROM t WHERE id = 5",
            "SELECT id FROM (SELECT * FROM t) WHERE id = 5",
            "SELECT id FROM t WHERE id = 5 GROUP BY id",
            "alaivo id #ao@ t #rehefa id = 5",
        ] {
            assert_eq!(refresh(sql), None, "{sql}");
        }
    }

    #[test]
    fn no_pins_where_other_rows_could_matter() {
        for sql in [
            "SELECT * FROM t WHERE id = 5 OR id = 6",
            "SELECT * FROM t WHERE id > 5",
            "SELECT * FROM t WHERE id NOT IN (1, 2)",
            "SELECT * FROM t WHERE id IN (SELECT 1)",
            "SELECT * FROM t WHERE id = x",
            "SELECT * FROM t WHERE id = NULL",
            "SELECT * FROM t WHERE id = 5 UNION SELECT * FROM u WHERE id = 5",
            "WITH c AS (SELECT 1) SELECT * FROM t WHERE id = 5",
            "SELECT * FROM t a JOIN t b ON a.id = b.id WHERE a.id = 1 AND b.id = 1",
            "SELECT * FROM t WHERE id = 1 AND EXISTS (SELECT 1 FROM t WHERE id = 2)",
            "SELECT * FROM a, b WHERE id = 1",
            "SELECT * FROM a LEFT JOIN b ON b.id = 1",
            "SELECT * FROM (SELECT * FROM t) AS t WHERE id = 1",
            "SELECT * FROM t WHERE id = X'01'",
        ] {
            assert_eq!(pins(sql), [], "{sql}");
        }
    }

    #[test]
    fn cache_commands_in_both_languages() {
        assert_eq!(
            analyze("show cache stats"),
            Analysis::Command(CacheCommand::ShowStats)
        );
        assert_eq!(
            analyze("ASEHOY CACHE STATS"),
            Analysis::Command(CacheCommand::ShowStats)
        );
        assert_eq!(
            analyze("FLUSH CACHE"),
            Analysis::Command(CacheCommand::Flush)
        );
        assert!(matches!(analyze("DIRK CHANGES"), Analysis::Refused(_)));
    }
}
