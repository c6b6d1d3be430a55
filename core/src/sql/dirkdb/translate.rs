//! A parsed DirkDB statement as SQLite runs it: the SQL steps, what to answer on success, and
//! the names DirkDB gives the answer's relation and columns (DIRKDB-DIALECT.md §4.6).
//!
//! DirkDB's meaning is kept where SQL differs (§7): numbers are REALs, `ary`/`na` have one
//! precedence and run left to right (explicit parentheses), `!` treats a comparison with null as
//! false, WHERE and filtered or outer joins remove duplicate rows (each source relation is read
//! `DISTINCT`, which gives the same set), `#fetra A B` is a slice of row indexes, `count`/`sum`/`avg`
//! answer doubles and 0.0 over no value. Types become CHECK constraints (see [`super::domain`]).

use super::ast::*;
use super::domain::{resolve, sql_real, sql_string, Domain};
use super::error::DirkError;

/// What the translator may ask about the current database.
pub trait Schema {
    /// The current database, if any.
    fn database(&self) -> Option<&str>;
    /// A named domain's canonical text.
    fn domain(&self, name: &str) -> Option<String>;
    /// Whether the domains table exists.
    fn has_domain_table(&self) -> bool;
    /// Whether a domain of that name is stored.
    fn domain_exists(&self, name: &str) -> bool;
    /// `table`, `view`, … for an existing schema object.
    fn object_type(&self, name: &str) -> Option<String>;
}

/// A schema that knows nothing and accepts every domain name: enough to classify a statement
/// and key it in the cache.
pub struct NoSchema;

impl Schema for NoSchema {
    fn database(&self) -> Option<&str> {
        Some("main")
    }
    fn domain(&self, _: &str) -> Option<String> {
        Some("ISA(null,null)".into())
    }
    fn has_domain_table(&self) -> bool {
        true
    }
    fn domain_exists(&self, _: &str) -> bool {
        false
    }
    fn object_type(&self, _: &str) -> Option<String> {
        None
    }
}

/// The table where named domains live in each database file (an ordinary table, so it
/// replicates, is copied, checksummed and survives restarts like any other).
pub const DOMAIN_TABLE: &str = "dirkdb_domains";

/// The SQL function a CHECK constraint calls when a value does not fit its column's domain.
pub const VIOLATION_FUNCTION: &str = "dirkdb_domain_violation";

/// DirkDB's text after INSERT, UPDATE and DELETE.
pub const CHANGED: &str = "Tafinditra ny fiovana ny tabilao";

/// How to run one table-level statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// SQL statements, run in order in one transaction.
    pub steps: Vec<String>,
    /// The answer on success.
    pub answer: Answer,
}

/// A successful statement's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A message line.
    Text(String),
    /// A relation named the DirkDB way.
    Relation(Naming),
}

/// The relation's name and, when known without the schema, its columns' names and origins.
#[derive(Debug, Clone, PartialEq)]
pub struct Naming {
    /// The relation's name.
    pub relation: String,
    /// Column names and origins; `None` keeps SQLite's (for `*`).
    pub columns: Option<Vec<(String, Option<String>)>>,
}

