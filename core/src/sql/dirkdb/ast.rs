//! The syntax tree of one DirkDB statement (DIRKDB-DIALECT.md §3–§6).

/// One statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `manamboara tahiry NAME`
    CreateDatabase(String),
    /// `ampiasao NAME`
    Use(String),
    /// `ravao ny tahiry NAME`
    DropDatabase(String),
    /// `asehoy ny tahiry`
    ShowDatabases,
    /// `manamboara tabilao NAME (col TYPE, …)`
    CreateTable {
        /// Table name.
        name: String,
        /// Columns and their types, in order.
        columns: Vec<(String, TypeExpr)>,
    },
    /// `manamboara efitra NAME (TYPE)`
    CreateDomain {
        /// Domain name.
        name: String,
        /// Its type.
        ty: TypeExpr,
    },
    /// `manamboara jery NAME @ SELECT-EXPR`
    CreateView {
        /// View name.
        name: String,
        /// Its query.
        query: Query,
    },
    /// `ravao ny tabilao|efitra|jery NAME`
    Drop(ObjectKind, String),
    /// `asehoy ny tabilao|efitra|jery`
    Show(ObjectKind),
    /// `manampia ao T (cols) sanda (…), …` or `… (cols) alaivo …`
    Insert {
        /// Table name.
        table: String,
        /// Listed columns; empty means all, in table order.
        columns: Vec<String>,
        /// Rows or a query.
        source: InsertSource,
    },
    /// `havaozy T ova c = e, … [rehefa cond]`
    Update {
        /// Table name.
        table: String,
        /// Assignments in order.
        sets: Vec<(String, Expr)>,
        /// Row condition.
        filter: Option<Expr>,
    },
    /// `fafao ao T [rehefa cond]`
    Delete {
        /// Table name.
        table: String,
        /// Row condition.
        filter: Option<Expr>,
    },
    /// `alaivo …`
    Select(Query),
}

/// Tables, domains and views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `tabilao`
    Table,
    /// `efitra`
    Domain,
    /// `jery`
    View,
}

/// What `manampia` inserts.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertSource {
    /// `sanda (…), (…)`: literal values only.
    Values(Vec<Vec<Literal>>),
    /// A single select (no set operator).
    Select(Box<Select>),
}

/// A literal value of `sanda`.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A number, as written.
    Number(String),
    /// A string, decoded.
    Str(String),
    /// `null`.
    Null,
}

/// A type: one atom or a union `A:B:…`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeExpr(pub Vec<TypeAtom>);

/// One part of a type.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeAtom {
    /// `ISA(min,max)`, value bounds, `None` = unbounded.
    Number(Option<f64>, Option<f64>),
    /// `LAHATSORATRA(min,max)`, length bounds.
    Text(Option<i64>, Option<i64>),
    /// `DATY`
    Date,
    /// `TANISA(…)`
    Enum(Vec<Member>),
    /// A named domain.
    Named(String),
}

/// A `TANISA` member.
#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    /// A number.
    Number(f64),
    /// A string (quoted or a bare word).
    Str(String),
}

/// A select expression: selects combined by set operators, left to right.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The first select.
    pub first: Select,
    /// Each set operator and its right operand.
    pub rest: Vec<(SetOp, Operand)>,
}

/// The right operand of a set operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A plain select.
    Select(Select),
    /// `( select-expr )`
    Paren(Box<Query>),
}

/// Set operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    /// `ankambana` / `+`
    Union,
    /// `analana` / `-`
    Difference,
    /// `atifitra` / `^`
    Intersection,
}

/// One `alaivo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// `*` or the items.
    pub items: Items,
    /// `ao origin`.
    pub from: Option<Origin>,
    /// `tonona` joins in order.
    pub joins: Vec<Join>,
    /// `rehefa cond`.
    pub filter: Option<Expr>,
    /// `vondrona (c, …)`.
    pub group: Option<Vec<ColumnRef>>,
    /// `fetra A [B]`: row indexes.
    pub limit: Option<(u64, Option<u64>)>,
}

/// Select items.
#[derive(Debug, Clone, PartialEq)]
pub enum Items {
    /// `*`
    All,
    /// Expressions with optional aliases.
    List(Vec<(Expr, Option<String>)>),
}

/// A table, view or derived table in FROM or a join.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// What is read.
    pub source: Source,
    /// Its alias.
    pub alias: Option<String>,
}

/// The relation an origin reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A table or view.
    Table(String),
    /// A derived table.
    Query(Box<Query>),
}

/// One join.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// Its kind.
    pub kind: JoinKind,
    /// The right side.
    pub origin: Origin,
    /// `#ka cond`.
    pub on: Option<Expr>,
}

/// Join kinds (§4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// `#tonona`, `:anatiny`
    Inner,
    /// `:avia`, `:ankavia`
    Left,
    /// `:avanana`, `:ankavanana`
    Right,
    /// `:feno`
    Full,
    /// `:natoraly`
    Natural,
}

/// A column reference, optionally qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    /// `origin` of `origin.name`.
    pub origin: Option<String>,
    /// The column name.
    pub name: String,
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number as written.
    Number(String),
    /// A string, decoded.
    Str(String),
    /// `null`
    Null,
    /// A column.
    Column(ColumnRef),
    /// `name(args)`
    Call(String, Vec<Expr>),
    /// `-e`
    Neg(Box<Expr>),
    /// `!e`
    Not(Box<Expr>),
    /// `l op r`
    Binary(Box<Expr>, BinOp, Box<Expr>),
    /// `e dia null` (false) / `e dia tsy null` (true)
    IsNull(Box<Expr>, bool),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `ary`
    And,
    /// `na`
    Or,
}
