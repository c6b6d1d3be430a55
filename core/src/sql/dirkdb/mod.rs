//! DirkDB's own language (`../shared/DIRKDB-DIALECT.md`): a lexer, a syntax tree, a
//! recursive-descent parser and a translator to SQLite SQL, used alike by the server (to run
//! and answer), the proxy (to classify) and the cache (to key and invalidate).
//!
//! # Which grammar a statement is read with
//!
//! [`route`] decides per statement:
//!
//! 1. A statement whose first word is none of DirkDB's statement words (`alaivo`, `manampia`,
//!    `havaozy`, `fafao`, `manamboara`, `ravao`, `asehoy`, `ampiasao`) is English SQL: the front
//!    end is skipped (one comparison of the first word).
//! 2. Otherwise, when DirkDB's grammar accepts the whole statement, it is DirkDB's and gets
//!    DirkDB's meaning and messages — except a `manamboara tabilao` whose column types are SQL
//!    type names (`INTEGER`, `TEXT`, …), which is today's mixed form.
//! 3. Otherwise, when the mixed Malagasy-English translation ([`super::malagasy`]) reads as SQL
//!    (`sqlparser`), it is the mixed form and keeps SQLite's meaning
//!    (`ALAIVO * FROM t rehefa n > 2`, `manamboara tabilao t (id INTEGER PRIMARY KEY)`).
//! 4. Otherwise it is a DirkDB statement with a syntax error, answered with DirkDB's text.

pub mod ast;
pub mod domain;
pub mod error;
pub mod java_hash;
mod joins;
mod lexer;
pub mod messages;
pub mod parser;
pub mod translate;
pub mod values;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser as SqlParser;

pub use ast::Statement;
pub use error::DirkError;
pub use translate::{plan, Answer, Naming, NoSchema, Plan, Schema};

/// How a statement is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// English SQL: no DirkDB statement word first.
    English,
    /// DirkDB's grammar.
    Dirk(Arc<Statement>),
    /// Today's mixed Malagasy-English form.
    Mixed,
    /// A DirkDB statement DirkDB's grammar refuses.
    Error(DirkError),
}

/// DirkDB's statement words.
const HEADS: &[&str] = &[
    "alaivo",
    "manampia",
    "havaozy",
    "fafao",
    "manamboara",
    "ravao",
    "asehoy",
    "ampiasao",
];

/// SQL type names that mark a `manamboara tabilao` as the mixed form.
const SQL_TYPES: &[&str] = &[
    "integer", "int", "text", "real", "numeric", "blob", "varchar", "char", "boolean", "date",
    "datetime", "float", "double", "bigint", "smallint", "decimal",
];

/// Rows per page of a DirkDB answer (DirkDB's server pages relations by 20).
pub const PAGE_ROWS: usize = 20;

/// Statements longer than this are routed without being remembered.
const MEMO_MAX_SQL: usize = 4096;
/// Routes remembered before the memo starts over.
const MEMO_CAPACITY: usize = 4096;

/// True when `sql` starts with one of DirkDB's statement words.
pub fn starts_with_dirkdb_word(sql: &str) -> bool {
    let trimmed = sql.trim_start();
    let end = trimmed
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(trimmed.len());
    let first = &trimmed[..end];
    HEADS.iter().any(|h| h.eq_ignore_ascii_case(first))
}

/// Decides how `sql` is read (see the module documentation); remembered for short statements.
pub fn route(sql: &str) -> Route {
    if !starts_with_dirkdb_word(sql) {
        return Route::English;
    }
    static MEMO: Memo<Route> = Memo::new();
    MEMO.get_or_insert(sql, route_uncached)
}

/// [`routing_sql`] of a DirkDB statement's text, remembered like [`route`]; `None` when `sql` is
/// not in DirkDB's grammar.
pub fn routing_sql_of(sql: &str) -> Option<Arc<str>> {
    if !starts_with_dirkdb_word(sql) {
        return None;
    }
    static MEMO: Memo<Option<Arc<str>>> = Memo::new();
    MEMO.get_or_insert(sql, |sql| match route(sql) {
        Route::Dirk(stmt) => Some(routing_sql(&stmt).into()),
        _ => None,
    })
}

/// Plans remembered before the plan memo starts over.
const PLAN_MEMO_CAPACITY: usize = 4096;
/// Plans whose SQL is longer than this are not remembered.
const PLAN_MEMO_MAX_SQL: usize = 64 * 1024;

/// One remembered plan: valid for this statement in this database at this epoch and schema
/// version. The entry holds the statement, so its address (the key) cannot be reused while
/// the entry lives.
struct PlanEntry {
    stmt: Arc<Statement>,
    database: Option<String>,
    epoch: u64,
    version: i64,
    plan: Result<Plan, DirkError>,
}

