//! A bound on how deep a statement's expression tree can be, checked on tokens before anything
//! parses it.
//!
//! `sqlparser` limits its own recursion (nested parentheses, prefix operators), but it builds a
//! flat chain such as `1+1+…+1`, `a OR b OR …` or `'x' || 'y' || …` in a loop, as a left-deep
//! tree as deep as the chain is long; dropping, printing or visiting that tree then recurses once
//! per level, and 50,000 terms overflow a thread's stack and abort the process. So the proxy,
//! the cache and the server measure the tree's height here first, iteratively, and refuse a
//! statement over `limits.maxExpressionDepth` with [`ExpressionTooDeep`].
//!
//! The height is computed by operator-precedence reduction over the tokens (a shunting-yard that
//! keeps heights instead of nodes): every binary or prefix operator and every parenthesis adds a
//! level, operators of higher precedence nest inside lower ones the way SQLite parses them, and
//! words side by side (`SELECT a FROM t`, `,`) sit beside each other at the same level. It is an
//! upper bound of the depth any parser gives the statement, within a level or two per
//! parenthesis, and costs one pass over the tokens with memory bounded by the limit.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::lexer::{Lexer, TokenKind};

/// The default of `limits.maxExpressionDepth`: SQLite's own `SQLITE_MAX_EXPR_DEPTH`.
pub const DEFAULT_MAX_EXPRESSION_DEPTH: usize = 1000;

static MAX_EXPRESSION_DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_EXPRESSION_DEPTH);

/// Sets the process's `limits.maxExpressionDepth` (at start and on a configuration reload).
pub fn configure_max_expression_depth(limit: usize) {
    MAX_EXPRESSION_DEPTH.store(limit.max(1), Ordering::Relaxed);
}

/// The process's `limits.maxExpressionDepth`.
pub fn max_expression_depth() -> usize {
    MAX_EXPRESSION_DEPTH.load(Ordering::Relaxed)
}

/// A statement refused because its expression tree would be too deep to handle safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expression too deep: the statement's expression nests over {limit} levels \
     (operators chained or parentheses nested; limits.maxExpressionDepth is {limit})"
)]
pub struct ExpressionTooDeep {
    /// The limit it went over.
    pub limit: usize,
}

/// Checks `sql` against the process's `limits.maxExpressionDepth`.
pub fn check_expression_depth(sql: &str) -> Result<(), ExpressionTooDeep> {
    check_expression_depth_within(sql, max_expression_depth())
}

/// Checks `sql` against `limit`. A statement of at most `limit` bytes always passes (each level
/// costs at least one byte), so short statements cost nothing.
pub fn check_expression_depth_within(sql: &str, limit: usize) -> Result<(), ExpressionTooDeep> {
    if sql.len() <= limit {
        return Ok(());
    }
    let mut height = HeightMeter::new(limit);
    for token in Lexer::new(sql) {
        if token.kind.is_trivia() {
            continue;
        }
        height.push(classify_token(token.kind, token.text(sql)))?;
    }
    height.finish()
}

/// What a token is to the height computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// A literal, a name, a keyword that is not an operator.
    Operand,
    /// `(`.
    Open,
    /// `)`.
    Close,
    /// Something that separates items of one level: `,`, `.`, `;`, a clause keyword.
    Separator,
    /// An operator of this precedence, binary after an operand and prefix before one.
    Operator(u8),
    /// `NOT`: a prefix operator before an operand, part of `NOT IN`/`NOT LIKE`/… after one.
    Not,
    /// `*`: an operator after an operand, the `*` of `SELECT *` or `count(*)` before one.
    Star,
}

/// Precedence of a set operation (`UNION`, `INTERSECT`, `EXCEPT`): below words side by side, so
/// a chain of them nests the way `sqlparser` builds it.
const SET_OPERATION: u8 = 0;
/// Precedence of words side by side (an implicit operator that adds no level).
const BESIDE: u8 = 1;
/// Precedence of a prefix operator (`-x`, `~x`).
const PREFIX: u8 = 12;
/// Precedence of `NOT` as a prefix.
const NOT_PREFIX: u8 = 4;

