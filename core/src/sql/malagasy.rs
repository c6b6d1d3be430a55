//! DirkDB's Malagasy SQL keywords, translated to the SQL SQLite understands.
//!
//! DirkDB lets users write `ALAIVO * ao utilisateurs rehefa age > 30`, mixing
//! Malagasy keywords (DESIGN.md §5) with English in one statement. This
//! module rewrites such a statement into plain SQL before it is classified
//! and executed. Translation works on the tokens of [`super::lexer`], so it
//! never touches string literals, quoted identifiers or comments: only
//! [`TokenKind::Word`] tokens (and a bare `!`) are rewritten, into UPPERCASE
//! keywords, and every other byte is copied unchanged.
//!
//! It is a single left-to-right pass. Multi-word phrases (`dia tsy`,
//! `ravao ny tabilao`, `tonona:avia`) use a small lookahead over significant
//! tokens, and `ao` becomes `INTO` or `FROM` depending on the most recent
//! clause keyword seen in the statement.

use std::borrow::Cow;

use super::lexer::{is_ident_byte, Lexer, Token, TokenKind};

/// Translates DirkDB's Malagasy keywords in `sql` into SQL.
///
/// Text without any Malagasy keyword is returned unchanged.
pub fn translate(sql: &str) -> String {
    translate_with_tokens(sql).0.into_owned()
}

/// Like [`translate`], also returning the tokens of the text it returns. Text without a
/// Malagasy keyword (the commonest case, on every statement a proxy routes) is lexed once and
/// borrowed, not copied.
pub fn translate_with_tokens(sql: &str) -> (Cow<'_, str>, Vec<Token>) {
    let tokens = collect_tokens(sql);
    if !tokens.iter().any(|tok| rule_for(sql, tok).is_some()) {
        return (Cow::Borrowed(sql), tokens);
    }
    let out = Translator::new(sql, tokens).run();
    let tokens = collect_tokens(&out);
    (Cow::Owned(out), tokens)
}

/// The tokens of `sql`, in a vector sized once: the lexer cannot tell its length ahead, and
/// growing from empty reallocated it four or five times per statement (issue #19). A token
/// and the blank after it take about five bytes in ordinary SQL; a longer run grows as usual.
fn collect_tokens(sql: &str) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(sql.len() / 2 + 8);
    tokens.extend(Lexer::new(sql));
    tokens
}

/// How one Malagasy token translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Always the same SQL text.
    Keyword(&'static str),
    /// `ao`: `INTO` after `INSERT`/`REPLACE`, otherwise `FROM`.
    Ao,
    /// `tonona`: `JOIN`, or a qualified join with `:avia`, `:avanana`,
    /// `:natoraly`.
    Tonona,
    /// `dia`: `IS`, or `IS NOT` before `tsy`.
    Dia,
    /// A statement head that may be followed by `[ny] <object>`.
    Head(Head),
}

/// `manamboara`, `ravao` and `asehoy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Create,
    Drop,
    Show,
}

impl Head {
    fn keyword(self) -> &'static str {
        match self {
            Head::Create => "CREATE",
            Head::Drop => "DROP",
            Head::Show => "SHOW",
        }
    }

    /// The whole phrase for `head [ny] object`, if `object` fits this head.
    fn phrase(self, object: &str) -> Option<&'static str> {
        let table: &[(&str, &str)] = match self {
            Head::Create => &[
                ("tahiry", "CREATE DATABASE"),
                ("tabilao", "CREATE TABLE"),
                ("jery", "CREATE VIEW"),
            ],
            Head::Drop => &[
                ("tahiry", "DROP DATABASE"),
                ("tabilao", "DROP TABLE"),
                ("jery", "DROP VIEW"),
            ],
            Head::Show => &[
                ("tahiry", "SHOW DATABASES"),
                ("tabilao", "SHOW TABLES"),
                ("tompo", "SHOW OWNERS"),
            ],
        };
        lookup(table, object)
    }
}

