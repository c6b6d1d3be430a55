//! A byte-accurate, total tokenizer for SQLite-flavoured SQL.
//!
//! It exists so that everything in DirkDB that has to look *at* SQL text
//! without parsing it (the Malagasy keyword translation, statement framing
//! checks, tests) agrees on where string literals, quoted identifiers and
//! comments begin and end. Tokens carry byte spans into the input, and the
//! spans of all tokens, concatenated, reproduce the input exactly, so a
//! consumer can rewrite some tokens and copy every other byte verbatim.
//!
//! The lexer never fails and never panics: anything it does not recognise
//! becomes a one-byte [`TokenKind::Other`] token, and unterminated strings,
//! quoted identifiers and block comments run to the end of the input with
//! `terminated: false`. Every delimiter it stops at is ASCII and every
//! non-ASCII byte belongs to a word, a literal or a comment, so spans always
//! fall on UTF-8 character boundaries.

use std::ops::Range;

/// What a [`Token`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A run of SQL whitespace (space, `\t`, `\n`, `\x0B`, `\x0C`, `\r`).
    Whitespace,
    /// `-- …` up to, not including, the end of the line.
    LineComment,
    /// `/* … */`; an unterminated one runs to the end of the input.
    BlockComment {
        /// Whether the closing `*/` was found.
        terminated: bool,
    },
    /// `'…'` with `''` as the escaped quote, or a blob literal `X'…'`.
    StringLiteral {
        /// Whether the closing quote was found.
        terminated: bool,
    },
    /// `"…"` (with `""`), `` `…` `` (with ``` `` ```) or `[…]`.
    QuotedIdent {
        /// Whether the closing quote or bracket was found.
        terminated: bool,
    },
    /// A numeric literal: `12`, `1.5`, `.5`, `1e-3`, `0x1F` (trailing
    /// identifier bytes such as `1_000` or `12abc` stay in the token).
    Number,
    /// An identifier or keyword: letters, digits, `_`, `$` and non-ASCII
    /// characters, optionally with one leading `#` and one trailing `@`
    /// (DirkDB's Malagasy keywords use both: `#ao@`).
    Word,
    /// A bound parameter: `?`, `?NNN`, `:name`, `@name`, `$name`.
    Parameter,
    /// `;`.
    Semicolon,
    /// An operator: `!=`, `<>`, `<=`, `>=`, `==`, `||`, `<<`, `>>`, `->`,
    /// `->>` or one of `+ - * / % < > = & | ~ !`.
    Operator,
    /// Punctuation: `(`, `)`, `,`, `.`.
    Punct,
    /// Any other single byte.
    Other,
}

impl TokenKind {
    /// True for whitespace and comments: tokens that never change what a
    /// statement means.
    pub fn is_trivia(self) -> bool {
        matches!(
            self,
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. }
        )
    }
}

/// One token: its kind and the byte range it covers in the input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token {
    /// What the token is.
    pub kind: TokenKind,
    /// Byte range of the token in the tokenized text.
    pub span: Range<usize>,
}

impl Token {
    /// The token's text in `src` (the string it was produced from); empty if
    /// `src` is some other string whose length or boundaries do not fit.
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        src.get(self.span.clone()).unwrap_or("")
    }
}

/// Splits `sql` into tokens; concatenating their spans reproduces `sql`.
pub fn tokenize(sql: &str) -> Vec<Token> {
    Lexer::new(sql).collect()
}

/// A lazy, allocation-free token iterator over a string (what [`tokenize`]
/// collects). Cloning it is cheap, which makes lookahead easy.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer positioned at the start of `sql`.
    pub fn new(sql: &'a str) -> Self {
        Lexer {
            bytes: sql.as_bytes(),
            pos: 0,
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let first = *self.bytes.get(start)?;
        let (kind, end) = lex_token(self.bytes, start, first);
        // Every token is at least one byte long, so the lexer always advances.
        let end = end.clamp(start + 1, self.bytes.len());
        self.pos = end;
        Some(Token {
            kind,
            span: start..end,
        })
    }
}

/// SQL whitespace as SQLite defines it.
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t'..=b'\r')
}