fn classify_token(kind: TokenKind, text: &str) -> Piece {
    match kind {
        TokenKind::Punct => match text {
            "(" => Piece::Open,
            ")" => Piece::Close,
            _ => Piece::Separator,
        },
        TokenKind::Semicolon => Piece::Separator,
        TokenKind::Operator => match text {
            "*" => Piece::Star,
            "!" => Piece::Not,
            _ => Piece::Operator(operator_precedence(text)),
        },
        TokenKind::Word => keyword_piece(text),
        _ => Piece::Operand,
    }
}

/// SQLite's precedence of a symbolic operator, higher binding tighter.
fn operator_precedence(op: &str) -> u8 {
    match op {
        "=" | "==" | "!=" | "<>" => 5,
        "<" | "<=" | ">" | ">=" => 6,
        "&" | "|" | "<<" | ">>" => 7,
        "+" | "-" => 8,
        "/" | "%" => 9,
        "||" | "->" | "->>" => 10,
        _ => PREFIX,
    }
}

/// Keywords after which an operand starts (so `*` and `-` are not binary there).
const CLAUSE_KEYWORDS: [&str; 14] = [
    "SELECT",
    "DISTINCT",
    "ALL",
    "WHERE",
    "BY",
    "HAVING",
    "ON",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "VALUES",
    "SET",
    "RETURNING",
];

/// Keyword operators and their precedence (Malagasy `ary`/`na` are AND/OR).
const KEYWORD_OPERATORS: [(&str, u8); 14] = [
    ("UNION", SET_OPERATION),
    ("INTERSECT", SET_OPERATION),
    ("EXCEPT", SET_OPERATION),
    ("OR", 2),
    ("NA", 2),
    ("AND", 3),
    ("ARY", 3),
    ("IS", 5),
    ("IN", 5),
    ("LIKE", 5),
    ("GLOB", 5),
    ("MATCH", 5),
    ("REGEXP", 5),
    ("BETWEEN", 5),
];

fn keyword_piece(word: &str) -> Piece {
    if word.eq_ignore_ascii_case("NOT") {
        return Piece::Not;
    }
    if word.eq_ignore_ascii_case("COLLATE") || word.eq_ignore_ascii_case("ESCAPE") {
        return Piece::Operator(11);
    }
    if let Some((_, p)) = KEYWORD_OPERATORS
        .iter()
        .find(|(k, _)| word.eq_ignore_ascii_case(k))
    {
        return Piece::Operator(*p);
    }
    if CLAUSE_KEYWORDS.iter().any(|k| word.eq_ignore_ascii_case(k)) {
        return Piece::Separator;
    }
    Piece::Operand
}

/// One operator waiting for its right operand.
#[derive(Debug, Clone, Copy)]
struct Pending {
    precedence: u8,
    /// Binary (two operands) or prefix (one).
    binary: bool,
    /// Whether the node it makes is one level deeper than its operands (all but [`BESIDE`]).
    deepens: bool,
}

/// Where an open parenthesis's contents start on the two stacks.
#[derive(Debug, Clone, Copy)]
struct Frame {
    heights: usize,
    operators: usize,
}

/// The shunting-yard state: heights of finished operands, operators waiting, open parentheses.
struct HeightMeter {
    limit: usize,
    heights: Vec<usize>,
    operators: Vec<Pending>,
    frames: Vec<Frame>,
    /// Operators on the stack that will each add a level (a lower bound of the final height).
    deepening: usize,
    expect_operand: bool,
}

impl HeightMeter {
    fn new(limit: usize) -> HeightMeter {
        HeightMeter {
            limit,
            heights: Vec::new(),
            operators: Vec::new(),
            frames: Vec::new(),
            deepening: 0,
            expect_operand: true,
        }
    }

