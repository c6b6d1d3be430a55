//! Statement framing for the wire protocol and for script text.
//!
//! A DirkDB request is statement text terminated by `;` (DESIGN.md §4). A `;`
//! inside a string literal, a quoted identifier or a comment does not end a
//! statement, and — exactly like SQLite's `sqlite3_complete()` — neither does
//! a `;` inside the body of `CREATE [TEMP|TEMPORARY] TRIGGER … BEGIN … END`:
//! there the statement ends only at a `;` that follows an `END` that itself
//! follows a `;`.
//!
//! [`StatementSplitter`] does this incrementally over raw bytes, because the
//! network delivers arbitrary chunks (a chunk may end inside `--`, `''` or a
//! UTF-8 sequence). All delimiters are ASCII, so framing works on bytes and
//! never depends on the text being valid UTF-8; callers validate the bytes of
//! each returned statement. Lexical state survives between pushes, so every
//! byte is examined once, and a statement longer than the configured limit
//! stops being stored (memory stays bounded) while its end is still found.
//!
//! A statement is refused the moment it passes the limit, not at its end:
//! [`SplitItem::TooLarge`] is ready at once, naming what is still open (a
//! string literal, a comment, a trigger body), so a client that sent an
//! unterminated literal is answered instead of left waiting. The rest of the
//! refused statement is then skipped up to its own `;`, read by the same
//! rules: a `;` inside its literal does not end it, so no fragment of a
//! refused statement (say, text inside a string) is ever run as a statement
//! of its own. Comment bytes before a statement count too (a comment alone
//! over the limit is refused), separately from the statement's own bytes.
//!
//! [`split_script`] runs the same splitter over a whole text, for the
//! interactive client and for `-f` script files.

use std::collections::VecDeque;

use super::lexer::{is_ident_byte, is_space};

/// One result of [`StatementSplitter::next_item`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitItem {
    /// The bytes of one complete statement: without its terminating `;`,
    /// without leading whitespace and comments, without trailing whitespace.
    /// Never empty.
    Statement(Vec<u8>),
    /// A statement that went over the splitter's limit, reported as soon as
    /// it did (before its end). Its bytes were discarded, and the rest of it,
    /// up to its terminating `;`, is skipped.
    TooLarge {
        /// Bytes of it seen when it was refused (the limit plus one).
        bytes: usize,
        /// What was open at that moment, whose end the skip must reach.
        open: Option<Unclosed>,
    },
}

/// What a refused statement had open when it passed the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclosed {
    /// A string literal opened by this quote.
    String(u8),
    /// A quoted identifier (`"…"`, `` `…` ``, `[…]`).
    Identifier,
    /// A `--` or `/* … */` comment.
    Comment,
    /// The body of `CREATE TRIGGER … BEGIN … END`.
    TriggerBody,
}

impl std::fmt::Display for Unclosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unclosed::String(q) => write!(f, "a string literal opened with {}", *q as char),
            Unclosed::Identifier => f.write_str("a quoted identifier"),
            Unclosed::Comment => f.write_str("a comment"),
            Unclosed::TriggerBody => f.write_str("a trigger body (it ends at `; END;`)"),
        }
    }
}

/// The statements of a script, as found by [`split_script`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    /// Complete statements in order, trimmed, without their `;`; empty and
    /// comment-only statements are left out.
    pub statements: Vec<String>,
    /// The unfinished statement after the last `;`, trimmed (leading
    /// comments dropped); empty when only whitespace and comments follow.
    pub remainder: String,
}

