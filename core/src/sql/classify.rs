//! Where a statement may run: the proxy's routing decision, made with `sqlparser` after the
//! Malagasy translation.
//!
//! The rule is safety first: only what is certainly a read without side effects is a
//! [`StatementClass::Read`] (a plain query, EXPLAIN, SHOW); anything that writes, anything
//! connection-specific (`changes()`, `last_insert_rowid()`, PRAGMAs) and anything the parser does
//! not understand is a [`StatementClass::Write`], which the proxy sends to the primary. A write
//! must never reach a replica.

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use super::lexer::{Lexer, Token, TokenKind};
use super::translate_with_tokens;

/// The routing class of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementClass {
    /// Safe on any instance.
    Read,
    /// Must run on the primary.
    Write,
    /// `USE <database>`: session state, replayed on whichever backend serves the session next.
    Use(String),
    /// Transaction control: pins the session to the primary while a transaction is open.
    Transaction(TransactionControl),
}

/// Transaction control statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionControl {
    /// `BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION]`
    Begin,
    /// `COMMIT` / `END`
    Commit,
    /// `ROLLBACK` (the whole transaction)
    Rollback,
    /// `SAVEPOINT name` (opens a transaction when none is open)
    Savepoint(String),
    /// `RELEASE [SAVEPOINT] name`
    Release(String),
    /// `ROLLBACK TO [SAVEPOINT] name` (the transaction stays open)
    RollbackTo(String),
}

/// Functions whose result depends on the connection that runs them.
const CONNECTION_FUNCTIONS: [&str; 3] = ["last_insert_rowid", "changes", "total_changes"];

/// Classifies a statement written in DirkDB's SQL (Malagasy keywords allowed).
///
/// The statement is tokenized once; the leading words, the plain-SELECT fast path and the
/// connection-bound check all read those tokens (the proxy classifies every statement it routes,
/// so this is its hot path: issue #19).
pub fn classify(sql: &str) -> StatementClass {
    let (sql, tokens) = translate_with_tokens(sql);
    if super::limits::check_expression_depth(&sql).is_err() {
        return StatementClass::Write; // never parsed: too deep for a safe parse (see `limits`)
    }
    let mut significant: Vec<&Token> = Vec::with_capacity(tokens.len());
    significant.extend(tokens.iter().filter(|t| !t.kind.is_trivia()));
    let word = |i: usize| significant.get(i).map_or("", |t| t.text(&sql));
    let is = |i: usize, w: &str| word(i).eq_ignore_ascii_case(w);
    // The first word, upper-cased in a stack buffer (no keyword here is longer than 8 bytes;
    // a longer word matches none of them).
    let mut upper = [0u8; 8];
    let first = word(0).as_bytes();
    let first = match upper.get_mut(..first.len()) {
        Some(head) => {
            head.copy_from_slice(first);
            head.make_ascii_uppercase();
            std::str::from_utf8(head).unwrap_or("")
        }
        None => "",
    };
    match first {
        "USE" => {
            return match significant.len() {
                2 => StatementClass::Use(unquote_target(word(1))),
                _ => StatementClass::Write,
            }
        }
        "SHOW" => {
            let known = is(1, "DATABASES") || is(1, "SCHEMAS") || is(1, "TABLES");
            return if known && significant.len() == 2 {
                StatementClass::Read
            } else {
                StatementClass::Write
            };
        }
        // Statements that always write need no parse to say so.
        "PRAGMA" | "DIRK" | "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "CREATE" | "DROP"
        | "ALTER" => return StatementClass::Write,
        "END" => return StatementClass::Transaction(TransactionControl::Commit),
        "SELECT" if is_plain_select(&sql, &tokens, &significant) => return StatementClass::Read,
        _ => {}
    }
    match Parser::parse_sql(&SQLiteDialect {}, &sql) {
        Ok(statements) if statements.len() == 1 => match classify_parsed(&statements[0]) {
            StatementClass::Read if connection_bound(&sql, &significant) => StatementClass::Write,
            class => class,
        },
        _ => StatementClass::Write,
    }
}

fn classify_parsed(statement: &Statement) -> StatementClass {
    use TransactionControl as T;
    match statement {
        Statement::Query(query) => {
            let plain = matches!(
                *query.body,
                SetExpr::Select(_)
                    | SetExpr::SetOperation { .. }
                    | SetExpr::Values(_)
                    | SetExpr::Query(_)
            );
            let ctes_read = query.with.as_ref().is_none_or(|with| {
                with.cte_tables.iter().all(|cte| {
                    matches!(
                        *cte.query.body,
                        SetExpr::Select(_)
                            | SetExpr::SetOperation { .. }
                            | SetExpr::Values(_)
                            | SetExpr::Query(_)
                    )
                })
            });
            if plain && ctes_read {
                StatementClass::Read
            } else {
                StatementClass::Write
            }
        }
        Statement::Explain { .. } | Statement::ExplainTable { .. } => StatementClass::Read,
        Statement::StartTransaction { .. } => StatementClass::Transaction(T::Begin),
        Statement::Commit { .. } => StatementClass::Transaction(T::Commit),
        Statement::Rollback {
            savepoint: None, ..
        } => StatementClass::Transaction(T::Rollback),
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => StatementClass::Transaction(T::RollbackTo(name.value.clone())),
        Statement::Savepoint { name } => {
            StatementClass::Transaction(T::Savepoint(name.value.clone()))
        }
        Statement::ReleaseSavepoint { name } => {
            StatementClass::Transaction(T::Release(name.value.clone()))
        }
        _ => StatementClass::Write,
    }
}