/// Bytes that continue an identifier: ASCII letters and digits, `_`, `$`
/// and every byte of a non-ASCII character.
pub(crate) fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Bytes that may start an identifier.
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn at(bytes: &[u8], i: usize) -> u8 {
    bytes.get(i).copied().unwrap_or(0)
}

/// First index at or after `i` whose byte does not satisfy `pred`.
fn skip_while(bytes: &[u8], mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
    while i < bytes.len() && pred(bytes[i]) {
        i += 1;
    }
    i
}

/// Classifies the token starting at `start` (whose byte is `first`) and
/// returns its kind and end offset.
fn lex_token(bytes: &[u8], start: usize, first: u8) -> (TokenKind, usize) {
    let next = at(bytes, start + 1);
    match first {
        b if is_space(b) => (TokenKind::Whitespace, skip_while(bytes, start, is_space)),
        b'-' if next == b'-' => line_comment(bytes, start),
        b'/' if next == b'*' => block_comment(bytes, start),
        b'\'' => quoted(bytes, start, b'\'', true, string_kind),
        b'x' | b'X' if next == b'\'' => quoted(bytes, start + 1, b'\'', true, string_kind),
        b'"' | b'`' => quoted(bytes, start, first, true, ident_kind),
        b'[' => quoted(bytes, start, b']', false, ident_kind),
        b';' => (TokenKind::Semicolon, start + 1),
        b'0'..=b'9' => (TokenKind::Number, number(bytes, start)),
        b'.' if next.is_ascii_digit() => (TokenKind::Number, number(bytes, start)),
        b'?' => (
            TokenKind::Parameter,
            skip_while(bytes, start + 1, |b| b.is_ascii_digit()),
        ),
        b':' | b'@' | b'$' if is_ident_byte(next) => parameter(bytes, start),
        b'#' if is_ident_byte(next) => (TokenKind::Word, word(bytes, start + 1)),
        b if is_ident_start(b) => (TokenKind::Word, word(bytes, start)),
        b'(' | b')' | b',' | b'.' => (TokenKind::Punct, start + 1),
        _ => operator_or_other(bytes, start, first, next),
    }
}

fn string_kind(terminated: bool) -> TokenKind {
    TokenKind::StringLiteral { terminated }
}

fn ident_kind(terminated: bool) -> TokenKind {
    TokenKind::QuotedIdent { terminated }
}

fn line_comment(bytes: &[u8], start: usize) -> (TokenKind, usize) {
    (
        TokenKind::LineComment,
        skip_while(bytes, start, |b| b != b'\n'),
    )
}

fn block_comment(bytes: &[u8], start: usize) -> (TokenKind, usize) {
    let body = start + 2;
    match bytes
        .get(body..)
        .and_then(|rest| rest.windows(2).position(|w| w == b"*/"))
    {
        Some(off) => (TokenKind::BlockComment { terminated: true }, body + off + 2),
        None => (TokenKind::BlockComment { terminated: false }, bytes.len()),
    }
}

/// A quoted token whose opening delimiter is at `open`, closed by `close`;
/// with `doubling`, two closing delimiters in a row stand for one literal one.
fn quoted(
    bytes: &[u8],
    open: usize,
    close: u8,
    doubling: bool,
    kind: fn(bool) -> TokenKind,
) -> (TokenKind, usize) {
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == close {
            if doubling && at(bytes, i + 1) == close {
                i += 2;
                continue;
            }
            return (kind(true), i + 1);
        }
        i += 1;
    }
    (kind(false), bytes.len())
}

/// An identifier run starting at `start`, plus one trailing `@` if present.
fn word(bytes: &[u8], start: usize) -> usize {
    let end = skip_while(bytes, start, is_ident_byte);
    if at(bytes, end) == b'@' {
        end + 1
    } else {
        end
    }
}

fn parameter(bytes: &[u8], start: usize) -> (TokenKind, usize) {
    (
        TokenKind::Parameter,
        skip_while(bytes, start + 1, is_ident_byte),
    )
}

