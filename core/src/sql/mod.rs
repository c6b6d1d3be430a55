//! SQL text handling shared by every DirkDB process.
//!
//! * [`lexer`] turns SQL text into byte-accurate tokens (literals, quoted
//!   identifiers and comments recognised the way SQLite does), so nothing
//!   ever mistakes a `;` or a keyword inside a string for syntax.
//! * [`splitter`] frames a byte stream (a connection, a script file, the
//!   interactive client's input) into statements ended by `;`, following
//!   SQLite's `sqlite3_complete()` rules for trigger bodies.
//! * [`dirkdb`] is DirkDB's own language: parser, syntax tree and translator to SQLite SQL.
//! * [`malagasy`] translates DirkDB's Malagasy keywords into SQL, on tokens,
//!   before a statement is classified and executed.
//! * [`classify`] decides where a statement may run; [`transaction`] follows a session's
//!   transaction from the statements that control it.

pub mod classify;
pub mod conflicts;
pub mod dirkdb;
pub mod lexer;
pub mod limits;
pub mod malagasy;
pub mod objects;
pub mod session_state;
pub mod splitter;
pub mod transaction;

pub use splitter::{split_script, Script, SplitItem, StatementSplitter, Unclosed};

/// The SQL a statement stands for, for classification and cache keys: a DirkDB statement's
/// translation ([`dirkdb::routing_sql`]), or the mixed Malagasy-English translation of anything
/// else (English SQL comes back unchanged).
pub fn translate(sql: &str) -> String {
    translate_with_tokens(sql).0.into_owned()
}

/// Like [`translate`], also returning the tokens of the text it returns; English SQL is lexed
/// once and borrowed (the proxy's classification of every statement: issue #19).
pub fn translate_with_tokens(sql: &str) -> (std::borrow::Cow<'_, str>, Vec<lexer::Token>) {
    match dirkdb::routing_sql_of(sql) {
        Some(translated) => {
            let tokens = lexer::tokenize(&translated);
            (std::borrow::Cow::Owned(translated.to_string()), tokens)
        }
        None => malagasy::translate_with_tokens(sql),
    }
}
