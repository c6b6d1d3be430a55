//! Simple parameterization of clients' writes: `UPDATE t SET v = 'x' WHERE id = 5` runs as the
//! cached statement `UPDATE t SET v = ?1 WHERE id = ?2` with `'x'` and `5` bound.
//!
//! Clients send SQL as text with its values written in, so without this every write is compiled
//! again, and compiling a write also compiles the capture triggers it fires (`oplog::capture`):
//! about four fifths of what SQLite spends on a one-row UPDATE of a captured table (measured in
//! BENCHMARKS.md, "Compiled once"). SQL Server's "simple parameterization" is the model: only
//! statements whose meaning cannot depend on a value being written in are parameterized.
//!
//! A statement qualifies when it is one INSERT, REPLACE, UPDATE or DELETE with no SELECT (so no
//! subquery, and no `ORDER BY 1` meaning a column), no RETURNING (its column names would become
//! `?1`), no upsert (`ON CONFLICT … WHERE` must match a partial index's text), no WITH, no
//! ORDER BY / LIMIT of its own, no bound parameter of its own, and between 1 and
//! [`MAX_VALUES`] values. Only two kinds of literal are replaced: decimal integers that fit an
//! `i64` and `'…'` strings that stand where a value stands (after an operator, `(`, `,` or a
//! keyword that takes an expression), so a string SQLite would read as a name (`INSERT INTO
//! 't'`, `COLLATE 'nocase'`) stays as it is. Reals, hex, blobs and `NULL` stay written in. A
//! bound integer or string is the same value to SQLite as the literal (both have no affinity),
//! so the statement does the same thing; when the parameterized text does not compile (a value
//! where SQLite wants a constant), the session runs the text as sent, and SQLite's own error, if
//! any, is the one the client sees.
//!
//! Not used under MULTI_PRIMARY: there the connection's authorizer notes, at each compile, which
//! owned objects a transaction writes (`ownership`), and a statement taken from the cache is not
//! authorized again.

use dirkdb_core::sql::lexer::{Lexer, TokenKind};
use rusqlite::Statement;

/// Most values one statement may have to be parameterized (a longer multi-row INSERT is
/// compiled as sent: its shape would rarely repeat and would push others out of the cache).
pub(crate) const MAX_VALUES: usize = 32;

/// Longest statement text considered (the cached shapes stay small).
pub(crate) const MAX_SQL_BYTES: usize = 2048;

/// A value taken out of the statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Integer(i64),
    Text(String),
}

/// A statement with its values replaced by `?1`, `?2`, … and the values in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    pub text: String,
    pub values: Vec<Value>,
}

impl Shape {
    /// Binds the values to `stmt` (compiled from [`Shape::text`]).
    pub(crate) fn bind(&self, stmt: &mut Statement<'_>) -> rusqlite::Result<()> {
        for (i, value) in self.values.iter().enumerate() {
            match value {
                Value::Integer(n) => stmt.raw_bind_parameter(i + 1, n)?,
                Value::Text(s) => stmt.raw_bind_parameter(i + 1, s.as_str())?,
            }
        }
        Ok(())
    }
}

/// The statement's shape, or `None` when it does not qualify (see the module doc).
pub(crate) fn parameterize(sql: &str) -> Option<Shape> {
    if sql.len() > MAX_SQL_BYTES {
        return None;
    }
    let mut text = String::with_capacity(sql.len());
    let mut values = Vec::new();
    let mut verb: Option<Verb> = None;
    let mut significant = 0usize;
    let mut previous = Previous::Start;
    let mut ended = false;
    for token in Lexer::new(sql) {
        let piece = token.text(sql);
        if token.kind.is_trivia() {
            text.push_str(piece);
            continue;
        }
        if ended {
            return None; // a second statement after `;`
        }
        significant += 1;
        let replaced = match token.kind {
            TokenKind::Word => {
                let word = piece.to_ascii_uppercase();
                match verb {
                    None => verb = Some(Verb::of(&word)?),
                    Some(v) if refuses(v, &word, significant) => return None,
                    Some(_) => {}
                }
                previous = Previous::Word(takes_value(&word));
                None
            }
            TokenKind::Number => {
                previous = Previous::Value;
                integer(piece)
            }
            TokenKind::StringLiteral { terminated: true } => {
                let value = if previous.takes_value() {
                    text_value(piece)
                } else {
                    None
                };
                previous = Previous::Value;
                value
            }
            TokenKind::Operator => {
                previous = Previous::Operator;
                None
            }
            TokenKind::Punct => {
                previous = if piece == ")" || piece == "." {
                    Previous::Value
                } else {
                    Previous::Operator
                };
                None
            }
            TokenKind::QuotedIdent { terminated: true } => {
                previous = Previous::Value;
                None
            }
            TokenKind::Semicolon => {
                ended = true;
                None
            }
            // Bound parameters of its own, unterminated literals, anything unknown.
            _ => return None,
        };
        match replaced {
            Some(value) => {
                if values.len() == MAX_VALUES {
                    return None;
                }
                values.push(value);
                text.push('?');
                text.push_str(&values.len().to_string());
            }
            None => text.push_str(piece),
        }
    }
    (!values.is_empty()).then_some(Shape { text, values })
}

