//! Statements about databases rather than inside one, which SQLite does not know:
//! `CREATE DATABASE`, `DROP DATABASE`, `USE`, `SHOW DATABASES`, `SHOW TABLES`, `SHOW OWNERS`
//! (MULTI_PRIMARY), and the DirkDB
//! success texts of the statements SQLite runs.
//!
//! Both work on the significant tokens of an already translated statement (Malagasy keywords are
//! English by now), so `ampiasao x` arrives here as `USE x`.

use dirkdb_core::sql::lexer::{tokenize, TokenKind};

/// A statement the server handles itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DatabaseStatement {
    /// `CREATE DATABASE [IF NOT EXISTS] name`
    Create {
        /// Database name.
        name: String,
        /// No error when it exists.
        if_not_exists: bool,
    },
    /// `DROP DATABASE [IF EXISTS] name`
    Drop {
        /// Database name.
        name: String,
        /// No error when it is missing.
        if_exists: bool,
    },
    /// `USE name`
    Use(String),
    /// `SHOW DATABASES`
    ShowDatabases,
    /// `SHOW TABLES`
    ShowTables,
    /// `SHOW OWNERS` (MULTI_PRIMARY): every database, table, view and domain with its owner.
    ShowOwners,
}

/// A significant token: its upper-cased text for keyword matching, its identifier value, and
/// where it starts in the statement.
struct Word {
    upper: String,
    ident: String,
    start: usize,
}

/// Whether the statement's first word is one of `keywords` (upper case). Statements reach the
/// server without leading whitespace or comments (the splitter strips them); any other start
/// is answered true, so the full tokenizer decides.
fn starts_with_any(sql: &str, keywords: &[&str]) -> bool {
    let head = sql.trim_start();
    let word_end = head
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(head.len());
    if word_end == 0 {
        return true;
    }
    let word = &head[..word_end];
    keywords.iter().any(|k| k.eq_ignore_ascii_case(word))
}

fn significant_words(sql: &str) -> Vec<Word> {
    tokenize(sql)
        .into_iter()
        .filter(|t| !t.kind.is_trivia())
        .map(|t| {
            let text = t.text(sql);
            let ident = match t.kind {
                TokenKind::QuotedIdent { .. } => unquote(text),
                _ => text.to_string(),
            };
            Word {
                upper: text.to_ascii_uppercase(),
                ident,
                start: t.span.start,
            }
        })
        .collect()
}

fn unquote(text: &str) -> String {
    let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or("");
    match text.chars().next() {
        Some('"') => inner.replace("\"\"", "\""),
        Some('`') => inner.replace("``", "`"),
        _ => inner.to_string(),
    }
}

/// Recognizes a database statement; `None` means "not one, give it to SQLite";
/// `Some(Err)` is a database statement with a syntax error.
pub(crate) fn parse(sql: &str) -> Option<Result<DatabaseStatement, String>> {
    if !starts_with_any(sql, &["CREATE", "DROP", "USE", "SHOW"]) {
        return None; // most statements: no need to tokenize them whole
    }
    let words = significant_words(sql);
    let upper: Vec<&str> = words.iter().map(|w| w.upper.as_str()).collect();
    // The name is the rest of the statement: one identifier, or raw text such as `a-b` that the
    // catalog then accepts or refuses as a file name.
    let name_at = |i: usize| -> Result<String, String> {
        match words.get(i) {
            Some(w) if i + 1 == words.len() => Ok(w.ident.clone()),
            Some(w) => Ok(sql[w.start..].trim().to_string()),
            None => Err("a database name is expected".into()),
        }
    };
    let result = match upper.as_slice() {
        ["CREATE", "DATABASE" | "SCHEMA", "IF", "NOT", "EXISTS", ..] => {
            name_at(5).map(|name| DatabaseStatement::Create {
                name,
                if_not_exists: true,
            })
        }
        ["CREATE", "DATABASE" | "SCHEMA", ..] => name_at(2).map(|name| DatabaseStatement::Create {
            name,
            if_not_exists: false,
        }),
        ["DROP", "DATABASE" | "SCHEMA", "IF", "EXISTS", ..] => {
            name_at(4).map(|name| DatabaseStatement::Drop {
                name,
                if_exists: true,
            })
        }
        ["DROP", "DATABASE" | "SCHEMA", ..] => name_at(2).map(|name| DatabaseStatement::Drop {
            name,
            if_exists: false,
        }),
        ["USE", ..] => name_at(1).map(DatabaseStatement::Use),
        ["SHOW", "DATABASES" | "SCHEMAS"] => Ok(DatabaseStatement::ShowDatabases),
        ["SHOW", "TABLES"] => Ok(DatabaseStatement::ShowTables),
        ["SHOW", "OWNERS"] => Ok(DatabaseStatement::ShowOwners),
        ["SHOW", ..] => Err("SHOW takes DATABASES, TABLES or OWNERS".into()),
        _ => return None,
    };
    Some(result)
}

/// The schema object a CREATE/DROP/ALTER statement is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaObject {
    /// CREATE, DROP or ALTER.
    pub verb: String,
    /// TABLE, VIEW, INDEX or TRIGGER.
    pub kind: String,
    /// The object's name (unquoted, without schema).
    pub name: String,
}