/// Plans a table-level statement; database-level ones (`tahiry`, `ampiasao`) are the server's.
pub fn plan(stmt: &Statement, schema: &dyn Schema) -> Result<Plan, DirkError> {
    let db = || {
        schema
            .database()
            .map(str::to_string)
            .ok_or(DirkError::NoDatabase)
    };
    let text = |s: String| Answer::Text(s);
    Ok(match stmt {
        Statement::CreateDatabase(_)
        | Statement::Use(_)
        | Statement::DropDatabase(_)
        | Statement::ShowDatabases => {
            return Err(DirkError::NoCommand);
        }
        Statement::Select(q) => {
            if query_reads_tables(q) {
                let _ = db()?;
            }
            Plan {
                steps: vec![query_sql(q)],
                answer: Answer::Relation(query_naming(q)),
            }
        }
        Statement::CreateTable { name, columns } => {
            let db = db()?;
            if schema.object_type(name).is_some() {
                return Err(DirkError::TableExists(name.clone()));
            }
            let mut defs = Vec::new();
            for (i, (col, ty)) in columns.iter().enumerate() {
                let domain =
                    resolve(ty, &|n| schema.domain(n)).map_err(|n| DirkError::NotFound {
                        db: db.clone(),
                        name: n,
                    })?;
                defs.push(column_def(col, i, &domain));
            }
            Plan {
                steps: vec![format!(
                    "CREATE TABLE {} ({})",
                    ident(name),
                    defs.join(", ")
                )],
                answer: text(format!("Ny tabilao : {name} dia voaforona soamantsara")),
            }
        }
        Statement::CreateDomain { name, ty } => {
            let db = db()?;
            if schema.domain_exists(name) {
                return Err(DirkError::DomainExists(name.clone()));
            }
            let domain = resolve(ty, &|n| schema.domain(n))
                .map_err(|n| DirkError::NotFound { db, name: n })?;
            let mut steps = Vec::new();
            if !schema.has_domain_table() {
                steps.push(format!(
                    "CREATE TABLE IF NOT EXISTS {DOMAIN_TABLE} (name TEXT PRIMARY KEY, definition TEXT NOT NULL)"
                ));
            }
            steps.push(format!(
                "INSERT INTO {DOMAIN_TABLE} (name, definition) VALUES ({}, {})",
                sql_string(name),
                sql_string(&domain.canonical())
            ));
            Plan {
                steps,
                answer: text(format!("Ny efitra : {name} dia voaforona soamantsara")),
            }
        }
        Statement::CreateView { name, query } => {
            let _ = db()?;
            if schema.object_type(name).is_some() {
                return Err(DirkError::ViewExists(name.clone()));
            }
            Plan {
                steps: vec![format!(
                    "CREATE VIEW {} AS {}",
                    ident(name),
                    query_sql(query)
                )],
                answer: text(format!("Ny jery : {name} dia voaforona soamantsara")),
            }
        }
        Statement::Drop(kind, name) => {
            let db = db()?;
            let object = schema.object_type(name);
            let step = match kind {
                ObjectKind::Table => {
                    if object.is_some_and(|o| o != "table") {
                        return Err(DirkError::NotFound {
                            db,
                            name: name.clone(),
                        });
                    }
                    format!("DROP TABLE {}", ident(name))
                }
                ObjectKind::View => {
                    if object.is_some_and(|o| o != "view") {
                        return Err(DirkError::ViewNotFound {
                            db,
                            name: name.clone(),
                        });
                    }
                    format!("DROP VIEW {}", ident(name))
                }
                ObjectKind::Domain => {
                    if !schema.domain_exists(name) {
                        return Err(DirkError::NotFound {
                            db,
                            name: name.clone(),
                        });
                    }
                    format!(
                        "DELETE FROM {DOMAIN_TABLE} WHERE name = {}",
                        sql_string(name)
                    )
                }
            };
            Plan {
                steps: vec![step],
                answer: text(String::new()),
            }
        }
        Statement::Show(kind) => {
            let _ = db()?;
            let sql = match kind {
                ObjectKind::Table => show_objects_sql("table"),
                ObjectKind::View => show_objects_sql("view"),
                ObjectKind::Domain if schema.has_domain_table() => {
                    format!("SELECT name AS fanasehoana FROM {DOMAIN_TABLE} ORDER BY rowid")
                }
                ObjectKind::Domain => "SELECT NULL AS fanasehoana WHERE 0".to_string(),
            };
            Plan {
                steps: vec![sql],
                answer: Answer::Relation(show_naming()),
            }
        }
        Statement::Insert {
            table,
            columns,
            source,
        } => {
            let _ = db()?;
            let cols = if columns.is_empty() {
                String::new()
            } else {
                let c: Vec<String> = columns.iter().map(|c| ident(c)).collect();
                format!(" ({})", c.join(", "))
            };
            let body = match source {
                InsertSource::Values(rows) => {
                    let rows: Vec<String> = rows
                        .iter()
                        .map(|r| {
                            let v: Vec<String> = r.iter().map(literal_sql).collect();
                            format!("({})", v.join(", "))
                        })
                        .collect();
                    format!("VALUES {}", rows.join(", "))
                }
                InsertSource::Select(s) => select_sql(s),
            };
            Plan {
                steps: vec![format!("INSERT INTO {}{cols} {body}", ident(table))],
                answer: text(CHANGED.into()),
            }
        }
        Statement::Update {
            table,
            sets,
            filter,
        } => {
            let _ = db()?;
            let s: Vec<String> = sets
                .iter()
                .map(|(c, e)| format!("{} = {}", ident(c), expr_sql(e)))
                .collect();
            let mut sql = format!("UPDATE {} SET {}", ident(table), s.join(", "));
            if let Some(f) = filter {
                sql.push_str(&format!(" WHERE {}", expr_sql(f)));
            }
            Plan {
                steps: vec![sql],
                answer: text(CHANGED.into()),
            }
        }
        Statement::Delete { table, filter } => {
            let _ = db()?;
            let mut sql = format!("DELETE FROM {}", ident(table));
            if let Some(f) = filter {
                sql.push_str(&format!(" WHERE {}", expr_sql(f)));
            }
            Plan {
                steps: vec![sql],
                answer: text(CHANGED.into()),
            }
        }
    })
}