/// Splits `text` into complete statements and an unfinished remainder.
///
/// Uses the same rules as [`StatementSplitter`]. An interactive client can
/// keep `remainder` and append the next input line to it (joined with a
/// newline, since the remainder may end in a `--` comment).
pub fn split_script(text: &str) -> Script {
    let mut splitter = StatementSplitter::new(usize::MAX);
    splitter.push(text.as_bytes());
    let mut statements = Vec::new();
    while let Some(item) = splitter.next_item() {
        if let SplitItem::Statement(bytes) = item {
            statements.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let remainder = String::from_utf8_lossy(&splitter.partial()).into_owned();
    Script {
        statements,
        remainder,
    }
}

/// Incremental statement splitter over bytes.
///
/// Push bytes as they arrive with [`push`](Self::push), then drain complete
/// statements with [`next_item`](Self::next_item).
#[derive(Debug)]
pub struct StatementSplitter {
    max_statement_bytes: usize,
    lex: LexMode,
    word: WordAcc,
    complete: CompleteState,
    stmt: StmtBuf,
    ready: VecDeque<SplitItem>,
    head: Head,
}

impl StatementSplitter {
    /// A splitter that reports statements longer than `max_statement_bytes`
    /// as [`SplitItem::TooLarge`] instead of buffering them.
    pub fn new(max_statement_bytes: usize) -> Self {
        StatementSplitter {
            max_statement_bytes,
            lex: LexMode::Normal,
            word: WordAcc::default(),
            complete: CompleteState::Start,
            stmt: StmtBuf::default(),
            ready: VecDeque::new(),
            head: Head::default(),
        }
    }

    /// Feeds the next chunk of input; chunks may split any token or
    /// character anywhere.
    ///
    /// Between statements, a plain statement that the chunk holds whole is
    /// taken in one step ([`plain_statement`]): most statements a client
    /// sends have no literal, comment or trigger body, and examining them byte
    /// by byte was a quarter of the cache's instructions on a point-select.
    /// Everything else goes byte by byte, with the same result.
    pub fn push(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while self.between_statements() {
            let Some((statement, used)) = plain_statement(rest, self.max_statement_bytes) else {
                break;
            };
            if !statement.is_empty() {
                self.ready
                    .push_back(SplitItem::Statement(statement.to_vec()));
            }
            rest = rest.get(used..).unwrap_or_default();
        }
        for &b in rest {
            self.step(b);
        }
    }

    /// True when nothing of a statement is open: no byte of one, no comment,
    /// literal or word, as after the `;` that ended the last one.
    fn between_statements(&self) -> bool {
        self.lex == LexMode::Normal
            && self.complete == CompleteState::Start
            && self.word.len == 0
            && matches!(self.head, Head::None)
            && !self.stmt.started
            && !self.stmt.overflow
            && self.stmt.leading == 0
    }

    /// The next complete statement (or oversized-statement report), if any.
    pub fn next_item(&mut self) -> Option<SplitItem> {
        self.ready.pop_front()
    }

    /// True when a complete statement (or oversized-statement report) waits to be taken.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// How many complete statements (or overflow markers) are ready.
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// True when bytes of an unfinished statement other than whitespace and
    /// comments are buffered (e.g. the peer disconnected mid-statement).
    /// A statement already refused for its size is not partial: it was answered.
    pub fn has_partial(&self) -> bool {
        !self.stmt.overflow
            && (self.stmt.started || matches!(self.lex, LexMode::Dash | LexMode::Slash))
    }

    /// The unfinished statement's bytes, trimmed; empty when
    /// [`has_partial`](Self::has_partial) is false or the statement is over
    /// the size limit.
    pub fn partial(&self) -> Vec<u8> {
        if self.stmt.overflow {
            return Vec::new();
        }
        let mut out = self.stmt.bytes.clone();
        match self.lex {
            LexMode::Dash => out.push(b'-'),
            LexMode::Slash => out.push(b'/'),
            _ => {}
        }
        trim_end(&mut out);
        out
    }

    fn step(&mut self, b: u8) {
        match self.lex {
            LexMode::Normal => self.normal(b),
            LexMode::Dash => self.after_opener(b, b'-', b'-', LexMode::LineComment),
            LexMode::Slash => self.after_opener(b, b'/', b'*', LexMode::BlockComment),
            LexMode::LineComment => {
                if b == b'\n' {
                    self.lex = LexMode::Normal;
                }
                self.trivia(b);
            }
            LexMode::BlockComment => self.block_comment(b, false),
            LexMode::BlockCommentStar => self.block_comment(b, true),
            LexMode::Quoted(close) => {
                self.significant(b);
                if b == close {
                    self.lex = LexMode::Normal;
                } else if b == b'\\' && close != b']' && close != b'`' && self.head.is_dirkdb() {
                    self.lex = LexMode::Escaped(close);
                }
            }
            LexMode::Escaped(close) => {
                self.significant(b);
                self.lex = LexMode::Quoted(close);
            }
        }
    }

    fn normal(&mut self, b: u8) {
        if is_word_byte(b) {
            if !self.stmt.started {
                self.head = Head::Reading(Vec::new());
            }
            self.head.push(b);
            self.word.push(b);
            self.significant(b);
            return;
        }
        self.head.finish();
        self.finish_word();
        match b {
            b';' => self.semicolon(),
            b'-' => self.lex = LexMode::Dash,
            b'/' => self.lex = LexMode::Slash,
            b'\'' | b'"' | b'`' => self.open_quote(b, b),
            b'[' => self.open_quote(b, b']'),
            _ if is_space(b) => self.trivia(b),
            _ => {
                self.feed(Tk::Other);
                self.significant(b);
            }
        }
    }

    /// After a pending `-` or `/`: `second` makes it a comment opener,
    /// anything else makes the pending byte an ordinary operator.
    fn after_opener(&mut self, b: u8, first: u8, second: u8, comment: LexMode) {
        if b == second {
            self.lex = comment;
            self.trivia(first);
            self.trivia(b);
        } else {
            self.lex = LexMode::Normal;
            self.feed(Tk::Other);
            self.significant(first);
            self.normal(b);
        }
    }

    fn block_comment(&mut self, b: u8, after_star: bool) {
        self.lex = match b {
            b'/' if after_star => LexMode::Normal,
            b'*' => LexMode::BlockCommentStar,
            _ => LexMode::BlockComment,
        };
        self.trivia(b);
    }

    fn open_quote(&mut self, open: u8, close: u8) {
        self.feed(Tk::Other);
        self.significant(open);
        self.lex = LexMode::Quoted(close);
    }

    fn finish_word(&mut self) {
        if let Some(tk) = self.word.take() {
            self.feed(tk);
        }
    }

    fn feed(&mut self, tk: Tk) {
        self.complete = self.complete.next(tk);
    }

    fn semicolon(&mut self) {
        self.feed(Tk::Semi);
        if self.complete == CompleteState::Start {
            self.end_statement();
        } else {
            self.significant(b';');
        }
    }

    fn end_statement(&mut self) {
        self.head = Head::default();
        let stmt = std::mem::take(&mut self.stmt);
        if stmt.overflow {
            // Refused (and answered) when it went over the limit.
        } else if stmt.started {
            let mut bytes = stmt.bytes;
            trim_end(&mut bytes);
            self.ready.push_back(SplitItem::Statement(bytes));
        }
    }

    /// A byte that belongs to the statement proper.
    fn significant(&mut self, b: u8) {
        self.stmt.started = true;
        if self.stmt.store(b, self.max_statement_bytes) {
            self.refuse();
        }
    }

    /// Whitespace or comment bytes: kept only inside a statement. Comment
    /// bytes before it are counted (not kept), so that a comment that never
    /// ends is refused like a statement that never ends.
    fn trivia(&mut self, b: u8) {
        let over = if self.stmt.started {
            self.stmt.store(b, self.max_statement_bytes)
        } else if self.in_comment() {
            self.stmt.count_leading(self.max_statement_bytes)
        } else {
            false
        };
        if over {
            self.refuse();
        }
    }

    fn in_comment(&self) -> bool {
        matches!(
            self.lex,
            LexMode::LineComment | LexMode::BlockComment | LexMode::BlockCommentStar
        )
    }

    /// The pending statement just went over the limit: refused now.
    fn refuse(&mut self) {
        let open = match self.lex {
            LexMode::Quoted(b']' | b'`') => Some(Unclosed::Identifier),
            LexMode::Quoted(q) | LexMode::Escaped(q) if !self.head.is_dirkdb() && q == b'"' => {
                Some(Unclosed::Identifier)
            }
            LexMode::Quoted(q) | LexMode::Escaped(q) => Some(Unclosed::String(q)),
            LexMode::LineComment | LexMode::BlockComment | LexMode::BlockCommentStar => {
                Some(Unclosed::Comment)
            }
            LexMode::Normal | LexMode::Dash | LexMode::Slash => None,
        };
        let open = open.or(matches!(
            self.complete,
            CompleteState::Trigger | CompleteState::Semi | CompleteState::End
        )
        .then_some(Unclosed::TriggerBody));
        self.ready.push_back(SplitItem::TooLarge {
            bytes: self.stmt.total,
            open,
        });
    }
}

/// Lexical position of the splitter between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LexMode {
    /// Outside literals and comments.
    Normal,
    /// Saw `-`: a comment opener if the next byte is `-`.
    Dash,
    /// Saw `/`: a comment opener if the next byte is `*`.
    Slash,
    /// Inside `-- …` until the newline.
    LineComment,
    /// Inside `/* … */`.
    BlockComment,
    /// Inside `/* … */`, just after a `*`.
    BlockCommentStar,
    /// Inside a quoted token that the given byte closes. A doubled quote
    /// (`''`) closes and reopens, which frames identically.
    Quoted(u8),
    /// Inside a string of a DirkDB statement, just after a backslash: the
    /// next byte is escaped (DirkDB reads `'a\'b'` as `a'b`).
    Escaped(u8),
}

/// The first word of the current statement, read far enough to know
/// whether it is one of DirkDB's statement words, whose strings take
/// backslash escapes (DIRKDB-DIALECT.md §2.5). English SQL keeps SQLite's
/// rule, where a backslash is an ordinary character.
#[derive(Debug, Default)]
enum Head {
    /// No word yet.
    #[default]
    None,
    /// Reading the first word (lower-cased, at most 10 bytes kept).
    Reading(Vec<u8>),
    /// The first word is known: true for a DirkDB statement word.
    Done(bool),
}

impl Head {
    const LONGEST: usize = 10;

    fn push(&mut self, b: u8) {
        if let Head::Reading(word) = self {
            if word.len() <= Self::LONGEST {
                word.push(b.to_ascii_lowercase());
            }
        }
    }

    fn finish(&mut self) {
        if let Head::Reading(word) = self {
            let dirkdb =
                std::str::from_utf8(word).is_ok_and(super::dirkdb::starts_with_dirkdb_word);
            *self = Head::Done(dirkdb);
        }
    }

    fn is_dirkdb(&self) -> bool {
        matches!(self, Head::Done(true))
    }
}

/// Identifier bytes for keyword recognition; `#` and `@` are included so
/// that DirkDB words such as `#ao@` stay one word, as in the lexer.
fn is_word_byte(b: u8) -> bool {
    is_ident_byte(b) || b == b'#' || b == b'@'
}

/// The statement that `bytes` begin with, trimmed, and how many bytes it
/// takes with its `;`, when it is plain: no quote, bracket, `-` or `/` (so no
/// literal, quoted identifier or comment), no `CREATE` or `EXPLAIN` first
/// (so no trigger body), within `max`. `None`: the byte-by-byte rules decide.
fn plain_statement(bytes: &[u8], max: usize) -> Option<(&[u8], usize)> {
    let end = bytes.iter().position(|&b| b == b';')?;
    let text = bytes.get(..end)?;
    let special = |b: &u8| matches!(b, b'\'' | b'"' | b'`' | b'[' | b'-' | b'/');
    if text.len() > max || text.iter().any(special) {
        return None;
    }
    let start = text.iter().position(|&b| !is_space(b)).unwrap_or(end);
    let stop = text
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |i| i + 1);
    let statement = text.get(start..stop)?;
    let word_len = statement.iter().take_while(|&&b| is_word_byte(b)).count();
    let first = statement.get(..word_len)?;
    if first.eq_ignore_ascii_case(b"create") || first.eq_ignore_ascii_case(b"explain") {
        return None;
    }
    Some((statement, end + 1))
}