/// Finds the object of a CREATE/DROP/ALTER statement.
pub(crate) fn schema_object(sql: &str) -> Option<SchemaObject> {
    if !starts_with_any(sql, &["CREATE", "DROP", "ALTER"]) {
        return None;
    }
    let words = significant_words(sql);
    let verb = words.first()?.upper.clone();
    if !matches!(verb.as_str(), "CREATE" | "DROP" | "ALTER") {
        return None;
    }
    let mut i = 1;
    while words.get(i).is_some_and(|w| {
        matches!(
            w.upper.as_str(),
            "TEMP" | "TEMPORARY" | "UNIQUE" | "VIRTUAL"
        )
    }) {
        i += 1;
    }
    let kind = words.get(i)?.upper.clone();
    if !matches!(kind.as_str(), "TABLE" | "VIEW" | "INDEX" | "TRIGGER") {
        return None;
    }
    i += 1;
    while words
        .get(i)
        .is_some_and(|w| matches!(w.upper.as_str(), "IF" | "NOT" | "EXISTS"))
    {
        i += 1;
    }
    let mut name = words.get(i)?.ident.clone();
    if words.get(i + 1).is_some_and(|w| w.upper == ".") {
        name = words.get(i + 2).map(|w| w.ident.clone()).unwrap_or(name);
    }
    Some(SchemaObject { verb, kind, name })
}

/// DirkDB's answer to a statement that returned no rows.
pub(crate) fn success_text(sql: &str) -> String {
    let words = significant_words(sql);
    let upper: Vec<&str> = words.iter().map(|w| w.upper.as_str()).collect();
    match upper.first().copied() {
        Some("INSERT" | "UPDATE" | "DELETE" | "REPLACE") => CHANGED.to_string(),
        Some("WITH")
            if upper
                .iter()
                .any(|w| matches!(*w, "INSERT" | "UPDATE" | "DELETE")) =>
        {
            CHANGED.to_string()
        }
        Some("CREATE") => object_text(sql, "voaforona"),
        Some("DROP") => object_text(sql, "voafafa"),
        _ => "OK".to_string(),
    }
}

/// DirkDB's text after INSERT, UPDATE and DELETE.
pub(crate) const CHANGED: &str = "Tafinditra ny fiovana ny tabilao";

/// `Ny <kind> : <name> dia <verb> soamantsara` for CREATE/DROP of a schema object.
fn object_text(sql: &str, verb: &str) -> String {
    let Some(object) = schema_object(sql) else {
        return "OK".to_string();
    };
    let kind = match object.kind.as_str() {
        "TABLE" => "tabilao",
        "VIEW" => "jery",
        "INDEX" => "index",
        _ => "trigger",
    };
    format!("Ny {kind} : {} dia {verb} soamantsara", object.name)
}

/// DirkDB's answer to `USE`; its client matches it to update the prompt.
pub(crate) fn use_text(name: &str) -> String {
    format!("Ny tahiry : {name} dia miasa ankehitriny")
}

/// DirkDB's answer to CREATE/DROP DATABASE.
pub(crate) fn database_text(name: &str, verb: &str) -> String {
    format!("Ny tahiry : {name} dia {verb} soamantsara")
}

#[cfg(test)]
mod tests {
    use super::*;
    use DatabaseStatement::*;

    fn p(sql: &str) -> Option<Result<DatabaseStatement, String>> {
        parse(sql)
    }

    #[test]
    fn database_statements() {
        assert_eq!(
            p("CREATE DATABASE shop"),
            Some(Ok(Create {
                name: "shop".into(),
                if_not_exists: false
            }))
        );
        assert_eq!(
            p("create database if not exists \"shop\""),
            Some(Ok(Create {
                name: "shop".into(),
                if_not_exists: true
            }))
        );
        assert_eq!(
            p("DROP DATABASE IF EXISTS shop"),
            Some(Ok(Drop {
                name: "shop".into(),
                if_exists: true
            }))
        );
        assert_eq!(
            p("DROP DATABASE shop"),
            Some(Ok(Drop {
                name: "shop".into(),
                if_exists: false
            }))
        );
        assert_eq!(p("USE  testdb"), Some(Ok(Use("testdb".into()))));
        assert_eq!(p("use `x`"), Some(Ok(Use("x".into()))));
        assert_eq!(p("SHOW DATABASES"), Some(Ok(ShowDatabases)));
        assert_eq!(p("show tables -- all"), Some(Ok(ShowTables)));
        assert_eq!(p("SHOW OWNERS"), Some(Ok(ShowOwners)));
        assert!(matches!(p("USE"), Some(Err(_))));
        assert_eq!(p("USE a-b"), Some(Ok(Use("a-b".into()))));
        assert_eq!(p("USE a b"), Some(Ok(Use("a b".into()))));
        assert!(matches!(p("SHOW ME"), Some(Err(_))));
        assert_eq!(p("CREATE TABLE t(x)"), None);
        assert_eq!(p("SELECT 'USE x'"), None);
    }

    #[test]
    fn success_texts() {
        assert_eq!(success_text("INSERT INTO t VALUES (1)"), CHANGED);
        assert_eq!(success_text("update t set x=1"), CHANGED);
        assert_eq!(success_text("DELETE FROM t"), CHANGED);
        assert_eq!(
            success_text("CREATE TABLE IF NOT EXISTS utilisateurs (id INT)"),
            "Ny tabilao : utilisateurs dia voaforona soamantsara"
        );
        assert_eq!(
            success_text("CREATE TEMP VIEW \"v 1\" AS SELECT 1"),
            "Ny jery : v 1 dia voaforona soamantsara"
        );
        assert_eq!(
            success_text("CREATE UNIQUE INDEX main.ix ON t(x)"),
            "Ny index : ix dia voaforona soamantsara"
        );
        assert_eq!(
            success_text("DROP TABLE t"),
            "Ny tabilao : t dia voafafa soamantsara"
        );
        assert_eq!(success_text("BEGIN"), "OK");
        assert_eq!(
            use_text("testdb"),
            "Ny tahiry : testdb dia miasa ankehitriny"
        );
    }
}