/// Whether a select expression reads any relation (one that does not can run without a
/// current database, like `alaivo 1 + 1`).
fn query_reads_tables(q: &Query) -> bool {
    std::iter::once(&q.first)
        .chain(q.rest.iter().filter_map(|(_, o)| match o {
            Operand::Select(s) => Some(s),
            Operand::Paren(_) => None,
        }))
        .any(|s| s.from.is_some())
        || q.rest
            .iter()
            .any(|(_, o)| matches!(o, Operand::Paren(inner) if query_reads_tables(inner)))
}

fn show_objects_sql(kind: &str) -> String {
    format!(
        "SELECT name AS fanasehoana FROM sqlite_schema WHERE type = '{kind}' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_dirk%' ESCAPE '\\' \
         AND name <> '{DOMAIN_TABLE}' ORDER BY rowid"
    )
}

fn show_naming() -> Naming {
    Naming {
        relation: "fanasehoana".into(),
        columns: Some(vec![("fanasehoana".into(), Some("fanasehoana".into()))]),
    }
}

/// A column with its domain as a CHECK constraint and no type affinity (values are stored as
/// given, so `'5'` stays a string and is refused by `ISA`, as in DirkDB).
fn column_def(name: &str, index: usize, domain: &Domain) -> String {
    let c = ident(name);
    format!(
        "{c} CONSTRAINT {} CHECK ({} OR {VIOLATION_FUNCTION}({c}, {index}, {}))",
        ident(&format!("dirkdb_domain_{index}")),
        domain.check_sql(&c),
        sql_string(&domain.display())
    )
}

/// A quoted SQL identifier. Backquotes, since SQLite reads an unknown `"name"` as a string.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn literal_sql(l: &Literal) -> String {
    match l {
        Literal::Number(n) => number_sql(n),
        Literal::Str(s) => sql_string(s),
        Literal::Null => "NULL".into(),
    }
}

fn number_sql(n: &str) -> String {
    if n.contains('.') {
        n.to_string()
    } else {
        n.parse::<f64>().map_or_else(|_| format!("{n}.0"), sql_real)
    }
}

// ---- queries -------------------------------------------------------------------------------

/// The SQL of a select expression.
pub fn query_sql(q: &Query) -> String {
    if q.rest.is_empty() {
        return select_sql(&q.first);
    }
    let mut sql = operand_sql(&q.first);
    for (op, operand) in &q.rest {
        sql.push_str(match op {
            SetOp::Union => " UNION ",
            SetOp::Intersection => " INTERSECT ",
            SetOp::Difference => " EXCEPT ",
        });
        match operand {
            Operand::Select(s) => sql.push_str(&operand_sql(s)),
            Operand::Paren(inner) => sql.push_str(&format!("SELECT * FROM ({})", query_sql(inner))),
        }
    }
    sql
}

/// A select as an operand of a compound: one with `#fetra` is wrapped, since SQLite allows
/// LIMIT only at the end of a compound.
fn operand_sql(s: &Select) -> String {
    if s.limit.is_some() {
        format!("SELECT * FROM ({})", select_sql(s))
    } else {
        select_sql(s)
    }
}

fn dedups(s: &Select) -> bool {
    s.filter.is_some()
        || s.joins.iter().any(|j| {
            matches!(j.kind, JoinKind::Left | JoinKind::Right | JoinKind::Full)
                || (j.on.is_some() && j.kind == JoinKind::Inner)
        })
}