/// [`plan`], remembered per (statement, current database, `epoch`, schema version) for the
/// statements whose plan reads nothing but the SQLite schema — `alaivo`, `manampia`,
/// `havaozy`, `fafao` (what a set operation's operands, a join's sources and `#vondrona`'s
/// columns are, prepared on the connection). `epoch` must change whenever a database is
/// created, dropped or replaced (the server's catalog generation), since two files of one name
/// can share a schema version; a schema without a version (temporary objects on the
/// connection, or no database) is planned afresh each time, as are DDL statements, whose plans
/// also read the domains table.
pub fn plan_memoized(
    stmt: &Arc<Statement>,
    schema: &dyn Schema,
    epoch: u64,
) -> Result<Plan, DirkError> {
    let memoizable = matches!(
        **stmt,
        Statement::Select(_)
            | Statement::Insert { .. }
            | Statement::Update { .. }
            | Statement::Delete { .. }
    );
    let Some(version) = memoizable.then(|| schema.version()).flatten() else {
        return plan(stmt, schema);
    };
    static MEMO: Mutex<Option<HashMap<usize, PlanEntry>>> = Mutex::new(None);
    let key = Arc::as_ptr(stmt) as usize;
    let database = schema.database().map(str::to_string);
    let fits = |e: &PlanEntry| {
        Arc::ptr_eq(&e.stmt, stmt)
            && e.database == database
            && e.epoch == epoch
            && e.version == version
    };
    if let Ok(memo) = MEMO.lock() {
        if let Some(entry) = memo.as_ref().and_then(|m| m.get(&key)).filter(|e| fits(e)) {
            return entry.plan.clone();
        }
    }
    let planned = plan(stmt, schema);
    let size = planned
        .as_ref()
        .map_or(0, |p| p.steps.iter().map(String::len).sum::<usize>());
    if size <= PLAN_MEMO_MAX_SQL {
        if let Ok(mut memo) = MEMO.lock() {
            let map = memo.get_or_insert_with(HashMap::new);
            if map.len() >= PLAN_MEMO_CAPACITY {
                map.clear();
            }
            map.insert(
                key,
                PlanEntry {
                    stmt: stmt.clone(),
                    database,
                    epoch,
                    version,
                    plan: planned.clone(),
                },
            );
        }
    }
    planned
}

/// The database `sql` drops (`ravao ny tahiry d`, `DROP DATABASE [IF EXISTS] d`, the mixed
/// form), so that a session holding it as its current database forgets it, as the server does.
pub fn dropped_database(sql: &str) -> Option<String> {
    let routed;
    let text = match route(sql) {
        Route::Dirk(stmt) => match &*stmt {
            Statement::DropDatabase(name) => return Some(name.clone()),
            _ => return None,
        },
        Route::Error(_) => return None,
        Route::English => sql,
        Route::Mixed => {
            routed = super::malagasy::translate(sql);
            &routed
        }
    };
    let words = super::classify::leading_words(text, 5);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let name = match w.as_slice() {
        ["DROP", "DATABASE", "IF", "EXISTS", _] => 4,
        ["DROP", "DATABASE", name] if *name != "IF" => 2,
        _ => return None,
    };
    use super::lexer::tokenize;
    let token = tokenize(text)
        .into_iter()
        .filter(|t| !t.kind.is_trivia())
        .nth(name)?;
    Some(
        token
            .text(text)
            .trim_matches(|c| matches!(c, '"' | '`' | '[' | ']' | '\''))
            .to_string(),
    )
}

/// A bounded memo of answers by statement text: statements over [`MEMO_MAX_SQL`] bytes are not
/// kept, and the map starts over at [`MEMO_CAPACITY`] entries, so memory stays bounded.
struct Memo<T>(Mutex<Option<HashMap<String, T>>>);

impl<T: Clone> Memo<T> {
    const fn new() -> Self {
        Memo(Mutex::new(None))
    }

    fn get_or_insert(&self, sql: &str, compute: impl FnOnce(&str) -> T) -> T {
        if sql.len() > MEMO_MAX_SQL {
            return compute(sql);
        }
        if let Ok(memo) = self.0.lock() {
            if let Some(v) = memo.as_ref().and_then(|m| m.get(sql)) {
                return v.clone();
            }
        }
        let v = compute(sql);
        if let Ok(mut memo) = self.0.lock() {
            let map = memo.get_or_insert_with(HashMap::new);
            if map.len() >= MEMO_CAPACITY {
                map.clear();
            }
            map.insert(sql.to_string(), v.clone());
        }
        v
    }
}

fn route_uncached(sql: &str) -> Route {
    if is_show_owners(sql) {
        return Route::Mixed;
    }
    match parser::parse_statement(sql) {
        Ok(stmt) if uses_sql_types(&stmt) && mixed_reads_as_sql(sql) => Route::Mixed,
        Ok(stmt) => Route::Dirk(Arc::new(stmt)),
        Err(_) if has_english_marker(sql) && mixed_reads_as_sql(sql) => Route::Mixed,
        Err(e) => Route::Error(e),
    }
}