/// The statements that qualify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Insert,
    Update,
    Delete,
}

impl Verb {
    fn of(word: &str) -> Option<Verb> {
        match word {
            "INSERT" | "REPLACE" => Some(Verb::Insert),
            "UPDATE" => Some(Verb::Update),
            "DELETE" => Some(Verb::Delete),
            _ => None,
        }
    }
}

/// What came before a token, for telling a value's place from a name's.
#[derive(Debug, Clone, Copy)]
enum Previous {
    Start,
    /// A keyword: whether an expression may follow it.
    Word(bool),
    Operator,
    Value,
}

impl Previous {
    fn takes_value(self) -> bool {
        matches!(self, Previous::Operator | Previous::Word(true))
    }
}

/// Words after which a statement is compiled as sent (see the module doc).
fn refuses(verb: Verb, word: &str, position: usize) -> bool {
    match word {
        "SELECT" | "RETURNING" | "CONFLICT" | "WITH" | "ORDER" | "LIMIT" | "OFFSET" | "GROUP"
        | "WINDOW" | "OVER" | "FILTER" | "RAISE" => true,
        // UPDATE … FROM joins another table; DELETE FROM is DELETE's own.
        "FROM" => !(verb == Verb::Delete && position == 2),
        _ => false,
    }
}

/// Keywords a value may follow (a string after any other word stays written in).
fn takes_value(word: &str) -> bool {
    matches!(
        word,
        "WHERE"
            | "AND"
            | "OR"
            | "NOT"
            | "LIKE"
            | "GLOB"
            | "REGEXP"
            | "MATCH"
            | "IS"
            | "IN"
            | "BETWEEN"
            | "CASE"
            | "WHEN"
            | "THEN"
            | "ELSE"
            | "ESCAPE"
    )
}

/// A decimal integer literal that fits an `i64` as a value; `None` for the literals that stay
/// written in (reals, hex, digit separators, too large).
fn integer(piece: &str) -> Option<Value> {
    if !piece.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    piece.parse::<i64>().ok().map(Value::Integer)
}