fn select_sql(s: &Select) -> String {
    let dedup = dedups(s);
    let items = match &s.items {
        Items::All => "*".to_string(),
        Items::List(items) => {
            let v: Vec<String> = items
                .iter()
                .map(|(e, a)| item_sql(e, a.as_deref()))
                .collect();
            v.join(", ")
        }
    };
    let mut sql = format!("SELECT {items}");
    let mut natural_filters = Vec::new();
    if let Some(from) = &s.from {
        sql.push_str(&format!(" FROM {}", origin_sql(from, dedup)));
        for j in &s.joins {
            let right = origin_sql(&j.origin, dedup);
            let on = j.on.as_ref().map(expr_sql);
            let clause = match j.kind {
                JoinKind::Inner => match on {
                    Some(on) => format!(" JOIN {right} ON {on}"),
                    None => format!(" CROSS JOIN {right}"),
                },
                JoinKind::Natural => {
                    natural_filters.extend(on);
                    format!(" NATURAL JOIN {right}")
                }
                kind => {
                    let word = match kind {
                        JoinKind::Left => "LEFT",
                        JoinKind::Right => "RIGHT",
                        _ => "FULL",
                    };
                    format!(
                        " {word} JOIN {right} ON {}",
                        on.unwrap_or_else(|| "1".into())
                    )
                }
            };
            sql.push_str(&clause);
        }
    }
    let mut conditions: Vec<String> = natural_filters;
    if let Some(f) = &s.filter {
        conditions.push(expr_sql(f));
    }
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if let Some(group) = s.group.as_ref().filter(|g| !g.is_empty()) {
        let g: Vec<String> = group.iter().map(column_sql).collect();
        sql.push_str(&format!(" GROUP BY {}", g.join(", ")));
    }
    if let Some((a, b)) = s.limit {
        let count = b.map_or(-1, |b| b.saturating_sub(a) as i64);
        sql.push_str(&format!(" LIMIT {count} OFFSET {a}"));
    }
    sql
}

fn origin_sql(o: &Origin, dedup: bool) -> String {
    match &o.source {
        Source::Table(t) => {
            let alias = o.alias.as_deref().unwrap_or(t);
            if dedup {
                format!("(SELECT DISTINCT * FROM {}) AS {}", ident(t), ident(alias))
            } else if o.alias.is_some() {
                format!("{} AS {}", ident(t), ident(alias))
            } else {
                ident(t)
            }
        }
        Source::Query(q) => {
            let alias = ident(o.alias.as_deref().unwrap_or("_"));
            if dedup {
                format!("(SELECT DISTINCT * FROM ({})) AS {alias}", query_sql(q))
            } else {
                format!("({}) AS {alias}", query_sql(q))
            }
        }
    }
}

fn item_sql(e: &Expr, alias: Option<&str>) -> String {
    let sql = expr_sql(e);
    match (alias, e) {
        (Some(a), _) => format!("{sql} AS {}", ident(a)),
        (None, Expr::Column(_)) => sql,
        (None, _) => format!("{sql} AS {}", ident(&debug_expr(e))),
    }
}

fn column_sql(c: &ColumnRef) -> String {
    match &c.origin {
        Some(o) => format!("{}.{}", ident(o), ident(&c.name)),
        None => ident(&c.name),
    }
}

/// The SQL of an expression, fully parenthesised.
pub fn expr_sql(e: &Expr) -> String {
    match e {
        Expr::Number(n) => number_sql(n),
        Expr::Str(s) => sql_string(s),
        Expr::Null => "NULL".into(),
        Expr::Column(c) => column_sql(c),
        Expr::Call(name, args) => {
            let a: Vec<String> = args.iter().map(expr_sql).collect();
            let a = a.join(", ");
            match name.to_ascii_lowercase().as_str() {
                "count" => format!("CAST(count({a}) AS REAL)"),
                "sum" => format!("total({a})"),
                "avg" => format!("coalesce(avg({a}), 0.0)"),
                _ => format!("{}({a})", ident(name)),
            }
        }
        Expr::Neg(e) => format!("(- {})", expr_sql(e)),
        Expr::Not(e) => format!("(NOT coalesce({}, 0))", expr_sql(e)),
        Expr::IsNull(e, not) => {
            format!(
                "({} IS {}NULL)",
                expr_sql(e),
                if *not { "NOT " } else { "" }
            )
        }
        Expr::Binary(l, op, r) => {
            let (l, r) = (expr_sql(l), expr_sql(r));
            match op {
                BinOp::Div => format!("(CAST({l} AS REAL) / {r})"),
                _ => format!("({l} {} {r})", sql_op(*op)),
            }
        }
    }
}

