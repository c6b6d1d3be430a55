//! SQL text handling shared by every DirkDB process.
//!
//! * [`lexer`] turns SQL text into byte-accurate tokens (literals, quoted
//!   identifiers and comments recognised the way SQLite does), so nothing
//!   ever mistakes a `;` or a keyword inside a string for syntax.
//! * [`splitter`] frames a byte stream (a connection, a script file, the
//!   interactive client's input) into statements ended by `;`, following
//!   SQLite's `sqlite3_complete()` rules for trigger bodies.
//! * [`malagasy`] translates DirkDB's Malagasy keywords into SQL, on tokens,
//!   before a statement is classified and executed.
//! * [`classify`] decides where a statement may run; [`transaction`] follows a session's
//!   transaction from the statements that control it.

pub mod classify;
pub mod lexer;
pub mod malagasy;
pub mod splitter;
pub mod transaction;

pub use malagasy::translate;
pub use splitter::{split_script, Script, SplitItem, StatementSplitter};