    fn push(&mut self, piece: Piece) -> Result<(), ExpressionTooDeep> {
        match piece {
            Piece::Operand => self.operand(1)?,
            Piece::Star if self.expect_operand => self.operand(1)?,
            Piece::Star => self.binary(9)?,
            Piece::Not if self.expect_operand => self.prefix(NOT_PREFIX)?,
            Piece::Not => {}
            Piece::Operator(p) if self.expect_operand => self.prefix(p.max(PREFIX))?,
            Piece::Operator(p) => self.binary(p)?,
            Piece::Separator => {
                if !self.expect_operand {
                    self.beside()?;
                }
            }
            Piece::Open => {
                if !self.expect_operand {
                    self.beside()?;
                }
                self.frames.push(Frame {
                    heights: self.heights.len(),
                    operators: self.operators.len(),
                });
                self.expect_operand = true;
            }
            Piece::Close => self.close()?,
        }
        self.check()
    }

    /// The height of the whole statement, once every operator and parenthesis is closed.
    fn finish(mut self) -> Result<(), ExpressionTooDeep> {
        while !self.frames.is_empty() {
            self.close()?;
        }
        self.reduce_while(|_| true)?;
        self.check()
    }

    fn operand(&mut self, height: usize) -> Result<(), ExpressionTooDeep> {
        if !self.expect_operand {
            self.beside()?;
        }
        self.heights.push(height);
        self.expect_operand = false;
        self.check_height(height)
    }

    fn prefix(&mut self, precedence: u8) -> Result<(), ExpressionTooDeep> {
        self.push_operator(Pending {
            precedence,
            binary: false,
            deepens: true,
        });
        Ok(())
    }

    fn binary(&mut self, precedence: u8) -> Result<(), ExpressionTooDeep> {
        self.reduce_while(|top| top >= precedence)?;
        self.push_operator(Pending {
            precedence,
            binary: true,
            deepens: true,
        });
        Ok(())
    }

    /// Two operands side by side: an implicit operator that keeps the higher of their heights.
    fn beside(&mut self) -> Result<(), ExpressionTooDeep> {
        self.reduce_while(|top| top >= BESIDE)?;
        self.push_operator(Pending {
            precedence: BESIDE,
            binary: true,
            deepens: false,
        });
        Ok(())
    }

    fn push_operator(&mut self, op: Pending) {
        self.deepening += usize::from(op.deepens);
        self.operators.push(op);
        self.expect_operand = true;
    }

    /// `)`: the parenthesis's contents become one operand a level deeper (a stray `)` is ignored).
    fn close(&mut self) -> Result<(), ExpressionTooDeep> {
        let Some(frame) = self.frames.last().copied() else {
            return Ok(());
        };
        self.reduce_while(|_| true)?;
        self.frames.pop();
        let inner = self.heights.drain(frame.heights..).max().unwrap_or(0);
        self.expect_operand = true;
        self.operand(inner + 1)
    }

    /// Applies waiting operators of the current parenthesis while `take` accepts their precedence.
    fn reduce_while(&mut self, take: impl Fn(u8) -> bool) -> Result<(), ExpressionTooDeep> {
        let floor = self.frames.last().map_or(0, |f| f.operators);
        let base = self.frames.last().map_or(0, |f| f.heights);
        while self.operators.len() > floor {
            let Some(op) = self.operators.last().copied() else {
                break;
            };
            if !take(op.precedence) {
                break;
            }
            self.operators.pop();
            self.deepening -= usize::from(op.deepens);
            let right = self.pop_height(base);
            let left = if op.binary { self.pop_height(base) } else { 0 };
            let height = left.max(right) + usize::from(op.deepens);
            self.heights.push(height);
            self.check_height(height)?;
        }
        Ok(())
    }

    fn pop_height(&mut self, base: usize) -> usize {
        if self.heights.len() > base {
            self.heights.pop().unwrap_or(0)
        } else {
            0
        }
    }

    fn check_height(&self, height: usize) -> Result<(), ExpressionTooDeep> {
        if height > self.limit {
            return Err(ExpressionTooDeep { limit: self.limit });
        }
        Ok(())
    }