/// The text of a `'…'` literal (`None` for a blob `X'…'`).
fn text_value(piece: &str) -> Option<Value> {
    let inner = piece.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(Value::Text(inner.replace("''", "'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Option<(String, Vec<Value>)> {
        parameterize(sql).map(|s| (s.text, s.values))
    }

    fn int(n: i64) -> Value {
        Value::Integer(n)
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn a_one_row_update_gets_both_values_taken_out() {
        assert_eq!(
            shape("UPDATE bench SET v = 'it''s' WHERE id = 42"),
            Some((
                "UPDATE bench SET v = ?1 WHERE id = ?2".into(),
                vec![text("it's"), int(42)]
            ))
        );
    }

    #[test]
    fn inserts_deletes_and_in_lists_qualify() {
        assert_eq!(
            shape("insert into t (a, b) values (1, 'x'), (-2, 'y')"),
            Some((
                "insert into t (a, b) values (?1, ?2), (-?3, ?4)".into(),
                vec![int(1), text("x"), int(2), text("y")]
            ))
        );
        assert_eq!(
            shape("DELETE FROM t WHERE id IN (1, 2) AND k = 'a';"),
            Some((
                "DELETE FROM t WHERE id IN (?1, ?2) AND k = ?3;".into(),
                vec![int(1), int(2), text("a")]
            ))
        );
    }

    #[test]
    fn reads_subqueries_returning_and_upserts_are_compiled_as_sent() {
        for sql in [
            "SELECT * FROM t WHERE id = 1",
            "INSERT INTO t SELECT 1 ORDER BY 1",
            "DELETE FROM t WHERE id IN (SELECT id FROM u WHERE k = 2)",
            "UPDATE t SET v = 1 WHERE id = 2 RETURNING v",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) WHERE id > 0 DO NOTHING",
            "WITH x AS (SELECT 1) DELETE FROM t WHERE id = 1",
            "UPDATE t SET v = 1 FROM u WHERE t.id = u.id AND u.k = 3",
            "UPDATE t SET v = 1 WHERE id = 2 ORDER BY id LIMIT 1",
            "CREATE TABLE t (id INTEGER DEFAULT 5)",
            "PRAGMA cache_size = 5",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn statements_with_parameters_several_statements_or_no_values_are_left_alone() {
        for sql in [
            "UPDATE t SET v = ? WHERE id = 1",
            "UPDATE t SET v = :v WHERE id = 1",
            "UPDATE t SET v = 1; DELETE FROM t",
            "DELETE FROM t",
            "INSERT INTO t DEFAULT VALUES",
            "UPDATE t SET v = 'unterminated",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn strings_where_names_stand_and_other_literals_stay_written_in() {
        assert_eq!(
            shape("INSERT INTO 'quoted' VALUES (1.5, 0x10, x'ab', NULL, 3)"),
            Some((
                "INSERT INTO 'quoted' VALUES (1.5, 0x10, x'ab', NULL, ?1)".into(),
                vec![int(3)]
            ))
        );
        assert_eq!(
            shape("UPDATE t SET 'v' = 'w' WHERE k = 'a' COLLATE 'nocase'"),
            Some((
                "UPDATE t SET 'v' = ?1 WHERE k = ?2 COLLATE 'nocase'".into(),
                vec![text("w"), text("a")]
            ))
        );
        assert_eq!(
            shape("DELETE FROM t WHERE id = 9223372036854775808 OR id = 1_000 OR id = 7"),
            Some((
                "DELETE FROM t WHERE id = 9223372036854775808 OR id = 1_000 OR id = ?1".into(),
                vec![int(7)]
            ))
        );
    }

    #[test]
    fn comments_and_quoted_names_are_kept_and_never_parameterized() {
        assert_eq!(
            shape("UPDATE \"t 1\" /* '5' */ SET [v] = 5 -- 'x'\n WHERE `id` = 1"),
            Some((
                "UPDATE \"t 1\" /* '5' */ SET [v] = ?1 -- 'x'\n WHERE `id` = ?2".into(),
                vec![int(5), int(1)]
            ))
        );
    }

    #[test]
    fn too_many_values_or_too_long_a_statement_is_compiled_as_sent() {
        let rows: Vec<String> = (0..=MAX_VALUES).map(|i| format!("({i})")).collect();
        assert_eq!(
            shape(&format!("INSERT INTO t VALUES {}", rows.join(", "))),
            None
        );
        let long = format!(
            "UPDATE t SET v = '{}' WHERE id = 1",
            "x".repeat(MAX_SQL_BYTES)
        );
        assert_eq!(shape(&long), None);
    }

    #[test]
    fn a_bound_shape_does_what_the_text_does() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, s TEXT);
             CREATE TABLE u (id INTEGER PRIMARY KEY, n INTEGER, s TEXT);",
        )
        .unwrap();
        for (i, sql) in [
            "INSERT INTO {} VALUES (1, '12', 'a'), (2, 7, '0012')",
            "UPDATE {} SET n = n + 1, s = s || 'b''c' WHERE id IN (1, 2) AND s <> 'zz'",
            "INSERT INTO {} (id, n, s) VALUES (3, -4, 'x')",
            "DELETE FROM {} WHERE n = '-4' OR s = 12",
            "UPDATE {} SET s = 'q' WHERE n BETWEEN 8 AND '13' AND s LIKE 'a%'",
        ]
        .iter()
        .enumerate()
        {
            conn.execute_batch(&sql.replace("{}", "t")).unwrap();
            let shaped = parameterize(&sql.replace("{}", "u")).unwrap();
            assert!(!shaped.values.is_empty(), "statement {i}");
            let mut stmt = conn.prepare_cached(&shaped.text).unwrap();
            shaped.bind(&mut stmt).unwrap();
            stmt.raw_execute().unwrap();
        }
        let dump = |table: &str| -> Vec<(i64, String, String, String)> {
            conn.prepare(&format!(
                "SELECT id, quote(n), typeof(n), quote(s) FROM {table} ORDER BY id"
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        assert_eq!(dump("t"), dump("u"));
        assert_eq!(dump("t").len(), 2);
    }
}
