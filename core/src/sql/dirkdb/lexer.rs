//! DirkDB's lexical rules (DIRKDB-DIALECT.md §2): words, numbers without sign or exponent,
//! strings in `'…'` or `"…"` with the delimiter doubled and backslash escapes decoded, and the
//! punctuation DirkDB's grammar uses. `#` and `@` are tokens of their own, so the whitespace
//! DirkDB allows around them (`#ao @`, `# rehefa`) needs no special case.

use super::error::DirkError;

/// One DirkDB token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier or keyword, as written.
    Word(String),
    /// Digits, optionally `.` and digits.
    Number(String),
    /// A string literal, decoded.
    Str(String),
    /// Punctuation or an operator.
    Sym(&'static str),
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

const SYMBOLS: &[&str] = &[
    "!=", "<=", ">=", "(", ")", ",", ".", "*", "+", "-", "/", "=", "<", ">", "!", ":", "@", "#",
    "^",
];

/// Splits `src` into tokens; an unterminated string or an unknown character is DirkDB's
/// `Token available not found near` error.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, DirkError> {
    let mut out = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphabetic() || c == '_' {
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    end = i + c.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Word(src[start..end].to_string()),
                start,
                end,
            });
        } else if c.is_ascii_digit() {
            let end = number_end(src, start);
            out.push(Token {
                tok: Tok::Number(src[start..end].to_string()),
                start,
                end,
            });
            while chars.peek().is_some_and(|&(i, _)| i < end) {
                chars.next();
            }
        } else if c == '\'' || c == '"' {
            let (value, end) = string_literal(src, start, c)?;
            out.push(Token {
                tok: Tok::Str(value),
                start,
                end,
            });
            while chars.peek().is_some_and(|&(i, _)| i < end) {
                chars.next();
            }
        } else {
            let rest = &src[start..];
            let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) else {
                return Err(DirkError::TokenNotFound(rest.to_string()));
            };
            out.push(Token {
                tok: Tok::Sym(sym),
                start,
                end: start + sym.len(),
            });
            for _ in 0..sym.len() {
                chars.next();
            }
        }
    }
    Ok(out)
}

/// Digits, then `.` and digits only when a digit follows the dot (`5.` is `5` then `.`).
fn number_end(src: &str, start: usize) -> usize {
    let bytes = src.as_bytes();
    let mut i = start;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    i
}

/// Decodes the literal opening at `start` with `quote`; returns its value and where it ends.
fn string_literal(src: &str, start: usize, quote: char) -> Result<(String, usize), DirkError> {
    let mut value = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        let at = start + 1 + i;
        if c == '\\' {
            match chars.next() {
                Some((_, e)) => value.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                }),
                None => return Err(DirkError::TokenNotFound(src[start..].to_string())),
            }
        } else if c == quote {
            if src[at + 1..].starts_with(quote) {
                value.push(quote);
                chars.next();
            } else {
                return Ok((value, at + 1));
            }
        } else {
            value.push(c);
        }
    }
    Err(DirkError::TokenNotFound(src[start..].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        tokenize(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn strings_decode_escapes_and_doubled_quotes() {
        assert_eq!(toks(r"'a\'b'"), [Tok::Str("a'b".into())]);
        assert_eq!(toks(r"'a\tb\q'"), [Tok::Str("a\tbq".into())]);
        assert_eq!(toks("'a''b'"), [Tok::Str("a'b".into())]);
        assert_eq!(toks("\"s\""), [Tok::Str("s".into())]);
        assert_eq!(toks(r#""a\"b;c""#), [Tok::Str("a\"b;c".into())]);
        assert!(tokenize("'abc").is_err());
        assert!(tokenize(r"'abc\").is_err());
    }

    #[test]
    fn numbers_have_no_sign_exponent_or_trailing_dot() {
        assert_eq!(toks("2.5"), [Tok::Number("2.5".into())]);
        assert_eq!(
            toks("1e3"),
            [Tok::Number("1".into()), Tok::Word("e3".into())]
        );
        assert_eq!(toks("5."), [Tok::Number("5".into()), Tok::Sym(".")]);
        assert_eq!(toks("-3"), [Tok::Sym("-"), Tok::Number("3".into())]);
    }

    #[test]
    fn hash_and_at_are_tokens() {
        assert_eq!(
            toks("# ao @t"),
            [
                Tok::Sym("#"),
                Tok::Word("ao".into()),
                Tok::Sym("@"),
                Tok::Word("t".into())
            ]
        );
        assert_eq!(
            toks("a!=b"),
            [Tok::Word("a".into()), Tok::Sym("!="), Tok::Word("b".into())]
        );
        assert_eq!(toks("été"), [Tok::Word("été".into())]);
    }
}