fn trim_end(bytes: &mut Vec<u8>) {
    let keep = bytes
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(0, |i| i + 1);
    bytes.truncate(keep);
}

/// The current statement's buffered bytes.
#[derive(Debug, Default)]
struct StmtBuf {
    bytes: Vec<u8>,
    /// Statement bytes seen so far, stored or not.
    total: usize,
    /// Comment bytes before the first significant byte (counted, not kept).
    leading: usize,
    /// A significant byte has been seen.
    started: bool,
    /// The statement outgrew the limit and was refused; its bytes are no
    /// longer stored.
    overflow: bool,
}

impl StmtBuf {
    /// Stores a byte; true when this byte takes the statement over the limit.
    fn store(&mut self, b: u8, max: usize) -> bool {
        self.total = self.total.saturating_add(1);
        if self.overflow {
            return false;
        }
        if self.bytes.len() >= max {
            return self.start_overflow();
        }
        if self.bytes.len() == self.bytes.capacity() {
            // Grow geometrically but never past the limit.
            let want = self.bytes.capacity().saturating_mul(2).max(64).min(max);
            self.bytes
                .reserve_exact(want.saturating_sub(self.bytes.len()).max(1));
        }
        self.bytes.push(b);
        false
    }

    /// Counts a comment byte before the statement; true when the comment
    /// takes it over the limit.
    fn count_leading(&mut self, max: usize) -> bool {
        self.leading = self.leading.saturating_add(1);
        if self.overflow || self.leading <= max {
            return false;
        }
        self.total = self.leading;
        self.start_overflow()
    }