/// Malagasy words, matched case-insensitively against whole Word tokens.
const WORDS: &[(&str, Rule)] = &[
    ("ampiasao", Rule::Keyword("USE")),
    ("alaivo", Rule::Keyword("SELECT")),
    ("ao", Rule::Ao),
    ("ao@", Rule::Ao),
    ("#ao", Rule::Ao),
    ("#ao@", Rule::Ao),
    ("rehefa", Rule::Keyword("WHERE")),
    ("#rehefa", Rule::Keyword("WHERE")),
    ("vondrona", Rule::Keyword("GROUP BY")),
    ("fetra", Rule::Keyword("LIMIT")),
    ("antso", Rule::Keyword("AS")),
    ("tonona", Rule::Tonona),
    ("#ka", Rule::Keyword("ON")),
    ("#ankambana", Rule::Keyword("UNION")),
    ("#analana", Rule::Keyword("EXCEPT")),
    ("#atifitra", Rule::Keyword("INTERSECT")),
    ("ary", Rule::Keyword("AND")),
    ("na", Rule::Keyword("OR")),
    ("dia", Rule::Dia),
    ("manampia", Rule::Keyword("INSERT")),
    ("sanda", Rule::Keyword("VALUES")),
    ("#sanda", Rule::Keyword("VALUES")),
    ("havaozy", Rule::Keyword("UPDATE")),
    ("ova", Rule::Keyword("SET")),
    ("fafao", Rule::Keyword("DELETE")),
    ("manamboara", Rule::Head(Head::Create)),
    ("ravao", Rule::Head(Head::Drop)),
    ("asehoy", Rule::Head(Head::Show)),
    ("isa", Rule::Keyword("NUMERIC")),
    ("lahatsoratra", Rule::Keyword("TEXT")),
    ("daty", Rule::Keyword("DATE")),
];

/// Join qualifiers after `tonona`, without their `:`.
const JOIN_QUALIFIERS: &[(&str, &str)] = &[
    ("avia", "LEFT JOIN"),
    ("avanana", "RIGHT JOIN"),
    ("natoraly", "NATURAL JOIN"),
];

/// Keywords that start a clause; the latest one decides `ao`'s meaning.
const CLAUSE_KEYWORDS: &[&str] = &[
    "SELECT",
    "INSERT",
    "REPLACE",
    "UPDATE",
    "DELETE",
    "FROM",
    "INTO",
    "WHERE",
    "VALUES",
    "SET",
    "GROUP",
    "ORDER",
    "HAVING",
    "LIMIT",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "JOIN",
    "ON",
    "WITH",
    "RETURNING",
    "USE",
    "CREATE",
    "DROP",
    "SHOW",
];

fn lookup<T: Copy>(table: &[(&str, T)], word: &str) -> Option<T> {
    table
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(word))
        .map(|&(_, value)| value)
}

/// The bytes (either case) that begin an entry of [`WORDS`]: most English words are ruled out
/// by their first byte without a scan of the table.
const WORD_STARTS: [bool; 256] = word_starts(WORDS);

const fn word_starts(table: &[(&str, Rule)]) -> [bool; 256] {
    let mut starts = [false; 256];
    let mut i = 0;
    while i < table.len() {
        let first = table[i].0.as_bytes()[0];
        starts[first.to_ascii_lowercase() as usize] = true;
        starts[first.to_ascii_uppercase() as usize] = true;
        i += 1;
    }
    starts
}

/// The rule for a token, if it is a Malagasy keyword.
fn rule_for(src: &str, tok: &Token) -> Option<Rule> {
    match tok.kind {
        TokenKind::Word => {
            let text = tok.text(src);
            let first = text.as_bytes().first().copied().unwrap_or(0);
            if !WORD_STARTS[usize::from(first)] {
                return None;
            }
            lookup(WORDS, text)
        }
        TokenKind::Operator if tok.text(src) == "!" => Some(Rule::Keyword("NOT")),
        _ => None,
    }
}