    /// Refuses as soon as the open parentheses and waiting operators alone go over the limit,
    /// so the stacks never grow past it.
    fn check(&self) -> Result<(), ExpressionTooDeep> {
        self.check_height(self.frames.len() + self.deepening)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(sql: &str, limit: usize) -> bool {
        // Bypass the short-statement shortcut so small examples exercise the meter.
        let mut meter = HeightMeter::new(limit);
        for token in Lexer::new(sql) {
            if token.kind.is_trivia() {
                continue;
            }
            if meter
                .push(classify_token(token.kind, token.text(sql)))
                .is_err()
            {
                return false;
            }
        }
        meter.finish().is_ok()
    }

    /// The smallest limit `sql` passes.
    fn height(sql: &str) -> usize {
        (1..200).find(|&l| depth_ok(sql, l)).unwrap_or(usize::MAX)
    }

    fn chain(term: &str, op: &str, n: usize) -> String {
        vec![term; n].join(op)
    }

    #[test]
    fn chains_count_one_level_per_operator() {
        assert_eq!(height("SELECT 1"), 1);
        assert_eq!(height("SELECT 1+1"), 2);
        assert_eq!(height(&format!("SELECT {}", chain("1", "+", 50))), 50);
        assert_eq!(height(&format!("SELECT ({})", chain("1", "+", 50))), 51);
        assert_eq!(height(&format!("SELECT {}", chain("a", " OR ", 40))), 40);
        assert_eq!(height(&format!("SELECT {}", chain("'x'", " || ", 30))), 30);
        assert_eq!(height(&chain("SELECT 1", " UNION ALL ", 20)), 20);
    }

    #[test]
    fn precedence_nests_like_sqlite() {
        // `a=1 OR a=2 OR …`: the comparisons sit under the OR chain, one level each.
        let ors = (0..30).map(|i| format!("a = {i}")).collect::<Vec<_>>();
        assert_eq!(
            height(&format!("SELECT * FROM t WHERE {}", ors.join(" OR "))),
            31
        );
        assert_eq!(height("SELECT 1 + 2 * 3 - 4"), 4);
        assert_eq!(height("SELECT - - - 1"), 4);
        assert_eq!(height("SELECT a FROM t WHERE NOT b AND c IS NOT NULL"), 4);
    }

    #[test]
    fn lists_and_clauses_sit_side_by_side() {
        let values = (0..500)
            .map(|i| format!("({i}, 'v{i}')"))
            .collect::<Vec<_>>();
        assert_eq!(
            height(&format!("INSERT INTO t VALUES {}", values.join(", "))),
            2
        );
        assert_eq!(
            height("SELECT count(*), max(a) FROM t GROUP BY b ORDER BY c"),
            2
        );
        assert_eq!(height("SELECT ((((1))))"), 5);
        assert_eq!(
            height("SELECT CASE WHEN a = 1 THEN 'x' ELSE 'y' END FROM t"),
            2
        );
    }

    #[test]
    fn unbalanced_input_is_still_measured() {
        assert_eq!(height("SELECT (((1"), 4);
        assert_eq!(height("SELECT 1))) + 1"), 2);
        assert_eq!(height("SELECT + "), 1);
    }

    #[test]
    fn a_huge_flat_chain_is_refused_and_a_long_flat_list_is_not() {
        let sum = format!("SELECT ({})", chain("1", "+", 50_000));
        let err = check_expression_depth_within(&sum, 1000).unwrap_err();
        assert!(
            err.to_string().contains("limits.maxExpressionDepth"),
            "{err}"
        );
        let prefixes = format!("SELECT {}1", "- ".repeat(100_000));
        assert!(check_expression_depth_within(&prefixes, 1000).is_err());
        let nested = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(check_expression_depth_within(&nested, 1000).is_err());
        let list = format!("SELECT * FROM t WHERE a IN ({})", chain("1", ",", 100_000));
        assert!(check_expression_depth_within(&list, 1000).is_ok());
        assert!(
            check_expression_depth_within("SELECT 1+1+1", 12).is_ok(),
            "short text"
        );
    }
}