/// `asehoy [ny] tompo` (MULTI_PRIMARY's SHOW OWNERS): spelt in DirkDB's words but not one of
/// DirkDB's statements, so the Malagasy translation runs it (see `docs/dirkdb-compatibility.md`).
fn is_show_owners(sql: &str) -> bool {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    matches!(
        words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["asehoy", "tompo"] | ["asehoy", "ny", "tompo"]
    )
}

fn uses_sql_types(stmt: &Statement) -> bool {
    let Statement::CreateTable { columns, .. } = stmt else {
        return false;
    };
    columns.iter().any(|(_, ty)| {
        ty.0.iter().any(|a| {
            matches!(a, ast::TypeAtom::Named(n) if SQL_TYPES.iter().any(|t| t.eq_ignore_ascii_case(n)))
        })
    })
}

/// English SQL words (outside literals) or SQL-only syntax such as `count(*)`: what makes a
/// statement DirkDB's grammar refuses today's mixed form rather than a DirkDB syntax error.
fn has_english_marker(sql: &str) -> bool {
    use super::lexer::{tokenize, TokenKind};
    let tokens: Vec<_> = tokenize(sql)
        .into_iter()
        .filter(|t| !t.kind.is_trivia())
        .collect();
    tokens.iter().enumerate().any(|(i, t)| {
        let text = t.text(sql);
        match t.kind {
            TokenKind::Word => ENGLISH.iter().any(|w| w.eq_ignore_ascii_case(text)),
            TokenKind::Operator | TokenKind::Punct if text == "*" => {
                let around = |j: Option<usize>| j.and_then(|j| tokens.get(j)).map(|t| t.text(sql));
                around(i.checked_sub(1)) == Some("(") && around(Some(i + 1)) == Some(")")
            }
            _ => false,
        }
    })
}

/// English words whose presence marks the mixed form.
const ENGLISH: &[&str] = &[
    "select",
    "from",
    "where",
    "join",
    "on",
    "into",
    "values",
    "set",
    "table",
    "view",
    "database",
    "databases",
    "tables",
    "order",
    "by",
    "group",
    "having",
    "as",
    "and",
    "or",
    "not",
    "is",
    "like",
    "in",
    "between",
    "primary",
    "key",
    "unique",
    "references",
    "default",
    "union",
    "except",
    "intersect",
    "left",
    "right",
    "inner",
    "outer",
    "cross",
    "natural",
    "distinct",
    "case",
    "when",
    "then",
    "else",
    "end",
    "offset",
    "insert",
    "update",
    "delete",
    "create",
    "drop",
    "show",
    "use",
    "index",
    "trigger",
    "exists",
    "if",
    "integer",
    "int",
    "text",
    "real",
    "numeric",
    "blob",
    "varchar",
    "returning",
    "with",
    "all",
    "asc",
    "desc",
];

fn mixed_reads_as_sql(sql: &str) -> bool {
    let translated = super::malagasy::translate(sql);
    let words = super::classify::leading_words(&translated, 7);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let database_statement = matches!(
        w.as_slice(),
        ["USE", _]
            | ["SHOW", "DATABASES" | "TABLES"]
            | ["CREATE" | "DROP", "DATABASE", _]
            | ["CREATE", "DATABASE", "IF", "NOT", "EXISTS", _]
            | ["DROP", "DATABASE", "IF", "EXISTS", _]
    );
    database_statement
        || SqlParser::parse_sql(&SQLiteDialect {}, &translated).is_ok_and(|s| s.len() == 1)
}

/// The SQL a DirkDB statement stands for, without a schema: what the proxy classifies and the
/// cache keys and invalidates by. Database statements become their English forms.
pub fn routing_sql(stmt: &Statement) -> String {
    use translate::ident;
    match stmt {
        Statement::CreateDatabase(n) => format!("CREATE DATABASE {n}"),
        Statement::Use(n) => format!("USE {n}"),
        Statement::DropDatabase(n) => format!("DROP DATABASE {n}"),
        Statement::ShowDatabases => "SHOW DATABASES".into(),
        Statement::Drop(ast::ObjectKind::Domain, n) => format!(
            "DELETE FROM {} WHERE name = {}",
            translate::DOMAIN_TABLE,
            domain::sql_string(n)
        ),
        Statement::Drop(ast::ObjectKind::Table, n) => format!("DROP TABLE {}", ident(n)),
        other => match translate::with_sql_operators(|| plan(other, &NoSchema)) {
            Ok(plan) => plan.steps.last().cloned().unwrap_or_default(),
            Err(_) => "DIRK DIRKDB".into(),
        },
    }
}

#[cfg(test)]
mod tests;