/// State of one translation pass.
struct Translator<'a> {
    src: &'a str,
    toks: Vec<Token>,
    out: String,
    /// The latest clause keyword of the statement was INSERT or REPLACE.
    inserting: bool,
}

impl<'a> Translator<'a> {
    fn new(src: &'a str, toks: Vec<Token>) -> Self {
        Translator {
            src,
            toks,
            out: String::with_capacity(src.len() + 16),
            inserting: false,
        }
    }

    fn run(mut self) -> String {
        let mut i = 0;
        while i < self.toks.len() {
            i = self.step(i);
        }
        self.out
    }

    /// Handles the token at `i`; returns the index of the next one to handle.
    fn step(&mut self, i: usize) -> usize {
        if let Some((sql, last)) = self.rewrite(i) {
            self.emit_keyword(sql, last);
            return last + 1;
        }
        let text = self.text(i);
        self.out.push_str(text);
        match self.kind(i) {
            Some(TokenKind::Semicolon) => self.inserting = false,
            Some(TokenKind::Word) => self.note_word(i, text),
            _ => {}
        }
        i + 1
    }

    /// The SQL replacing the token at `i` and the index of the last token
    /// the replacement covers, if the token is a Malagasy keyword.
    fn rewrite(&self, i: usize) -> Option<(&'static str, usize)> {
        let tok = self.toks.get(i)?;
        let rule = rule_for(self.src, tok)?;
        if tok.kind == TokenKind::Word && self.is_qualified_name(i) {
            return None;
        }
        Some(match rule {
            Rule::Keyword(sql) => (sql, i),
            Rule::Ao => (if self.inserting { "INTO" } else { "FROM" }, i),
            Rule::Tonona => self.join_qualifier(i).unwrap_or(("JOIN", i)),
            Rule::Dia => self.dia(i),
            Rule::Head(head) => self.head_phrase(head, i),
        })
    }

    /// `tonona:avia`, `tonona :avia` or `tonona : avia`.
    fn join_qualifier(&self, i: usize) -> Option<(&'static str, usize)> {
        let j = self.next_sig(i)?;
        let text = self.text(j);
        let (name, last) = match self.kind(j)? {
            TokenKind::Parameter => (text.strip_prefix(':')?, j),
            TokenKind::Other if text == ":" => {
                let k = self.next_sig(j)?;
                (self.word(k)?, k)
            }
            _ => return None,
        };
        Some((lookup(JOIN_QUALIFIERS, name)?, last))
    }

    /// `dia` or `dia tsy`.
    fn dia(&self, i: usize) -> (&'static str, usize) {
        match self.next_sig(i) {
            Some(j) if self.word_is(j, "tsy") => ("IS NOT", j),
            _ => ("IS", i),
        }
    }

    /// `head [ny] object`, or the head keyword alone.
    fn head_phrase(&self, head: Head, i: usize) -> (&'static str, usize) {
        let Some(mut j) = self.next_sig(i) else {
            return (head.keyword(), i);
        };
        if self.word_is(j, "ny") {
            match self.next_sig(j) {
                Some(k) => j = k,
                None => return (head.keyword(), i),
            }
        }
        match self.word(j).and_then(|object| head.phrase(object)) {
            Some(phrase) => (phrase, j),
            None => (head.keyword(), i),
        }
    }

    /// Writes a translated keyword replacing the tokens up to `last`, with a
    /// space on either side where it would otherwise fuse with a word.
    fn emit_keyword(&mut self, sql: &'static str, last: usize) {
        if self.out.bytes().last().is_some_and(is_ident_byte) {
            self.out.push(' ');
        }
        self.out.push_str(sql);
        let end = self.toks.get(last).map_or(self.src.len(), |t| t.span.end);
        let next = self.src.as_bytes().get(end).copied();
        if next.is_some_and(|b| is_ident_byte(b) || b == b'#') {
            self.out.push(' ');
        }
        for word in sql.split(' ') {
            self.note_clause(word, false);
        }
    }