fn sql_op(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Eq => "=",
        BinOp::Neq => "<>",
        BinOp::Lt => "<",
        BinOp::Lte => "<=",
        BinOp::Gt => ">",
        BinOp::Gte => ">=",
        BinOp::And => "AND",
        BinOp::Or => "OR",
    }
}

// ---- answer naming -------------------------------------------------------------------------

/// DirkDB's relation and column names for a select expression.
pub fn query_naming(q: &Query) -> Naming {
    let mut relation = select_relation(&q.first);
    for (op, operand) in &q.rest {
        let right = match operand {
            Operand::Select(s) => select_relation(s),
            Operand::Paren(inner) => query_naming(inner).relation,
        };
        let word = match op {
            SetOp::Union => "Union",
            SetOp::Intersection => "inter",
            SetOp::Difference => "diff",
        };
        relation = format!("{relation}_{word}_{right}");
    }
    Naming {
        relation,
        columns: select_columns(&q.first),
    }
}

fn origin_relation(o: &Origin) -> String {
    match &o.source {
        Source::Table(t) => t.clone(),
        Source::Query(q) => query_naming(q).relation,
    }
}

fn select_relation(s: &Select) -> String {
    let mut name = s
        .from
        .as_ref()
        .map_or_else(|| "dual".to_string(), origin_relation);
    for j in &s.joins {
        let r = origin_relation(&j.origin);
        name = match j.kind {
            JoinKind::Inner if j.on.is_some() => format!("{name}_produit_{r}_selection"),
            JoinKind::Inner => format!("{name}_produit_{r}"),
            JoinKind::Left => format!("{name}_left_join_{r}"),
            JoinKind::Right => format!("{name}_right_join_{r}"),
            JoinKind::Full => format!("{name}_left_join_{r}_Union_{name}_right_join_{r}"),
            JoinKind::Natural => format!("{name}_natural_join_{r}"),
        };
    }
    if s.filter.is_some() {
        name.push_str("_selection");
    }
    if s.group.as_ref().is_some_and(|g| !g.is_empty()) {
        name.push_str("_groupBy");
    } else if s.items != Items::All {
        name.push_str("_projection");
    }
    if s.limit.is_some() {
        name.push_str("_limit");
    }
    name
}

fn select_columns(s: &Select) -> Option<Vec<(String, Option<String>)>> {
    let Items::List(items) = &s.items else {
        return None;
    };
    Some(
        items
            .iter()
            .map(|(e, alias)| match (alias, e) {
                (Some(a), _) => (a.clone(), None),
                (None, Expr::Column(c)) => (c.name.clone(), c.origin.clone()),
                (None, e) => (debug_expr(e), None),
            })
            .collect(),
    )
}

/// Java's debug form of an expression, DirkDB's name for an unaliased computed column.
pub fn debug_expr(e: &Expr) -> String {
    match e {
        Expr::Number(n) => format!(
            "NUMBER({})",
            super::domain::java_double(n.parse().unwrap_or(0.0))
        ),
        Expr::Str(s) => format!("STRING({s})"),
        Expr::Null => "NULLVALUE(null)".into(),
        Expr::Column(c) => format!(
            "ID(QualifiedIdentifier [origin={}, name={}])",
            c.origin.as_deref().unwrap_or("null"),
            c.name
        ),
        Expr::Call(name, args) => {
            let a: Vec<String> = args.iter().map(debug_expr).collect();
            format!("FunctionExpr({name}, [{}])", a.join(", "))
        }
        Expr::Neg(e) => format!("NEG({})", debug_expr(e)),
        Expr::Not(e) => format!("NOT({})", debug_expr(e)),
        Expr::IsNull(e, not) => format!(
            "({} {} NULLVALUE(null))",
            debug_expr(e),
            if *not { "IsNot" } else { "Is" }
        ),
        Expr::Binary(l, op, r) => {
            let word = match op {
                BinOp::Add => "ADD",
                BinOp::Sub => "MIN",
                BinOp::Mul => "MUL",
                BinOp::Div => "DIV",
                BinOp::Eq => "Eq",
                BinOp::Neq => "Neq",
                BinOp::Lt => "Lt",
                BinOp::Lte => "Lte",
                BinOp::Gt => "Gt",
                BinOp::Gte => "Gte",
                BinOp::And => "AND",
                BinOp::Or => "OR",
            };
            format!("({} {word} {})", debug_expr(l), debug_expr(r))
        }
    }
}