    fn start_overflow(&mut self) -> bool {
        self.overflow = true;
        self.bytes = Vec::new();
        true
    }
}

/// Keeps just enough of the current word to recognise the keywords that
/// `sqlite3_complete()` cares about.
#[derive(Debug, Default)]
struct WordAcc {
    buf: [u8; WordAcc::CAP],
    len: usize,
}

impl WordAcc {
    /// Length of the longest keyword, `temporary`.
    const CAP: usize = 9;

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b.to_ascii_lowercase();
        }
        self.len = self.len.saturating_add(1);
    }

    /// Ends the current word, if any, and classifies it.
    fn take(&mut self) -> Option<Tk> {
        if self.len == 0 {
            return None;
        }
        let word = self.buf.get(..self.len).unwrap_or(&[]);
        let tk = match word {
            b"create" => Tk::Create,
            b"temp" | b"temporary" => Tk::Temp,
            b"trigger" => Tk::Trigger,
            b"end" => Tk::End,
            b"explain" => Tk::Explain,
            _ => Tk::Other,
        };
        self.len = 0;
        Some(tk)
    }
}

/// Token classes of `sqlite3_complete()` (whitespace and comments, its
/// `tkWS`, never change the state and are not fed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tk {
    Semi,
    Other,
    Explain,
    Create,
    Temp,
    Trigger,
    End,
}

/// States of `sqlite3_complete()`; a statement is complete when a `;`
/// brings the machine back to `Start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompleteState {
    /// At the start of a statement.
    Start,
    /// In an ordinary statement.
    Normal,
    /// After a leading `EXPLAIN`.
    Explain,
    /// After a leading `CREATE` (and optional `TEMP`).
    Create,
    /// Inside `CREATE TRIGGER`.
    Trigger,
    /// Inside a trigger, after a `;`.
    Semi,
    /// Inside a trigger, after `; END`.
    End,
}