/// The fast path for the commonest statement a proxy sees: a SELECT with no parenthesis at all
/// calls no function and has no subquery, so it cannot write or depend on its connection (TEMP
/// names aside, which [`connection_bound`] checks). Anything else (a `(`, an unterminated literal
/// or comment, a `;`, an unknown byte) goes to the parser.
fn is_plain_select(sql: &str, tokens: &[Token], significant: &[&Token]) -> bool {
    let plain = tokens.iter().all(|t| match t.kind {
        TokenKind::Punct => t.text(sql) != "(",
        TokenKind::StringLiteral { terminated }
        | TokenKind::QuotedIdent { terminated }
        | TokenKind::BlockComment { terminated } => terminated,
        TokenKind::Semicolon | TokenKind::Other => false,
        _ => true,
    });
    plain && !connection_bound(sql, significant)
}

/// True when a statement's result depends on the connection that runs it, so it must run on
/// the session's own primary connection: a call of `changes()`, `last_insert_rowid()` or
/// `total_changes()` (quoted names are calls too), any PRAGMA (even under EXPLAIN, SQLite applies
/// a PRAGMA's setting while compiling), and TEMP objects (`temp.x`, `sqlite_temp_master`).
/// Works on the statement's significant tokens, so string literals and comments never match;
/// names are compared without case and without allocating.
fn connection_bound(sql: &str, significant: &[&Token]) -> bool {
    significant.iter().enumerate().any(|(i, t)| {
        let name = match t.kind {
            TokenKind::Word => t.text(sql),
            TokenKind::QuotedIdent { .. } => unquote(t.text(sql)),
            _ => return false,
        };
        let is = |w: &str| name.eq_ignore_ascii_case(w);
        let next = significant.get(i + 1).map(|n| n.text(sql));
        (CONNECTION_FUNCTIONS.iter().any(|f| is(f)) && next == Some("("))
            || (is("pragma") && t.kind == TokenKind::Word)
            || ((is("temp") || is("temporary")) && next == Some("."))
            || is("sqlite_temp_master")
            || is("sqlite_temp_schema")
    })
}

fn unquote(text: &str) -> &str {
    text.get(1..text.len().saturating_sub(1)).unwrap_or("")
}

/// The first `n` significant words (or other tokens) of a statement, upper-cased.
pub fn leading_words(sql: &str, n: usize) -> Vec<String> {
    Lexer::new(sql)
        .filter(|t| !t.kind.is_trivia())
        .take(n)
        .map(|t| t.text(sql).to_ascii_uppercase())
        .collect()
}

/// The database name of `USE <name>`, without its quotes.
fn unquote_target(text: &str) -> String {
    let unquoted = text.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']' | '\''));
    unquoted.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementClass::*;
    use TransactionControl as T;

    #[test]
    fn the_main_classes() {
        assert_eq!(classify("SELECT * FROM t WHERE a = 1"), Read);
        assert_eq!(classify("alaivo * ao t rehefa a = 1"), Read);
        assert_eq!(classify("WITH x AS (SELECT 1) SELECT * FROM x"), Read);
        assert_eq!(classify("EXPLAIN QUERY PLAN SELECT * FROM t"), Read);
        assert_eq!(classify("SHOW TABLES"), Read);
        assert_eq!(classify("asehoy ny tabilao"), Read);
        assert_eq!(classify("INSERT INTO t VALUES (1)"), Write);
        assert_eq!(classify("manampia ao@ t sanda (1)"), Write);
        assert_eq!(classify("SELECT last_insert_rowid()"), Write);
        assert_eq!(classify("SELECT changes ()"), Write);
        assert_eq!(classify("SELECT v FROM kv WHERE id = 7"), Read);
        assert_eq!(classify("SELECT * FROM temp.t"), Write);
        assert_eq!(classify("SELECT * FROM sqlite_temp_master"), Write);
        assert_eq!(classify("SELECT 'unterminated"), Write);
        assert_eq!(classify("SELECT my_changes_col FROM t"), Read);
        assert_eq!(classify("SELECT \"changes\"()"), Write);
        assert_eq!(classify("SELECT 'changes()' AS label"), Read);
        assert_eq!(classify("EXPLAIN PRAGMA query_only = 1"), Write);
        assert_eq!(classify("SELECT * FROM temp.t"), Write);
        assert_eq!(classify("SHOW TABLES; DROP TABLE users"), Write);
        assert_eq!(classify("USE 'shop'"), Use("shop".into()));
        assert_eq!(classify("PRAGMA table_info(t)"), Write);
        assert_eq!(classify("this is not sql"), Write);
        assert_eq!(classify("USE shop"), Use("shop".into()));
        assert_eq!(classify("ampiasao \"shop\""), Use("shop".into()));
        assert_eq!(classify("BEGIN IMMEDIATE"), Transaction(T::Begin));
        assert_eq!(classify("COMMIT"), Transaction(T::Commit));
        assert_eq!(classify("END TRANSACTION"), Transaction(T::Commit));
        assert_eq!(classify("ROLLBACK"), Transaction(T::Rollback));
        assert_eq!(
            classify("ROLLBACK TO sp"),
            Transaction(T::RollbackTo("sp".into()))
        );
        assert_eq!(
            classify("SAVEPOINT sp"),
            Transaction(T::Savepoint("sp".into()))
        );
        assert_eq!(classify("RELEASE sp"), Transaction(T::Release("sp".into())));
    }
}