fn number(bytes: &[u8], start: usize) -> usize {
    let hex = at(bytes, start) == b'0'
        && matches!(at(bytes, start + 1), b'x' | b'X')
        && at(bytes, start + 2).is_ascii_hexdigit();
    let mut i = if hex {
        skip_while(bytes, start + 2, |b| b.is_ascii_hexdigit())
    } else {
        decimal(bytes, start)
    };
    // SQLite rejects `12abc`; keep it one token so nothing splits a number.
    i = skip_while(bytes, i, is_ident_byte);
    i
}

/// Digits, an optional fraction and an optional exponent.
fn decimal(bytes: &[u8], start: usize) -> usize {
    let mut i = skip_while(bytes, start, |b| b.is_ascii_digit());
    if at(bytes, i) == b'.' {
        i = skip_while(bytes, i + 1, |b| b.is_ascii_digit());
    }
    if matches!(at(bytes, i), b'e' | b'E') {
        let sign = usize::from(matches!(at(bytes, i + 1), b'+' | b'-'));
        if at(bytes, i + 1 + sign).is_ascii_digit() {
            i = skip_while(bytes, i + 1 + sign, |b| b.is_ascii_digit());
        }
    }
    i
}

fn operator_or_other(bytes: &[u8], start: usize, first: u8, next: u8) -> (TokenKind, usize) {
    let two = matches!(
        (first, next),
        (b'!', b'=')
            | (b'<', b'>')
            | (b'<', b'=')
            | (b'>', b'=')
            | (b'=', b'=')
            | (b'|', b'|')
            | (b'<', b'<')
            | (b'>', b'>')
            | (b'-', b'>')
    );
    if two {
        let three = first == b'-' && at(bytes, start + 2) == b'>';
        return (TokenKind::Operator, start + if three { 3 } else { 2 });
    }
    match first {
        b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b'&' | b'|' | b'~' | b'!' => {
            (TokenKind::Operator, start + 1)
        }
        _ => (TokenKind::Other, start + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        tokenize(sql)
            .iter()
            .map(|t| (t.kind, t.text(sql)))
            .collect()
    }

    fn single(sql: &str) -> TokenKind {
        let toks = tokenize(sql);
        assert_eq!(toks.len(), 1, "{sql:?} -> {toks:?}");
        toks[0].kind
    }

    fn reconstruct(sql: &str) -> String {
        tokenize(sql).iter().map(|t| t.text(sql)).collect()
    }

    #[test]
    fn spans_reconstruct_input() {
        let sql = "SELECT a, 'x''y' /* c */ FROM \"t\" -- end\nWHERE b >= 1.5e3;";
        assert_eq!(reconstruct(sql), sql);
        let toks = tokenize(sql);
        for pair in toks.windows(2) {
            assert_eq!(pair[0].span.end, pair[1].span.start);
        }
    }

    #[test]
    fn empty_input_has_no_tokens() {
        assert!(tokenize("").is_empty());
    }

    #[test]
    fn whitespace_runs() {
        assert_eq!(single(" \t\r\n\x0b\x0c"), TokenKind::Whitespace);
    }

    #[test]
    fn line_comment_stops_before_newline() {
        assert_eq!(
            kinds("-- hi ;\nx"),
            vec![
                (TokenKind::LineComment, "-- hi ;"),
                (TokenKind::Whitespace, "\n"),
                (TokenKind::Word, "x"),
            ]
        );
        assert_eq!(single("-- no newline"), TokenKind::LineComment);
    }

    #[test]
    fn block_comments() {
        assert_eq!(
            single("/* a ; */"),
            TokenKind::BlockComment { terminated: true }
        );
        assert_eq!(single("/**/"), TokenKind::BlockComment { terminated: true });
        assert_eq!(
            single("/*/ never"),
            TokenKind::BlockComment { terminated: false }
        );
    }

    #[test]
    fn string_literals() {
        let lit = TokenKind::StringLiteral { terminated: true };
        assert_eq!(single("'it''s; fine'"), lit);
        assert_eq!(single("''"), lit);
        assert_eq!(single("X'00ff'"), lit);
        assert_eq!(single("x'AB'"), lit);
        assert_eq!(
            single("'open ''"),
            TokenKind::StringLiteral { terminated: false }
        );
    }

    #[test]
    fn quoted_identifiers() {
        let id = TokenKind::QuotedIdent { terminated: true };
        assert_eq!(single("\"a\"\"b;\""), id);
        assert_eq!(single("`a``b`"), id);
        assert_eq!(single("[a;b]"), id);
        let open = TokenKind::QuotedIdent { terminated: false };
        assert_eq!(single("\"open"), open);
        assert_eq!(single("`open"), open);
        assert_eq!(single("[open"), open);
    }

    #[test]
    fn numbers() {
        for n in [
            "0", "42", "1.5", ".5", "1.", "1e10", "1E-3", "2.5e+7", "0x1F", "1_000",
        ] {
            assert_eq!(single(n), TokenKind::Number, "{n}");
        }
        assert_eq!(
            kinds("1e+"),
            vec![(TokenKind::Number, "1e"), (TokenKind::Operator, "+")]
        );
    }

    #[test]
    fn words_with_hash_and_at() {
        for w in [
            "select", "_x", "a$b", "été", "#ao@", "#rehefa", "ao@", "Tabilao1",
        ] {
            assert_eq!(single(w), TokenKind::Word, "{w}");
        }
        assert_eq!(
            kinds("ao@t"),
            vec![(TokenKind::Word, "ao@"), (TokenKind::Word, "t")]
        );
        assert_eq!(
            kinds("# x"),
            vec![
                (TokenKind::Other, "#"),
                (TokenKind::Whitespace, " "),
                (TokenKind::Word, "x"),
            ]
        );
    }

    #[test]
    fn parameters() {
        for p in ["?", "?12", ":name", "@p1", "$v", ":avia"] {
            assert_eq!(single(p), TokenKind::Parameter, "{p}");
        }
        assert_eq!(single(":"), TokenKind::Other);
        assert_eq!(single("@"), TokenKind::Other);
        assert_eq!(single("$"), TokenKind::Other);
    }

    #[test]
    fn operators_and_punctuation() {
        for op in [
            "!=", "<>", "<=", ">=", "==", "||", "<<", ">>", "->", "->>", "+", "-", "*", "/", "%",
            "<", ">", "=", "&", "|", "~", "!",
        ] {
            assert_eq!(single(op), TokenKind::Operator, "{op}");
        }
        for p in ["(", ")", ",", "."] {
            assert_eq!(single(p), TokenKind::Punct, "{p}");
        }
        assert_eq!(single(";"), TokenKind::Semicolon);
        assert_eq!(single("^"), TokenKind::Other);
        assert_eq!(single("\u{0}"), TokenKind::Other);
    }

    #[test]
    fn bang_before_equals_is_one_operator() {
        assert_eq!(
            kinds("a!=b"),
            vec![
                (TokenKind::Word, "a"),
                (TokenKind::Operator, "!="),
                (TokenKind::Word, "b"),
            ]
        );
        assert_eq!(
            kinds("!x"),
            vec![(TokenKind::Operator, "!"), (TokenKind::Word, "x")]
        );
    }

    #[test]
    fn trivia() {
        assert!(TokenKind::Whitespace.is_trivia());
        assert!(TokenKind::LineComment.is_trivia());
        assert!(TokenKind::BlockComment { terminated: false }.is_trivia());
        assert!(!TokenKind::Word.is_trivia());
    }

    #[test]
    fn text_of_foreign_span_is_empty() {
        let t = Token {
            kind: TokenKind::Word,
            span: 3..10,
        };
        assert_eq!(t.text("ab"), "");
    }

    proptest! {
        #[test]
        fn never_panics_and_reconstructs(s in any::<String>()) {
            prop_assert_eq!(reconstruct(&s), s);
        }

        #[test]
        fn reconstructs_sql_like_text(s in "[a-zA-Z0-9_$#@:?'\"`\\[\\]();,.!=<>|*/ \n-]{0,64}") {
            let toks = tokenize(&s);
            prop_assert!(toks.iter().all(|t| !t.span.is_empty()));
            prop_assert_eq!(reconstruct(&s), s);
        }
    }
}