impl CompleteState {
    /// The transition table of `sqlite3_complete()`, row by row.
    fn next(self, tk: Tk) -> CompleteState {
        use CompleteState as S;
        match (self, tk) {
            (S::Trigger | S::Semi, Tk::Semi) => S::Semi,
            (S::End, Tk::Semi) => S::Start,
            (S::Semi, Tk::End) => S::End,
            (S::Trigger | S::Semi | S::End, _) => S::Trigger,
            (_, Tk::Semi) => S::Start,
            (S::Start, Tk::Explain) => S::Explain,
            (S::Start | S::Explain, Tk::Create) => S::Create,
            (S::Explain, Tk::Other) => S::Explain,
            (S::Create, Tk::Temp) => S::Create,
            (S::Create, Tk::Trigger) => S::Trigger,
            _ => S::Normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(input: &[u8], max: usize) -> (Vec<SplitItem>, StatementSplitter) {
        let mut s = StatementSplitter::new(max);
        s.push(input);
        let items = std::iter::from_fn(|| s.next_item()).collect();
        (items, s)
    }

    fn statements(input: &str) -> Vec<String> {
        split_all(input.as_bytes(), 1 << 20)
            .0
            .into_iter()
            .map(|item| match item {
                SplitItem::Statement(b) => String::from_utf8(b).unwrap_or_default(),
                SplitItem::TooLarge { bytes, .. } => format!("<too large {bytes}>"),
            })
            .collect()
    }

    fn stmt(s: &str) -> SplitItem {
        SplitItem::Statement(s.as_bytes().to_vec())
    }

    #[test]
    fn complete_state_table_matches_sqlite() {
        use CompleteState as S;
        // Rows of trans[][] in sqlite3_complete (complete.c), states 1..=7,
        // tokens SEMI, OTHER, EXPLAIN, CREATE, TEMP, TRIGGER, END.
        let tks = [
            Tk::Semi,
            Tk::Other,
            Tk::Explain,
            Tk::Create,
            Tk::Temp,
            Tk::Trigger,
            Tk::End,
        ];
        let table = [
            (S::Start, [1, 2, 3, 4, 2, 2, 2]),
            (S::Normal, [1, 2, 2, 2, 2, 2, 2]),
            (S::Explain, [1, 3, 2, 4, 2, 2, 2]),
            (S::Create, [1, 2, 2, 2, 4, 5, 2]),
            (S::Trigger, [6, 5, 5, 5, 5, 5, 5]),
            (S::Semi, [6, 5, 5, 5, 5, 5, 7]),
            (S::End, [1, 5, 5, 5, 5, 5, 5]),
        ];
        let by_num = [
            S::Start,
            S::Start,
            S::Normal,
            S::Explain,
            S::Create,
            S::Trigger,
            S::Semi,
            S::End,
        ];
        for (state, row) in table {
            for (tk, want) in tks.iter().zip(row) {
                assert_eq!(state.next(*tk), by_num[want], "{state:?} {tk:?}");
            }
        }
    }

    #[test]
    fn simple_statements() {
        assert_eq!(
            statements("SELECT 1;\nSELECT 2;  SELECT 3;"),
            vec!["SELECT 1", "SELECT 2", "SELECT 3"]
        );
    }

    #[test]
    fn no_trailing_newline_after_semicolon() {
        let (items, s) = split_all(b"USE db;", 100);
        assert_eq!(items, vec![stmt("USE db")]);
        assert!(!s.has_partial());
    }

    #[test]
    fn semicolons_inside_quotes_do_not_split() {
        assert_eq!(
            statements("SELECT 'a;b'; SELECT \"c;d\"; SELECT `e;f`; SELECT [g;h];"),
            vec![
                "SELECT 'a;b'",
                "SELECT \"c;d\"",
                "SELECT `e;f`",
                "SELECT [g;h]"
            ]
        );
    }

    #[test]
    fn doubled_quotes() {
        assert_eq!(
            statements("INSERT INTO t VALUES ('it''s; ok'); SELECT \"a\"\";b\";"),
            vec!["INSERT INTO t VALUES ('it''s; ok')", "SELECT \"a\"\";b\""]
        );
    }

    #[test]
    fn semicolons_inside_comments_do_not_split() {
        assert_eq!(
            statements("SELECT 1 -- not; here\n, 2; SELECT /* ; */ 3;"),
            vec!["SELECT 1 -- not; here\n, 2", "SELECT /* ; */ 3"]
        );
    }

    #[test]
    fn minus_and_slash_operators_are_significant() {
        assert_eq!(
            statements("SELECT 4-1; SELECT 4/2;-1;/ 2;"),
            vec!["SELECT 4-1", "SELECT 4/2", "-1", "/ 2"]
        );
    }

    #[test]
    fn leading_comments_dropped_inner_kept() {
        assert_eq!(
            statements("-- intro\n/* more */ SELECT /* x */ 1 -- tail\n;"),
            vec!["SELECT /* x */ 1 -- tail"]
        );
    }

    #[test]
    fn empty_and_comment_only_statements_skipped() {
        assert_eq!(
            statements(";;  ; -- c ;\n; /* c */ ; SELECT 1;;"),
            vec!["SELECT 1"]
        );
    }

    #[test]
    fn trigger_body_with_semicolons_and_case_end() {
        let trig = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN \
                    UPDATE t SET x = CASE WHEN new.a > 0 THEN 1 ELSE 0 END; \
                    INSERT INTO log VALUES (';'); \
                    END";
        let input = format!("{trig}; SELECT 1;");
        assert_eq!(statements(&input), vec![trig, "SELECT 1"]);
    }

    #[test]
    fn temp_trigger_and_lowercase() {
        for head in [
            "create temp trigger",
            "CREATE TEMPORARY TRIGGER",
            "Create Trigger",
        ] {
            let trig = format!("{head} tr BEFORE DELETE ON t BEGIN DELETE FROM u; SELECT 2; end");
            let input = format!("{trig};SELECT 3;");
            assert_eq!(statements(&input), vec![trig.as_str(), "SELECT 3"]);
        }
    }

    #[test]
    fn end_must_follow_semicolon() {
        // `END` right after BEGIN is not the trigger's end: still unfinished.
        let (items, s) = split_all(b"CREATE TRIGGER tr AFTER INSERT ON t BEGIN END;", 1000);
        assert!(items.is_empty());
        assert!(s.has_partial());
    }

    #[test]
    fn create_table_is_not_a_trigger() {
        assert_eq!(
            statements("CREATE TEMP TABLE t(a); CREATE TABLE end(b); SELECT 1;"),
            vec!["CREATE TEMP TABLE t(a)", "CREATE TABLE end(b)", "SELECT 1"]
        );
    }

    #[test]
    fn explain_state() {
        let trig = "EXPLAIN CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END";
        assert_eq!(
            statements(&format!("EXPLAIN SELECT 1; {trig}; SELECT 2;")),
            vec!["EXPLAIN SELECT 1", trig, "SELECT 2"]
        );
    }

    #[test]
    fn leading_comment_does_not_hide_create_trigger() {
        let trig = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END";
        assert_eq!(
            statements(&format!("-- c\n/* d */{trig};")),
            vec![trig.to_string()]
        );
    }

    #[test]
    fn hash_words_are_not_keywords() {
        // `#end` is one word, so it does not end the trigger body.
        let (items, _) = split_all(b"CREATE TRIGGER t BEGIN SELECT 1; #end; END;", 1000);
        assert_eq!(
            items,
            vec![stmt("CREATE TRIGGER t BEGIN SELECT 1; #end; END")]
        );
    }

    #[test]
    fn multibyte_char_split_across_pushes() {
        let text = "SELECT 'é€😀';".as_bytes();
        for cut in 0..=text.len() {
            let mut s = StatementSplitter::new(100);
            s.push(&text[..cut]);
            s.push(&text[cut..]);
            assert_eq!(s.next_item(), Some(stmt("SELECT 'é€😀'")), "cut {cut}");
            assert_eq!(s.next_item(), None);
        }
    }

    #[test]
    fn invalid_utf8_passes_through() {
        let (items, _) = split_all(b"SELECT '\xff;\xfe' \xc3; SELECT \x80;", 100);
        assert_eq!(
            items,
            vec![
                SplitItem::Statement(b"SELECT '\xff;\xfe' \xc3".to_vec()),
                SplitItem::Statement(b"SELECT \x80".to_vec()),
            ]
        );
    }

    #[test]
    fn too_large_reported_once_then_continues() {
        let big = format!("SELECT '{}'", "x".repeat(1000));
        let input = format!("{big}; SELECT 2;");
        let (items, s) = split_all(input.as_bytes(), 64);
        assert_eq!(
            items,
            vec![
                SplitItem::TooLarge {
                    bytes: 65,
                    open: Some(Unclosed::String(b'\''))
                },
                stmt("SELECT 2")
            ]
        );
        assert!(!s.has_partial());
    }

    #[test]
    fn refused_as_soon_as_over_the_limit() {
        let mut s = StatementSplitter::new(64);
        s.push(b"SELECT 1; SELECT '");
        assert_eq!(s.next_item(), Some(stmt("SELECT 1")));
        s.push(&[b'x'; 100]);
        // No `;` and no end of input yet: already refused.
        assert_eq!(
            s.next_item(),
            Some(SplitItem::TooLarge {
                bytes: 65,
                open: Some(Unclosed::String(b'\''))
            })
        );
        assert!(!s.has_partial(), "it was answered");
        // A `;` inside the refused statement's literal is still inside it: the text after it
        // is never run on its own.
        s.push(b"; DROP TABLE t; ");
        assert_eq!(s.next_item(), None);
        // Once the literal is closed, its `;` ends it and the session goes on.
        s.push(b"'; SELECT 3;");
        assert_eq!(s.next_item(), Some(stmt("SELECT 3")));
        assert_eq!(s.next_item(), None);
    }

    #[test]
    fn a_comment_over_the_limit_is_refused() {
        let mut s = StatementSplitter::new(32);
        s.push(b"/* never closed");
        s.push(&[b' '; 10]);
        s.push(&[b'c'; 40]);
        assert_eq!(
            s.next_item(),
            Some(SplitItem::TooLarge {
                bytes: 33,
                open: Some(Unclosed::Comment)
            })
        );
        s.push(b"; still comment */ SELECT 'the statement after it, refused with it'; SELECT 4;");
        assert_eq!(s.next_item(), Some(stmt("SELECT 4")));
        // Comments before a statement that fits do not count against the statement.
        let (items, _) = split_all(b"-- short\nSELECT 12345678;", 16);
        assert_eq!(items, vec![stmt("SELECT 12345678")]);
        let (items, _) = split_all(b"SELECT 1 -- a long comment inside;\n;SELECT 2;", 16);
        assert_eq!(
            items,
            vec![
                SplitItem::TooLarge {
                    bytes: 17,
                    open: Some(Unclosed::Comment)
                },
                stmt("SELECT 2")
            ]
        );
    }

    #[test]
    fn refusal_names_a_trigger_body_and_identifiers() {
        let (items, _) = split_all(
            b"CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u; DELETE FROM v; END; SELECT 1;",
            50,
        );
        assert_eq!(
            items,
            vec![
                SplitItem::TooLarge {
                    bytes: 51,
                    open: Some(Unclosed::TriggerBody)
                },
                stmt("SELECT 1")
            ]
        );
        let (items, _) = split_all(
            b"SELECT \"aaaaaaaaaaaaaaaaaaaaaaaa;\"; alaivo \"ssssssssssssssss;\"; SELECT 2;",
            16,
        );
        assert_eq!(
            items,
            vec![
                SplitItem::TooLarge {
                    bytes: 17,
                    open: Some(Unclosed::Identifier)
                },
                SplitItem::TooLarge {
                    bytes: 17,
                    open: Some(Unclosed::String(b'"'))
                },
                stmt("SELECT 2")
            ]
        );
    }

    #[test]
    fn dirkdb_strings_take_backslash_escapes() {
        assert_eq!(
            statements(r"alaivo 'a\'b;c' antso x; SELECT 'a\'; SELECT 2;"),
            [r"alaivo 'a\'b;c' antso x", r"SELECT 'a\'", "SELECT 2"]
        );
        assert_eq!(
            statements("ALAIVO \"q\\\"r\"; manampia ao t (s) sanda ('x\\\\'); SELECT 1;"),
            [
                "ALAIVO \"q\\\"r\"",
                "manampia ao t (s) sanda ('x\\\\')",
                "SELECT 1"
            ]
        );
        // A DirkDB word later in an English statement changes nothing.
        assert_eq!(
            statements(r"SELECT 'alaivo\'; SELECT 3;"),
            [r"SELECT 'alaivo\'", "SELECT 3"]
        );
    }

    #[test]
    fn limit_is_inclusive() {
        let (items, _) = split_all(b"SELECT 1; SELECT 12;", 8);
        assert_eq!(
            items,
            vec![
                stmt("SELECT 1"),
                SplitItem::TooLarge {
                    bytes: 9,
                    open: None
                }
            ]
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let max = 1000;
        let mut s = StatementSplitter::new(max);
        s.push(b"SELECT '");
        for _ in 0..10_000 {
            s.push(&[b'a'; 100]);
            assert!(
                s.stmt.bytes.capacity() <= max,
                "{}",
                s.stmt.bytes.capacity()
            );
        }
        assert!(!s.has_partial(), "refused at once");
        assert_eq!(
            s.next_item(),
            Some(SplitItem::TooLarge {
                bytes: max + 1,
                open: Some(Unclosed::String(b'\''))
            })
        );
        assert_eq!(s.next_item(), None);
        s.push(b"';SELECT 1;");
        assert_eq!(s.next_item(), Some(stmt("SELECT 1")));
        assert_eq!(s.next_item(), None);
    }

    #[test]
    fn capacity_grows_within_limit_for_small_statements() {
        let mut s = StatementSplitter::new(100);
        s.push(&[b'a'; 90]);
        assert!(s.stmt.bytes.capacity() <= 100);
        s.push(b";");
        assert_eq!(s.next_item(), Some(SplitItem::Statement(vec![b'a'; 90])));
    }

    #[test]
    fn has_partial_cases() {
        let cases: [(&[u8], bool); 12] = [
            (b"", false),
            (b"   \n", false),
            (b"-- comment", false),
            (b"/* open comment", false),
            (b"SELECT 1; ", false),
            (b"SELECT 1; -- done\n", false),
            (b"SELECT", true),
            (b"SELECT 1; SELECT 2", true),
            (b"'open string", true),
            (b"-", true),
            (b"/", true),
            (b"CREATE TRIGGER t BEGIN SELECT 1;", true),
        ];
        for (input, want) in cases {
            let (_, s) = split_all(input, 100);
            assert_eq!(
                s.has_partial(),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn split_script_with_remainder() {
        let script = split_script(
            "-- setup\nCREATE TABLE t(a);\nINSERT INTO t VALUES (1);\nSELECT *\n  FROM t  \n",
        );
        assert_eq!(
            script.statements,
            vec!["CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"]
        );
        assert_eq!(script.remainder, "SELECT *\n  FROM t");
    }

    #[test]
    fn split_script_remainder_empty_for_comments() {
        let script = split_script("SELECT 1; -- bye\n/* done */ ");
        assert_eq!(script.statements, vec!["SELECT 1"]);
        assert_eq!(script.remainder, "");
        assert_eq!(split_script("  ").remainder, "");
    }

    #[test]
    fn split_script_remainder_keeps_pending_operator() {
        assert_eq!(split_script("SELECT 1 -").remainder, "SELECT 1 -");
        assert_eq!(split_script("SELECT 'a;").remainder, "SELECT 'a;");
    }

    const CORPUS: &[&str] = &[
        "SELECT 1; SELECT 'a;b'; SELECT \"x\"\";y\";",
        "-- head\nCREATE TABLE t(a TEXT); /* c; */ INSERT INTO t VALUES ('it''s');\n",
        "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = CASE WHEN 1 THEN 'x' END; SELECT [a;b]; END; SELECT 4-1/2;",
        "EXPLAIN SELECT `q;`; ;; -- only comment ;\n; SELECT 'é;€' -- tail",
        "alaivo * ao@ t #rehefa a != 'x;y'; manampia ao t sanda (1);SELECT 2",
        "SELECT '\u{1F600}'; /* unterminated ; comment",
    ];

    fn push_in_pieces(input: &[u8], cuts: &[usize], max: usize) -> (Vec<SplitItem>, bool) {
        let mut s = StatementSplitter::new(max);
        let mut items = Vec::new();
        let mut prev = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([input.len()]) {
            s.push(&input[prev..cut]);
            items.extend(std::iter::from_fn(|| s.next_item()));
            prev = cut;
        }
        (items, s.has_partial())
    }

    #[test]
    fn byte_at_a_time_matches_one_push() {
        for text in CORPUS {
            for max in [16, 1 << 20] {
                let input = text.as_bytes();
                let (whole, one) = split_all(input, max);
                let mut s = StatementSplitter::new(max);
                let mut items = Vec::new();
                for b in input {
                    s.push(std::slice::from_ref(b));
                    items.extend(std::iter::from_fn(|| s.next_item()));
                }
                assert_eq!(items, whole, "{text}");
                assert_eq!(s.has_partial(), one.has_partial(), "{text}");
            }
        }
    }

    /// Byte by byte, the plain-statement shortcut of `push` never applies
    /// (a one-byte chunk holds no statement): the rules it must agree with.
    fn byte_by_byte(input: &[u8], max: usize) -> (Vec<SplitItem>, bool) {
        let mut s = StatementSplitter::new(max);
        for b in input {
            s.push(std::slice::from_ref(b));
        }
        let items = std::iter::from_fn(|| s.next_item()).collect();
        (items, s.has_partial())
    }

    #[test]
    fn plain_statements_taken_whole_split_as_byte_by_byte() {
        let mut inputs: Vec<String> = CORPUS.iter().map(|c| c.to_string()).collect();
        inputs.push(CORPUS.concat());
        for plain in [
            "SELECT id, k, v, pad FROM bench WHERE id = 17;",
            "  select 1 ;\n\t;;SELECT 2;SELECT 3",
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE b SET n = n + 1; END; SELECT 1;",
            "explain create trigger t after insert on a begin select 1; end; select 2;",
            "Create table t(a); alaivo * #ao@ t #rehefa a = 1; SELECT 1",
            "UPDATE t SET a = 1 WHERE b = 2; SELECT a FROM t WHERE c = 'x;y'; SELECT 4;",
            "SELECT 10 / 2; SELECT 3 - 1; SELECT [a] FROM t;",
            "createx 1; explained 2; CREATE",
        ] {
            inputs.push(plain.to_string());
        }
        for input in &inputs {
            for max in [8, 20, 1 << 20] {
                let (whole, s) = split_all(input.as_bytes(), max);
                let (slow, partial) = byte_by_byte(input.as_bytes(), max);
                assert_eq!(whole, slow, "{input:?} with limit {max}");
                assert_eq!(s.has_partial(), partial, "{input:?} with limit {max}");
                assert_eq!(s.partial(), {
                    let mut t = StatementSplitter::new(max);
                    for b in input.as_bytes() {
                        t.push(std::slice::from_ref(b));
                    }
                    t.partial()
                });
            }
        }
    }

    proptest! {
        #[test]
        fn plain_text_taken_whole_splits_as_byte_by_byte(
            words in proptest::collection::vec(
                prop_oneof![
                    Just("SELECT"), Just("create"), Just("EXPLAIN"), Just("trigger"),
                    Just("begin"), Just("end"), Just(";"), Just(" "), Just("\n"), Just("x"),
                    Just("1"), Just("'"), Just("--"), Just("/*"), Just("*/"), Just("temp"),
                ],
                0..40,
            ),
            small in any::<bool>(),
        ) {
            let input = words.concat();
            let max = if small { 12 } else { 1 << 20 };
            let (whole, s) = split_all(input.as_bytes(), max);
            let (slow, partial) = byte_by_byte(input.as_bytes(), max);
            prop_assert_eq!(whole, slow);
            prop_assert_eq!(s.has_partial(), partial);
        }

        #[test]
        fn random_split_points_match_one_push(
            which in 0..CORPUS.len(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            small in any::<bool>(),
        ) {
            let max = if small { 20 } else { 1 << 20 };
            let input = CORPUS.concat();
            let input = input.as_bytes();
            let text = CORPUS[which].as_bytes();
            for data in [input, text] {
                let (whole, s) = split_all(data, max);
                let (pieces, partial) = push_in_pieces(data, &cuts, max);
                prop_assert_eq!(pieces, whole);
                prop_assert_eq!(partial, s.has_partial());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let max = 32;
            let (whole, _) = split_all(&data, max);
            let (pieces, _) = push_in_pieces(&data, &cuts, max);
            for item in &whole {
                if let SplitItem::Statement(b) = item {
                    prop_assert!(!b.is_empty() && b.len() <= max);
                }
            }
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn split_script_statements_rejoin(
            parts in proptest::collection::vec("[a-z0-9 ',;\"-]{0,12}", 0..6),
        ) {
            let text = parts.concat();
            let script = split_script(&text);
            for s in &script.statements {
                prop_assert!(!s.trim().is_empty());
                prop_assert_eq!(s.trim(), s.as_str());
            }
        }
    }
}
