//! A recursive-descent parser for DirkDB's grammar (DIRKDB-DIALECT.md §3–§6), over the tokens
//! of [`super::lexer`]. Keywords are case-insensitive whole words; `#` before and `@` after a
//! keyword are optional where DirkDB allows them, with any whitespace between. Nesting
//! (parentheses, prefix operators, subqueries) is bounded by [`MAX_DEPTH`], so no input can
//! exhaust the stack.

use super::ast::*;
use super::error::DirkError;
use super::lexer::{tokenize, Tok, Token};

/// Deepest nesting of expressions and queries accepted.
pub const MAX_DEPTH: usize = 64;

/// Words that end a select item or an origin instead of being its bare alias.
const CLAUSE_WORDS: &[&str] = &[
    "ao",
    "rehefa",
    "vondrona",
    "fetra",
    "limit",
    "tonona",
    "ankambana",
    "analana",
    "atifitra",
    "antso",
    "ka",
    "ary",
    "na",
    "dia",
];

/// Parses one DirkDB statement (without its `;`).
pub fn parse_statement(src: &str) -> Result<Statement, DirkError> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        depth: 0,
    };
    let stmt = p.statement()?;
    p.finish()?;
    Ok(stmt)
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

type R<T> = Result<T, DirkError>;

impl Parser<'_> {
    // ---- token helpers -------------------------------------------------------------------

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.pos + k).map(|t| &t.tok)
    }

    fn word_at(&self, k: usize) -> Option<&str> {
        match self.peek_at(k) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn is_word(&self, k: usize, kw: &str) -> bool {
        self.word_at(k).is_some_and(|w| w.eq_ignore_ascii_case(kw))
    }

    fn is_sym(&self, k: usize, sym: &str) -> bool {
        matches!(self.peek_at(k), Some(Tok::Sym(s)) if *s == sym)
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let yes = self.is_sym(0, sym);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn eat_word(&mut self, kw: &str) -> bool {
        let yes = self.is_word(0, kw);
        if yes {
            self.pos += 1;
        }
        yes
    }

    /// `[#]kw` at the current position, consumed if present.
    fn eat_hash_word(&mut self, kws: &[&str]) -> bool {
        let k = usize::from(self.is_sym(0, "#"));
        if kws.iter().any(|kw| self.is_word(k, kw)) {
            self.pos += k + 1;
            return true;
        }
        false
    }

    /// `[#]kw[@]`, consumed if present.
    fn eat_keyword_at(&mut self, kws: &[&str]) -> bool {
        if self.eat_hash_word(kws) {
            self.eat_sym("@");
            return true;
        }
        false
    }

    /// The text left from the current token, as DirkDB quotes it (from the end of the
    /// previous token, so usually with a leading space).
    fn rest(&self) -> String {
        let from = match self.pos.checked_sub(1).and_then(|i| self.toks.get(i)) {
            Some(prev) => prev.end,
            None => self.toks.get(self.pos).map_or(self.src.len(), |t| t.start),
        };
        self.src.get(from..).unwrap_or("").to_string()
    }

    fn finish(&self) -> R<()> {
        if self.pos < self.toks.len() {
            return Err(DirkError::Remaining(self.rest()));
        }
        Ok(())
    }

    fn token_not_found(&self) -> DirkError {
        DirkError::TokenNotFound(self.rest().trim_start().to_string())
    }

    fn name(&mut self) -> R<String> {
        match self.peek() {
            Some(Tok::Word(w)) if !w.eq_ignore_ascii_case("null") => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.token_not_found()),
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(DirkError::TooDeep(MAX_DEPTH));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    // ---- statements ----------------------------------------------------------------------

    fn statement(&mut self) -> R<Statement> {
        let Some(head) = self.word_at(0).map(str::to_ascii_lowercase) else {
            return Err(DirkError::NoCommand);
        };
        match head.as_str() {
            "ampiasao" => {
                self.pos += 1;
                if self.peek().is_none() {
                    return Err(DirkError::NoCommand);
                }
                Ok(Statement::Use(self.name()?))
            }
            "alaivo" => Ok(Statement::Select(self.query()?)),
            "manamboara" => self.create(),
            "manampia" if self.after_ao(1) => self.insert(),
            "havaozy" => self.update(),
            "fafao" => self.delete(),
            "ravao" if self.is_word(1, "ny") => self.drop(),
            "asehoy" if self.is_word(1, "ny") => self.show(),
            _ => Err(DirkError::NoCommand),
        }
    }

    /// `[#]ao` at offset `k`.
    fn after_ao(&self, k: usize) -> bool {
        self.is_word(k, "ao") || (self.is_sym(k, "#") && self.is_word(k + 1, "ao"))
    }

    fn object_kind(&self, k: usize) -> Option<Option<ObjectKind>> {
        let w = self.word_at(k)?.to_ascii_lowercase();
        Some(match w.as_str() {
            "tahiry" => None,
            "tabilao" => Some(ObjectKind::Table),
            "efitra" => Some(ObjectKind::Domain),
            "jery" => Some(ObjectKind::View),
            _ => return None,
        })
    }

    fn create(&mut self) -> R<Statement> {
        let Some(kind) = self.object_kind(1) else {
            return Err(DirkError::NoCommand);
        };
        self.pos += 2;
        let name = self.name()?;
        match kind {
            None => Ok(Statement::CreateDatabase(name)),
            Some(ObjectKind::Table) => {
                let columns = self.column_defs()?;
                Ok(Statement::CreateTable { name, columns })
            }
            Some(ObjectKind::Domain) => {
                if !self.eat_sym("(") {
                    return Err(DirkError::DomainOpen);
                }
                let ty = self.type_expr()?;
                if !self.eat_sym(")") {
                    return Err(DirkError::DomainClose);
                }
                Ok(Statement::CreateDomain { name, ty })
            }
            Some(ObjectKind::View) => {
                if !self.eat_sym("@") {
                    return Err(DirkError::ViewAt);
                }
                if !self.is_word(0, "alaivo") {
                    return Err(DirkError::NoCommand);
                }
                let query = self.query()?;
                Ok(Statement::CreateView { name, query })
            }
        }
    }

    fn drop(&mut self) -> R<Statement> {
        let Some(kind) = self.object_kind(2) else {
            return Err(DirkError::NoCommand);
        };
        self.pos += 3;
        let name = self.name()?;
        Ok(match kind {
            None => Statement::DropDatabase(name),
            Some(kind) => Statement::Drop(kind, name),
        })
    }

    fn show(&mut self) -> R<Statement> {
        let Some(kind) = self.object_kind(2) else {
            return Err(DirkError::NoCommand);
        };
        self.pos += 3;
        Ok(match kind {
            None => Statement::ShowDatabases,
            Some(kind) => Statement::Show(kind),
        })
    }

    fn column_defs(&mut self) -> R<Vec<(String, TypeExpr)>> {
        if !self.eat_sym("(") {
            return Err(DirkError::FieldList);
        }
        let mut columns = Vec::new();
        loop {
            let name = match self.name() {
                Ok(n) => n,
                Err(_) if columns.is_empty() => return Err(DirkError::FieldList),
                Err(_) => return Err(DirkError::FieldAfterComma),
            };
            let ty = self.type_expr()?;
            columns.push((name, ty));
            if self.eat_sym(",") {
                continue;
            }
            if self.eat_sym(")") {
                return Ok(columns);
            }
            return Err(DirkError::FieldCommaOrClose);
        }
    }

    // ---- types ---------------------------------------------------------------------------

    fn type_expr(&mut self) -> R<TypeExpr> {
        let mut atoms = vec![self.type_atom()?];
        while self.eat_sym(":") {
            atoms.push(self.type_atom().map_err(|_| DirkError::UnionPart)?);
        }
        Ok(TypeExpr(atoms))
    }

    fn type_atom(&mut self) -> R<TypeAtom> {
        let word = self.name()?;
        let lower = word.to_ascii_lowercase();
        let paren = self.is_sym(0, "(");
        match lower.as_str() {
            "isa" if paren => {
                let (min, max) = self.bounds()?;
                Ok(TypeAtom::Number(min, max))
            }
            "lahatsoratra" if paren => {
                let (min, max) = self.bounds()?;
                Ok(TypeAtom::Text(
                    min.map(|v| v.trunc() as i64),
                    max.map(|v| v.trunc() as i64),
                ))
            }
            "daty" => Ok(TypeAtom::Date),
            "tanisa" => self.enum_members().map(TypeAtom::Enum),
            _ => Ok(TypeAtom::Named(word)),
        }
    }

    fn bounds(&mut self) -> R<(Option<f64>, Option<f64>)> {
        self.eat_sym("(");
        let min = self.bound()?;
        if !self.eat_sym(",") {
            return Err(DirkError::Bound(self.rest()));
        }
        let max = self.bound()?;
        if !self.eat_sym(")") {
            return Err(DirkError::Bound(self.rest()));
        }
        Ok((min, max))
    }

    fn bound(&mut self) -> R<Option<f64>> {
        if self.eat_word("null") {
            return Ok(None);
        }
        let negative = self.eat_sym("-");
        match self.peek() {
            Some(Tok::Number(n)) => {
                let v: f64 = n.parse().map_err(|_| DirkError::Bound(n.clone()))?;
                self.pos += 1;
                Ok(Some(if negative { -v } else { v }))
            }
            _ => Err(DirkError::Bound(self.rest())),
        }
    }

    fn enum_members(&mut self) -> R<Vec<Member>> {
        if !self.eat_sym("(") {
            return Err(DirkError::EnumOpen);
        }
        let mut members: Vec<Member> = Vec::new();
        loop {
            let member = match self.peek().cloned() {
                Some(Tok::Number(n)) => Member::Number(n.parse().unwrap_or(0.0)),
                Some(Tok::Str(s)) | Some(Tok::Word(s)) => Member::Str(s),
                _ => return Err(DirkError::EnumValue),
            };
            self.pos += 1;
            if !members.contains(&member) {
                members.push(member);
            }
            if self.eat_sym(",") {
                continue;
            }
            if self.eat_sym(")") {
                return Ok(members);
            }
            return Err(DirkError::EnumClose);
        }
    }

    // ---- insert, update, delete ----------------------------------------------------------

    fn insert(&mut self) -> R<Statement> {
        self.pos += 1;
        self.eat_keyword_at(&["ao"]);
        let table = self.name()?;
        let columns = self.name_list()?;
        if self.is_word(0, "alaivo") {
            let select = self.select()?;
            return Ok(Statement::Insert {
                table,
                columns,
                source: InsertSource::Select(Box::new(select)),
            });
        }
        if !self.eat_hash_word(&["sanda"]) {
            return Err(DirkError::Remaining(self.rest()));
        }
        let mut rows = Vec::new();
        loop {
            let row = self.value_row()?;
            let expected = if columns.is_empty() {
                rows.first().map_or(row.len(), Vec::len)
            } else {
                columns.len()
            };
            if row.len() != expected {
                return Err(DirkError::ValueCount {
                    fields: expected,
                    values: row.len(),
                });
            }
            rows.push(row);
            if !self.eat_sym(",") {
                break;
            }
            if !self.is_sym(0, "(") {
                return Err(DirkError::AfterComma("Ligne de valeurs"));
            }
        }
        Ok(Statement::Insert {
            table,
            columns,
            source: InsertSource::Values(rows),
        })
    }

    /// `( name {, name} )`, possibly empty.
    fn name_list(&mut self) -> R<Vec<String>> {
        if !self.eat_sym("(") {
            return Err(DirkError::OpenParen);
        }
        let mut names = Vec::new();
        if self.eat_sym(")") {
            return Ok(names);
        }
        loop {
            names.push(
                self.name()
                    .map_err(|_| DirkError::AfterComma("nom de champ"))?,
            );
            if self.eat_sym(",") {
                continue;
            }
            if self.eat_sym(")") {
                return Ok(names);
            }
            return Err(DirkError::CommaOrClose);
        }
    }

    fn value_row(&mut self) -> R<Vec<Literal>> {
        if !self.eat_sym("(") {
            return Err(DirkError::OpenParen);
        }
        let mut values = Vec::new();
        loop {
            let value = match self.peek().cloned() {
                Some(Tok::Number(n)) => Literal::Number(n),
                Some(Tok::Str(s)) => Literal::Str(s),
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Literal::Null,
                _ => {
                    let found: String = self.rest().trim_start().chars().take(4).collect();
                    return Err(DirkError::NullExpected(found));
                }
            };
            self.pos += 1;
            values.push(value);
            if self.eat_sym(",") {
                continue;
            }
            if self.eat_sym(")") {
                return Ok(values);
            }
            return Err(DirkError::CommaOrClose);
        }
    }

    fn update(&mut self) -> R<Statement> {
        self.pos += 1;
        let table = self.name()?;
        if !self.eat_word("ova") {
            return Err(DirkError::Remaining(self.rest()));
        }
        let mut sets = Vec::new();
        loop {
            let column = match self.name() {
                Ok(c) => c,
                Err(e) if sets.is_empty() => return Err(e),
                Err(_) => return Err(DirkError::PairAfterComma),
            };
            if !self.eat_sym("=") {
                return Err(DirkError::EqualsExpected);
            }
            let value = self.expr()?;
            sets.push((column, value));
            if !self.eat_sym(",") {
                break;
            }
        }
        let filter = self.where_clause()?;
        Ok(Statement::Update {
            table,
            sets,
            filter,
        })
    }

    fn delete(&mut self) -> R<Statement> {
        self.pos += 1;
        if !self.eat_keyword_at(&["ao"]) {
            return Err(DirkError::NoCommand);
        }
        let table = self.name()?;
        let filter = self.where_clause()?;
        Ok(Statement::Delete { table, filter })
    }

    fn where_clause(&mut self) -> R<Option<Expr>> {
        if self.eat_hash_word(&["rehefa"]) {
            return self.expr().map(Some);
        }
        Ok(None)
    }

    // ---- select --------------------------------------------------------------------------

    fn query(&mut self) -> R<Query> {
        self.enter()?;
        let first = self.select()?;
        let mut rest = Vec::new();
        while let Some(op) = self.set_op() {
            let operand = if self.eat_sym("(") {
                let inner = self.query()?;
                if !self.eat_sym(")") {
                    return Err(DirkError::ParenMissing);
                }
                Operand::Paren(Box::new(inner))
            } else {
                Operand::Select(self.select()?)
            };
            rest.push((op, operand));
        }
        self.leave();
        Ok(Query { first, rest })
    }

    fn set_op(&mut self) -> Option<SetOp> {
        let k = usize::from(self.is_sym(0, "#"));
        let op = match self.peek_at(k)? {
            Tok::Word(w) if w.eq_ignore_ascii_case("ankambana") => SetOp::Union,
            Tok::Word(w) if w.eq_ignore_ascii_case("analana") => SetOp::Difference,
            Tok::Word(w) if w.eq_ignore_ascii_case("atifitra") => SetOp::Intersection,
            Tok::Sym("+") => SetOp::Union,
            Tok::Sym("-") => SetOp::Difference,
            Tok::Sym("^") => SetOp::Intersection,
            _ => return None,
        };
        self.pos += k + 1;
        self.eat_sym("@");
        Some(op)
    }

    fn select(&mut self) -> R<Select> {
        if !self.eat_word("alaivo") {
            return Err(DirkError::NoCommand);
        }
        let items = if self.eat_sym("*") {
            Items::All
        } else {
            Items::List(self.items()?)
        };
        let from = if self.eat_keyword_at(&["ao"]) {
            Some(self.origin()?)
        } else {
            None
        };
        if from.is_none() && items == Items::All {
            return Err(DirkError::SelectAllWithoutFrom);
        }
        let mut joins = Vec::new();
        if from.is_some() {
            while let Some(kind) = self.join_word()? {
                let origin = self.origin()?;
                let on = if self.is_sym(0, "#") && self.is_word(1, "ka") {
                    self.pos += 2;
                    Some(self.expr()?)
                } else {
                    None
                };
                joins.push(Join { kind, origin, on });
            }
        }
        let filter = self.where_clause()?;
        let group = if self.eat_hash_word(&["vondrona"]) {
            Some(self.group_list()?)
        } else {
            None
        };
        let limit = if self.eat_hash_word(&["fetra", "limit"]) {
            Some(self.limit()?)
        } else {
            None
        };
        Ok(Select {
            items,
            from,
            joins,
            filter,
            group,
            limit,
        })
    }

    fn items(&mut self) -> R<Vec<(Expr, Option<String>)>> {
        let mut items = Vec::new();
        loop {
            let expr = self.expr()?;
            let alias = self.alias()?;
            items.push((expr, alias));
            if !self.eat_sym(",") {
                return Ok(items);
            }
        }
    }

    /// `[#]antso NAME`, or a bare name that is no clause word (several in a row: the last).
    fn alias(&mut self) -> R<Option<String>> {
        let mut alias = None;
        loop {
            if self.eat_hash_word(&["antso"]) {
                let name = self.name()?;
                if self.is_sym(0, ".") {
                    return Err(DirkError::QualifiedAlias);
                }
                alias = Some(name);
                continue;
            }
            match self.word_at(0) {
                Some(w)
                    if !CLAUSE_WORDS.iter().any(|c| c.eq_ignore_ascii_case(w))
                        && !w.eq_ignore_ascii_case("null")
                        && !self.is_sym(1, "@")
                        && !self.is_sym(1, ".")
                        && !self.is_sym(1, "(") =>
                {
                    alias = Some(w.to_string());
                    self.pos += 1;
                }
                _ => return Ok(alias),
            }
        }
    }

    fn origin(&mut self) -> R<Origin> {
        if self.eat_sym("(") {
            let query = self.query()?;
            if !self.eat_sym(")") {
                return Err(DirkError::ParenMissing);
            }
            let alias = self.table_alias()?;
            if alias.is_none() {
                return Err(DirkError::AliasNeeded);
            }
            return Ok(Origin {
                source: Source::Query(Box::new(query)),
                alias,
            });
        }
        let name = self.name()?;
        let alias = self.table_alias()?;
        Ok(Origin {
            source: Source::Table(name),
            alias,
        })
    }

    fn table_alias(&mut self) -> R<Option<String>> {
        if self.eat_hash_word(&["antso"]) {
            let name = self.name()?;
            if self.is_sym(0, ".") {
                return Err(DirkError::QualifiedAlias);
            }
            return Ok(Some(name));
        }
        match self.word_at(0) {
            Some(w)
                if !CLAUSE_WORDS.iter().any(|c| c.eq_ignore_ascii_case(w))
                    && !w.eq_ignore_ascii_case("null")
                    && !self.is_sym(1, "@") =>
            {
                let w = w.to_string();
                self.pos += 1;
                Ok(Some(w))
            }
            _ => Ok(None),
        }
    }

    /// `[#]tonona[:KIND][@]`.
    fn join_word(&mut self) -> R<Option<JoinKind>> {
        let k = usize::from(self.is_sym(0, "#"));
        if !self.is_word(k, "tonona") {
            return Ok(None);
        }
        let save = self.pos;
        self.pos += k + 1;
        let mut kind = JoinKind::Inner;
        if self.eat_sym(":") {
            if let Some(w) = self.word_at(0).map(str::to_ascii_lowercase) {
                let named = match w.as_str() {
                    "anatiny" => Some(JoinKind::Inner),
                    "avia" | "ankavia" => Some(JoinKind::Left),
                    "avanana" | "ankavanana" => Some(JoinKind::Right),
                    "feno" => Some(JoinKind::Full),
                    "natoraly" => Some(JoinKind::Natural),
                    _ => None,
                };
                match named {
                    Some(n) => {
                        kind = n;
                        self.pos += 1;
                    }
                    None if !self.is_sym(1, "@") && !self.is_sym(0, "@") => {}
                    None => {
                        self.pos = save;
                        return Err(DirkError::Remaining(self.rest()));
                    }
                }
            }
        }
        self.eat_sym("@");
        Ok(Some(kind))
    }

    fn group_list(&mut self) -> R<Vec<ColumnRef>> {
        if !self.eat_sym("(") {
            return Err(DirkError::OpenParen);
        }
        let mut cols = Vec::new();
        if self.eat_sym(")") {
            return Ok(cols);
        }
        loop {
            cols.push(
                self.column_ref()
                    .map_err(|_| DirkError::AfterComma("Identifiant"))?,
            );
            if self.eat_sym(",") {
                continue;
            }
            if self.eat_sym(")") {
                return Ok(cols);
            }
            return Err(DirkError::CommaOrClose);
        }
    }

    fn column_ref(&mut self) -> R<ColumnRef> {
        let first = self.name()?;
        if self.is_sym(0, ".") && self.word_at(1).is_some() {
            self.pos += 1;
            let name = self.name()?;
            return Ok(ColumnRef {
                origin: Some(first),
                name,
            });
        }
        Ok(ColumnRef {
            origin: None,
            name: first,
        })
    }

    fn limit(&mut self) -> R<(u64, Option<u64>)> {
        let a = self.index()?.ok_or_else(|| self.token_not_found())?;
        let b = self.index()?;
        Ok((a, b))
    }

    fn index(&mut self) -> R<Option<u64>> {
        match self.peek() {
            Some(Tok::Number(n)) if !n.contains('.') => {
                let n = n.clone();
                self.pos += 1;
                match n.parse::<i32>() {
                    Ok(v) => Ok(Some(v as u64)),
                    Err(_) => Err(DirkError::LimitTooLarge(n)),
                }
            }
            _ => Ok(None),
        }
    }

    // ---- expressions ---------------------------------------------------------------------

    fn expr(&mut self) -> R<Expr> {
        self.enter()?;
        let mut left = self.comparison()?;
        loop {
            let op = if self.eat_hash_word(&["ary"]) {
                BinOp::And
            } else if self.eat_hash_word(&["na"]) {
                BinOp::Or
            } else {
                break;
            };
            let right = self.comparison()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
        self.leave();
        Ok(left)
    }

    fn comparison(&mut self) -> R<Expr> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("=")) => BinOp::Eq,
                Some(Tok::Sym("!=")) => BinOp::Neq,
                Some(Tok::Sym("<")) => BinOp::Lt,
                Some(Tok::Sym("<=")) => BinOp::Lte,
                Some(Tok::Sym(">")) => BinOp::Gt,
                Some(Tok::Sym(">=")) => BinOp::Gte,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.additive()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn additive(&mut self) -> R<Expr> {
        let mut left = self.term()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("+")) if !self.set_op_follows() => BinOp::Add,
                Some(Tok::Sym("-")) if !self.set_op_follows() => BinOp::Sub,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.term()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    /// `+ alaivo`, `+@ alaivo`, `- (alaivo …)`: a set operator, not arithmetic.
    fn set_op_follows(&self) -> bool {
        let k = 1 + usize::from(self.is_sym(1, "@"));
        self.is_word(k, "alaivo") || (self.is_sym(k, "(") && self.is_word(k + 1, "alaivo"))
    }

    fn term(&mut self) -> R<Expr> {
        let mut left = self.factor()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("*")) => BinOp::Mul,
                Some(Tok::Sym("/")) => BinOp::Div,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.factor()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn factor(&mut self) -> R<Expr> {
        self.enter()?;
        let mut e = self.primary()?;
        while self.is_word(0, "dia") {
            self.pos += 1;
            let not = self.eat_word("tsy");
            if !self.eat_word("null") {
                return Err(DirkError::AfterIs);
            }
            e = Expr::IsNull(Box::new(e), not);
        }
        self.leave();
        Ok(e)
    }

    fn primary(&mut self) -> R<Expr> {
        let Some(tok) = self.peek().cloned() else {
            return Err(self.token_not_found());
        };
        match tok {
            Tok::Number(n) => {
                self.pos += 1;
                Ok(Expr::Number(n))
            }
            Tok::Str(s) => {
                self.pos += 1;
                Ok(Expr::Str(s))
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => {
                self.pos += 1;
                Ok(Expr::Null)
            }
            Tok::Word(w) if self.is_sym(1, "(") => {
                self.pos += 2;
                let mut args = Vec::new();
                if !self.eat_sym(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.eat_sym(",") {
                            continue;
                        }
                        if self.eat_sym(")") {
                            break;
                        }
                        return Err(DirkError::CommaOrClose);
                    }
                }
                Ok(Expr::Call(w, args))
            }
            Tok::Word(_) => self.column_ref().map(Expr::Column),
            Tok::Sym("(") => {
                self.pos += 1;
                if self.is_word(0, "alaivo") {
                    return Err(DirkError::ParenMissing);
                }
                let e = self.expr()?;
                if !self.eat_sym(")") {
                    return Err(DirkError::ParenMissing);
                }
                Ok(e)
            }
            Tok::Sym("-") => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.factor()?)))
            }
            Tok::Sym("!") => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.factor()?)))
            }
            _ => Err(self.token_not_found()),
        }
    }
}