    /// Records a word copied unchanged (English keywords count too).
    fn note_word(&mut self, i: usize, word: &str) {
        let call = self
            .next_sig(i)
            .is_some_and(|j| self.kind(j) == Some(TokenKind::Punct) && self.text(j) == "(");
        self.note_clause(word, call);
    }

    /// Updates `inserting` if `word` is a clause keyword; `replace(` is a
    /// function call, not a clause.
    fn note_clause(&mut self, word: &str, is_call: bool) {
        if is_call && word.eq_ignore_ascii_case("replace") {
            return;
        }
        if CLAUSE_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
            self.inserting =
                word.eq_ignore_ascii_case("insert") || word.eq_ignore_ascii_case("replace");
        }
    }

    /// A word right before or after `.` is part of a qualified name
    /// (`t.daty`, `na.x`) and so an identifier, never a keyword.
    fn is_qualified_name(&self, i: usize) -> bool {
        let is_dot = |j: usize| self.kind(j) == Some(TokenKind::Punct) && self.text(j) == ".";
        let prev = (0..i).rev().find(|&j| !self.is_trivia(j));
        prev.is_some_and(is_dot) || self.next_sig(i).is_some_and(is_dot)
    }

    fn next_sig(&self, i: usize) -> Option<usize> {
        (i + 1..self.toks.len()).find(|&j| !self.is_trivia(j))
    }

    fn is_trivia(&self, j: usize) -> bool {
        self.kind(j).is_some_and(TokenKind::is_trivia)
    }

    fn kind(&self, j: usize) -> Option<TokenKind> {
        self.toks.get(j).map(|t| t.kind)
    }

    fn text(&self, j: usize) -> &'a str {
        self.toks.get(j).map_or("", |t| t.text(self.src))
    }

    fn word(&self, j: usize) -> Option<&'a str> {
        (self.kind(j) == Some(TokenKind::Word)).then(|| self.text(j))
    }

    fn word_is(&self, j: usize, expected: &str) -> bool {
        self.word(j)
            .is_some_and(|w| w.eq_ignore_ascii_case(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tr(sql: &str) -> String {
        translate(sql)
    }

    #[test]
    fn ampiasao_is_use() {
        assert_eq!(tr("ampiasao testdb"), "USE testdb");
    }

    #[test]
    fn readme_example() {
        assert_eq!(tr("AMPIASAO testdb"), "USE testdb");
        assert_eq!(
            tr("ALAIVO * FROM utilisateurs"),
            "SELECT * FROM utilisateurs"
        );
    }

    #[test]
    fn issue_insert_example() {
        assert_eq!(
            tr("manampia ao@ utilisateurs (nom, age) sanda ('Alice', 30), ('Bob', 25)"),
            "INSERT INTO utilisateurs (nom, age) VALUES ('Alice', 30), ('Bob', 25)"
        );
    }

    #[test]
    fn alaivo_is_select() {
        assert_eq!(tr("alaivo 1"), "SELECT 1");
    }

    #[test]
    fn ao_spellings_as_from() {
        for ao in ["ao", "ao@", "#ao", "#ao@"] {
            assert_eq!(tr(&format!("alaivo * {ao} t")), "SELECT * FROM t", "{ao}");
        }
    }

    #[test]
    fn ao_spellings_as_into() {
        for ao in ["ao", "ao@", "#ao", "#ao@"] {
            assert_eq!(
                tr(&format!("manampia {ao} t sanda (1)")),
                "INSERT INTO t VALUES (1)",
                "{ao}"
            );
        }
    }

    #[test]
    fn ao_after_replace_clauses() {
        assert_eq!(
            tr("INSERT OR REPLACE ao t VALUES (1)"),
            "INSERT OR REPLACE INTO t VALUES (1)"
        );
        assert_eq!(tr("REPLACE ao t VALUES (1)"), "REPLACE INTO t VALUES (1)");
        assert_eq!(
            tr("alaivo replace(a, 'x', 'y') ao t"),
            "SELECT replace(a, 'x', 'y') FROM t"
        );
        assert_eq!(
            tr("INSERT INTO x alaivo a ao y"),
            "INSERT INTO x SELECT a FROM y"
        );
    }

    #[test]
    fn ao_context_resets_at_semicolon() {
        assert_eq!(
            tr("manampia ao t sanda (1); ao"),
            "INSERT INTO t VALUES (1); FROM"
        );
        assert_eq!(tr("fafao ao t"), "DELETE FROM t");
    }

    #[test]
    fn ao_attached_to_name_keeps_a_space() {
        assert_eq!(tr("alaivo * ao@t"), "SELECT * FROM t");
    }

    #[test]
    fn rehefa_is_where() {
        assert_eq!(
            tr("alaivo * ao t rehefa a = 1"),
            "SELECT * FROM t WHERE a = 1"
        );
        assert_eq!(
            tr("alaivo * ao t #rehefa a = 1"),
            "SELECT * FROM t WHERE a = 1"
        );
    }

    #[test]
    fn vondrona_is_group_by() {
        assert_eq!(
            tr("alaivo a, count(*) ao t vondrona a"),
            "SELECT a, count(*) FROM t GROUP BY a"
        );
    }

    #[test]
    fn fetra_is_limit() {
        assert_eq!(tr("alaivo * ao t fetra 5"), "SELECT * FROM t LIMIT 5");
    }

    #[test]
    fn antso_is_as() {
        assert_eq!(tr("alaivo a antso b ao t"), "SELECT a AS b FROM t");
    }

    #[test]
    fn tonona_is_join() {
        assert_eq!(
            tr("ao a tonona b #ka a.x = b.x"),
            "FROM a JOIN b ON a.x = b.x"
        );
    }

    #[test]
    fn tonona_avia_is_left_join() {
        assert_eq!(tr("ao a tonona:avia b"), "FROM a LEFT JOIN b");
        assert_eq!(tr("ao a tonona :avia b"), "FROM a LEFT JOIN b");
        assert_eq!(tr("ao a TONONA : Avia b"), "FROM a LEFT JOIN b");
    }

    #[test]
    fn tonona_avanana_is_right_join() {
        assert_eq!(tr("ao a tonona:avanana b"), "FROM a RIGHT JOIN b");
        assert_eq!(tr("ao a tonona :avanana b"), "FROM a RIGHT JOIN b");
    }

    #[test]
    fn tonona_natoraly_is_natural_join() {
        assert_eq!(tr("ao a tonona:natoraly b"), "FROM a NATURAL JOIN b");
        assert_eq!(tr("ao a tonona :natoraly b"), "FROM a NATURAL JOIN b");
    }

    #[test]
    fn tonona_with_other_parameter_stays_join() {
        assert_eq!(tr("ao a tonona :x"), "FROM a JOIN :x");
    }

    #[test]
    fn ka_is_on() {
        assert_eq!(tr("JOIN b #ka a.x = b.x"), "JOIN b ON a.x = b.x");
        assert_eq!(tr("alaivo ka ao t"), "SELECT ka FROM t");
    }

    #[test]
    fn ankambana_is_union() {
        assert_eq!(
            tr("alaivo 1 #ankambana alaivo 2"),
            "SELECT 1 UNION SELECT 2"
        );
    }

    #[test]
    fn analana_is_except() {
        assert_eq!(tr("alaivo 1 #analana alaivo 2"), "SELECT 1 EXCEPT SELECT 2");
    }

    #[test]
    fn atifitra_is_intersect() {
        assert_eq!(
            tr("alaivo 1 #atifitra alaivo 2"),
            "SELECT 1 INTERSECT SELECT 2"
        );
    }

    #[test]
    fn ary_is_and() {
        assert_eq!(tr("rehefa a = 1 ary b = 2"), "WHERE a = 1 AND b = 2");
    }

    #[test]
    fn na_is_or() {
        assert_eq!(tr("rehefa a = 1 na b = 2"), "WHERE a = 1 OR b = 2");
    }

    #[test]
    fn bang_is_not_but_not_equals_stays() {
        assert_eq!(tr("rehefa ! (a = 1)"), "WHERE NOT (a = 1)");
        assert_eq!(tr("rehefa !a"), "WHERE NOT a");
        assert_eq!(tr("rehefa a != 1"), "WHERE a != 1");
        assert_eq!(tr("WHERE a != 1"), "WHERE a != 1");
    }

    #[test]
    fn dia_is_is() {
        assert_eq!(tr("rehefa a dia NULL"), "WHERE a IS NULL");
    }

    #[test]
    fn dia_tsy_is_is_not() {
        assert_eq!(tr("rehefa a dia tsy NULL"), "WHERE a IS NOT NULL");
        assert_eq!(tr("rehefa a DIA /* c */ TSY NULL"), "WHERE a IS NOT NULL");
    }

    #[test]
    fn manampia_is_insert() {
        assert_eq!(tr("manampia INTO t VALUES (1)"), "INSERT INTO t VALUES (1)");
    }

    #[test]
    fn sanda_is_values() {
        assert_eq!(tr("INSERT INTO t sanda (1)"), "INSERT INTO t VALUES (1)");
        assert_eq!(tr("INSERT INTO t #sanda (1)"), "INSERT INTO t VALUES (1)");
    }

    #[test]
    fn havaozy_ova_is_update_set() {
        assert_eq!(
            tr("havaozy t ova a = 1 rehefa b = 2"),
            "UPDATE t SET a = 1 WHERE b = 2"
        );
    }

    #[test]
    fn fafao_is_delete() {
        assert_eq!(tr("fafao ao t rehefa a = 1"), "DELETE FROM t WHERE a = 1");
    }

    #[test]
    fn manamboara_phrases() {
        assert_eq!(tr("manamboara tahiry db1"), "CREATE DATABASE db1");
        assert_eq!(
            tr("manamboara tabilao t (a isa)"),
            "CREATE TABLE t (a NUMERIC)"
        );
        assert_eq!(
            tr("manamboara jery v antso alaivo 1"),
            "CREATE VIEW v AS SELECT 1"
        );
        assert_eq!(tr("manamboara INDEX i ON t(a)"), "CREATE INDEX i ON t(a)");
        assert_eq!(tr("manamboara TABLE t (a)"), "CREATE TABLE t (a)");
    }

    #[test]
    fn ravao_phrases() {
        assert_eq!(tr("ravao ny tahiry db1"), "DROP DATABASE db1");
        assert_eq!(tr("ravao ny tabilao t"), "DROP TABLE t");
        assert_eq!(tr("ravao ny jery v"), "DROP VIEW v");
        assert_eq!(tr("ravao tahiry db1"), "DROP DATABASE db1");
        assert_eq!(tr("ravao tabilao t"), "DROP TABLE t");
        assert_eq!(tr("ravao jery v"), "DROP VIEW v");
        assert_eq!(tr("ravao TABLE t"), "DROP TABLE t");
    }

    #[test]
    fn asehoy_phrases() {
        assert_eq!(tr("asehoy ny tahiry"), "SHOW DATABASES");
        assert_eq!(tr("asehoy ny tabilao"), "SHOW TABLES");
        assert_eq!(tr("asehoy tahiry"), "SHOW DATABASES");
        assert_eq!(tr("Asehoy Tabilao"), "SHOW TABLES");
        assert_eq!(tr("asehoy ny tompo"), "SHOW OWNERS");
    }

    #[test]
    fn phrase_words_alone_stay_identifiers() {
        assert_eq!(
            tr("alaivo tahiry, tabilao, ny, tsy, jery ao t"),
            "SELECT tahiry, tabilao, ny, tsy, jery FROM t"
        );
        assert_eq!(tr("ravao ny"), "DROP ny");
        assert_eq!(tr("manamboara"), "CREATE");
    }

    #[test]
    fn type_isa_is_numeric() {
        assert_eq!(tr("CREATE TABLE t (a ISA)"), "CREATE TABLE t (a NUMERIC)");
    }

    #[test]
    fn type_lahatsoratra_is_text() {
        assert_eq!(
            tr("CREATE TABLE t (a LAHATSORATRA)"),
            "CREATE TABLE t (a TEXT)"
        );
    }

    #[test]
    fn type_daty_is_date() {
        assert_eq!(tr("CREATE TABLE t (a DATY)"), "CREATE TABLE t (a DATE)");
    }

    #[test]
    fn literals_identifiers_and_comments_untouched() {
        assert_eq!(
            tr("alaivo 'alaivo ao rehefa' ao t"),
            "SELECT 'alaivo ao rehefa' FROM t"
        );
        assert_eq!(
            tr("alaivo \"alaivo ao rehefa\", [ao], `na` ao t"),
            "SELECT \"alaivo ao rehefa\", [ao], `na` FROM t"
        );
        assert_eq!(
            tr("alaivo 1 -- alaivo ao rehefa\n/* ary na */ ao t"),
            "SELECT 1 -- alaivo ao rehefa\n/* ary na */ FROM t"
        );
        assert_eq!(tr("'alaivo ao rehefa'"), "'alaivo ao rehefa'");
    }

    #[test]
    fn qualified_names_stay_identifiers() {
        assert_eq!(tr("alaivo t.daty, na.x ao t"), "SELECT t.daty, na.x FROM t");
    }

    #[test]
    fn mixed_case_keywords() {
        assert_eq!(
            tr("AlAiVo * Ao t ReHeFa a DiA TsY NuLl ARY b = 1"),
            "SELECT * FROM t WHERE a IS NOT NuLl AND b = 1"
        );
        assert_eq!(tr("#AO@ t"), "FROM t");
    }

    #[test]
    fn english_unchanged() {
        let sql = "SELECT a, b FROM t WHERE a != 1 AND b IS NOT NULL ORDER BY a LIMIT 3";
        assert_eq!(tr(sql), sql);
        assert_eq!(tr(""), "");
    }

    /// English SQL vocabulary plus Malagasy words hidden in literals.
    fn english_piece() -> impl Strategy<Value = String> {
        let words = prop::sample::select(vec![
            "SELECT",
            "FROM",
            "WHERE",
            "INSERT",
            "INTO",
            "VALUES",
            "t",
            "a1",
            "!=",
            "<>",
            "(",
            ")",
            ",",
            ";",
            "'alaivo ao'",
            "\"na\"",
            "[ary]",
            "-- dia\n",
            "/* ! */",
            "1.5",
            ":p",
            "@x",
            "#y",
            "é",
        ]);
        prop_oneof![words.prop_map(str::to_owned), "[^!]{0,8}"]
    }

    fn has_malagasy(sql: &str) -> bool {
        Lexer::new(sql).any(|t| rule_for(sql, &t).is_some())
    }

    proptest! {
        #[test]
        fn identity_without_malagasy_words(
            pieces in prop::collection::vec(english_piece(), 0..16),
            seps in prop::collection::vec("[ \n\t]{0,2}", 16),
        ) {
            let sql: String = pieces
                .iter()
                .zip(&seps)
                .flat_map(|(p, s)| [p.as_str(), s.as_str()])
                .collect();
            prop_assume!(!has_malagasy(&sql));
            prop_assert_eq!(translate(&sql), sql);
        }

        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = translate(&s);
        }
    }
}
