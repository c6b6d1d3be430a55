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

/// Column names and their origins, in order.
pub type Columns = Vec<(String, Option<String>)>;

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
    /// The names and origins of the columns `sql` answers, when it can be prepared.
    fn columns(&self, _sql: &str) -> Option<Columns> {
        None
    }
    /// A number that changes whenever anything a plan reads from the schema changes (SQLite's
    /// schema version); `None` when plans must not be remembered.
    fn version(&self) -> Option<i64> {
        None
    }
    /// SQLite's reason when `sql` cannot be prepared; `None` when it can (or nobody knows).
    fn prepare_error(&self, _sql: &str) -> Option<String> {
        None
    }
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
            check_query(q, schema)?;
            if query_reads_tables(q) {
                let _ = db()?;
            }
            let (sql, left_columns) = compound_sql(q, schema)?;
            let mut naming = query_naming(q);
            if naming.columns.is_none() {
                naming.columns = left_columns;
            }
            Plan {
                steps: vec![sql],
                answer: Answer::Relation(naming),
            }
        }
        Statement::CreateTable { name, columns } => {
            let db = db()?;
            if schema.object_type(name).is_some() {
                return Err(DirkError::TableExists(name.clone()));
            }
            let mut defs = Vec::new();
            for (i, (col, ty)) in columns.iter().enumerate() {
                let domain = resolve(ty, &|n| schema.domain(n))
                    .map_err(|n| DirkError::NotFound {
                        db: db.clone(),
                        name: n,
                    })?
                    .stored();
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
                .map_err(|n| DirkError::NotFound { db, name: n })?
                .stored();
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
            check_query(query, schema)?;
            if schema.object_type(name).is_some() {
                return Err(DirkError::ViewExists(name.clone()));
            }
            Plan {
                steps: vec![format!(
                    "CREATE VIEW {} AS {}",
                    ident(name),
                    compound_sql(query, schema)?.0
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
                InsertSource::Select(s) => {
                    check_group(s, schema)?;
                    select_sql(s, schema)?
                }
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
                .map(|(c, e)| format!("{} = {}", ident(c), value_sql(e)))
                .collect();
            let mut sql = format!("UPDATE {} SET {}", ident(table), s.join(", "));
            if let Some(f) = filter {
                sql.push_str(&format!(" WHERE {}", truth_sql(f)));
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
                sql.push_str(&format!(" WHERE {}", truth_sql(f)));
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

/// The naming of every `asehoy ny …` answer: `fanasehoana [fanasehoana@fanasehoana]`.
pub fn show_naming() -> Naming {
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

/// The SQL of a select expression without a schema (what classification and cache keys read).
pub fn query_sql(q: &Query) -> String {
    compound_sql(q, &NoSchema).map_or_else(|_| "SELECT NULL WHERE 0".into(), |(sql, _)| sql)
}

/// The SQL of a select expression whose set operations are checked and run as DirkDB's
/// (Relation.union/intersection/difference): operands must have equal column counts (DirkDB's
/// `L(n) AND R(m)` error, with the relation names), and a difference keeps the left side's
/// duplicate rows. Also answers the left operand's columns. Without a schema (classification,
/// cache keys) it is [`query_sql`].
pub fn compound_sql(
    q: &Query,
    schema: &dyn Schema,
) -> Result<(String, Option<Columns>), DirkError> {
    if q.rest.is_empty() {
        return Ok((select_sql(&q.first, schema)?, None));
    }
    let first = operand_sql(&q.first, schema)?;
    let left_columns = schema.columns(&first);
    let mut sql = first;
    let mut name = select_relation(&q.first);
    let mut ordered = false;
    for (op, operand) in &q.rest {
        let (right, right_name) = match operand {
            Operand::Select(s) => (operand_sql(s, schema)?, select_relation(s)),
            Operand::Paren(inner) => (
                format!("SELECT * FROM ({})", compound_sql(inner, schema)?.0),
                query_naming(inner).relation,
            ),
        };
        let right_columns = schema.columns(&right);
        if let (Some(l), Some(r)) = (&left_columns, &right_columns) {
            if l.len() != r.len() {
                return Err(DirkError::SetOpColumns {
                    left: name,
                    left_count: l.len(),
                    right: right_name,
                    right_count: r.len(),
                });
            }
        }
        sql = match (&left_columns, &right_columns) {
            (Some(columns), Some(_)) => {
                ordered = true;
                set_operation(*op, &sql, &right, columns)
            }
            _ => {
                let word = match op {
                    SetOp::Union => "UNION",
                    SetOp::Intersection => "INTERSECT",
                    SetOp::Difference => "EXCEPT",
                };
                // A compound may not follow an ORDER BY: the ordered form is wrapped.
                if ordered {
                    format!("SELECT * FROM ({sql}) {word} {right}")
                } else {
                    format!("{sql} {word} {right}")
                }
            }
        };
        let word = match op {
            SetOp::Union => "Union",
            SetOp::Intersection => "inter",
            SetOp::Difference => "diff",
        };
        name = format!("{name}_{word}_{right_name}");
    }
    Ok((sql, left_columns))
}

/// A set operation as DirkDB computes it (Relation.union/intersection/difference), rows in
/// DirkDB's order: a union keeps the first occurrence of each distinct row, left rows then right
/// rows; an intersection the distinct left rows found on the right, in left order; a difference
/// every left row, duplicates included, found nowhere on the right. Rows are equal position by
/// position, null equal to null. Columns are renamed by position (a compound's first select
/// names them) and given back the left side's names.
fn set_operation(
    op: SetOp,
    left: &str,
    right: &str,
    columns: &[(String, Option<String>)],
) -> String {
    let n = columns.len();
    let positional: Vec<String> = (1..=n).map(|i| format!("NULL AS _dirk_c{i}")).collect();
    let positional = positional.join(", ");
    let renamed =
        |sql: &str| format!("SELECT {positional} WHERE 0 UNION ALL SELECT * FROM ({sql})");
    let back: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("_dirk_c{} AS {}", i + 1, ident(name)))
        .collect();
    let back = back.join(", ");
    let keys: Vec<String> = (1..=n).map(|i| format!("_dirk_c{i}")).collect();
    let keys = keys.join(", ");
    let same: Vec<String> = (1..=n)
        .map(|i| format!("_dirk_r._dirk_c{i} IS _dirk_l._dirk_c{i}"))
        .collect();
    let same = same.join(" AND ");
    match op {
        SetOp::Union => format!(
            "SELECT {back} FROM (SELECT *, row_number() OVER () AS _dirk_k FROM ({} UNION ALL SELECT * FROM ({right}))) GROUP BY {keys} ORDER BY min(_dirk_k)",
            renamed(left)
        ),
        SetOp::Intersection => format!(
            "SELECT {back} FROM (SELECT *, row_number() OVER () AS _dirk_k FROM ({})) AS _dirk_l WHERE EXISTS (SELECT 1 FROM ({}) AS _dirk_r WHERE {same}) GROUP BY {keys} ORDER BY min(_dirk_k)",
            renamed(left),
            renamed(right)
        ),
        SetOp::Difference => format!(
            "SELECT {back} FROM ({}) AS _dirk_l WHERE NOT EXISTS (SELECT 1 FROM ({}) AS _dirk_r WHERE {same})",
            renamed(left),
            renamed(right)
        ),
    }
}

/// A select as an operand of a compound: one with `#fetra` is wrapped, since SQLite allows
/// LIMIT only at the end of a compound.
fn operand_sql(s: &Select, schema: &dyn Schema) -> Result<String, DirkError> {
    let sql = select_sql(s, schema)?;
    Ok(if s.limit.is_some() {
        format!("SELECT * FROM ({sql})")
    } else {
        sql
    })
}

pub(super) fn dedups(s: &Select) -> bool {
    s.filter.is_some()
        || s.joins.iter().any(|j| {
            matches!(j.kind, JoinKind::Left | JoinKind::Right | JoinKind::Full)
                || (j.on.is_some() && matches!(j.kind, JoinKind::Inner | JoinKind::Natural))
        })
}

fn select_sql(s: &Select, schema: &dyn Schema) -> Result<String, DirkError> {
    if s.joins.iter().any(|j| j.kind != JoinKind::Inner) {
        if let Some(sql) = super::joins::ordered_select(s, schema)? {
            return Ok(sql);
        }
    }
    let dedup = dedups(s);
    let grouped = grouped(s);
    let items = match &s.items {
        Items::All => "*".to_string(),
        Items::List(items) => {
            let v: Vec<String> = items
                .iter()
                .map(|(e, a)| {
                    if grouped {
                        group_item_sql(e, a.as_deref())
                    } else {
                        item_sql(e, a.as_deref())
                    }
                })
                .collect();
            v.join(", ")
        }
    };
    let mut sql = format!("SELECT {items}");
    let mut natural_filters = Vec::new();
    if let Some(from) = &s.from {
        let from_sql = if grouped && s.joins.is_empty() && !SQL_OPERATORS.with(|c| c.get()) {
            format!(
                "(SELECT *, row_number() OVER () AS {GROUP_POSITION} FROM {}) AS {}",
                source_sql(from, dedup, schema)?,
                ident(&origin_alias(from))
            )
        } else {
            origin_sql(from, dedup, schema)?
        };
        sql.push_str(&format!(" FROM {from_sql}"));
        for j in &s.joins {
            let right = origin_sql(&j.origin, dedup, schema)?;
            let on = j.on.as_ref().map(truth_sql);
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
        conditions.push(truth_sql(f));
    }
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if let Some(group) = s.group.as_ref().filter(|g| !g.is_empty()) {
        let g: Vec<String> = group.iter().map(column_sql).collect();
        sql.push_str(&format!(" GROUP BY {}", g.join(", ")));
        let first_seen = s.joins.is_empty().then_some(GROUP_POSITION);
        sql.push_str(&group_order_sql(&g, first_seen));
    }
    push_limit(&mut sql, s);
    Ok(sql)
}

/// The scan-order number of a grouping select's source rows (never answered: such a select
/// has no `*`).
const GROUP_POSITION: &str = "_dirk_g";

/// DirkDB's group order (GroupByHelper keeps its groups in a java.util.HashMap): each group's
/// place in the iteration of a HashMap into which the groups were put in order of first
/// occurrence (`first_seen`, the smallest source row number of the group; SQLite's order when
/// unknown, as for joins), keyed by `GroupKey.hashCode` (see [`super::values::JavaOrder`]).
/// Not in the SQL the proxy and the cache read.
pub(super) fn group_order_sql(keys: &[String], first_seen: Option<&str>) -> String {
    use super::values::{Function as F, JAVA_ORDER_FUNCTION};
    if SQL_OPERATORS.with(|c| c.get()) {
        return String::new();
    }
    let window = match first_seen {
        Some(position) => format!("ORDER BY min({position}) "),
        None => String::new(),
    };
    format!(
        " ORDER BY {JAVA_ORDER_FUNCTION}({}({})) OVER ({window}ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)",
        F::JavaHash.sql_name(),
        keys.join(", ")
    )
}

/// `#fetra A [B]`: rows A (inclusive) to B (exclusive) by index.
pub(super) fn push_limit(sql: &mut String, s: &Select) {
    if let Some((a, b)) = s.limit {
        let count = b.map_or(-1, |b| b.saturating_sub(a) as i64);
        sql.push_str(&format!(" LIMIT {count} OFFSET {a}"));
    }
}

/// The SQL of the relation an origin reads, without its alias: DISTINCT when the select
/// removes duplicate rows.
pub(super) fn source_sql(
    o: &Origin,
    dedup: bool,
    schema: &dyn Schema,
) -> Result<String, DirkError> {
    Ok(match (&o.source, dedup) {
        (Source::Table(t), true) => format!("(SELECT DISTINCT * FROM {})", ident(t)),
        (Source::Table(t), false) => ident(t),
        (Source::Query(q), true) => {
            format!("(SELECT DISTINCT * FROM ({}))", compound_sql(q, schema)?.0)
        }
        (Source::Query(q), false) => format!("({})", compound_sql(q, schema)?.0),
    })
}

/// The name an origin's columns are qualified with: its alias, else the table's name.
pub(super) fn origin_alias(o: &Origin) -> String {
    match (&o.alias, &o.source) {
        (Some(a), _) => a.clone(),
        (None, Source::Table(t)) => t.clone(),
        (None, Source::Query(_)) => "_".into(),
    }
}

fn origin_sql(o: &Origin, dedup: bool, schema: &dyn Schema) -> Result<String, DirkError> {
    let source = source_sql(o, dedup, schema)?;
    Ok(match (&o.source, &o.alias) {
        (Source::Table(_), None) if !dedup => source,
        _ => format!("{source} AS {}", ident(&origin_alias(o))),
    })
}

/// Whether a select groups (`#vondrona ()` is an ordinary projection, as in DirkDB).
pub(super) fn grouped(s: &Select) -> bool {
    s.group.as_ref().is_some_and(|g| !g.is_empty())
}

/// DirkDB's checks of a grouping select, in GroupByHelper's order: `*`; each key resolved;
/// then each item in turn — an aggregate's name, argument count and kind, then its argument
/// resolved; a column resolved, then found among the keys; anything else refused. Columns are
/// resolved by preparing them over the select's relation (SQLite's resolution, so its rules for
/// qualified names), when the schema can; without one only the static checks run.
fn check_group(s: &Select, schema: &dyn Schema) -> Result<(), DirkError> {
    let Some(keys) = s.group.as_ref().filter(|g| !g.is_empty()) else {
        return Ok(());
    };
    let Items::List(items) = &s.items else {
        return Err(DirkError::GroupNeedsList);
    };
    let resolve = |c: &ColumnRef| resolve_in(s, c, schema);
    keys.iter().try_for_each(resolve)?;
    for (e, _) in items {
        match e {
            Expr::Call(name, args) => {
                if !["count", "sum", "avg"]
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(name.trim()))
                {
                    return Err(DirkError::GroupFunction(name.clone()));
                }
                if args.len() != 1 {
                    return Err(DirkError::GroupArgCount(name.clone()));
                }
                let Expr::Column(arg) = &args[0] else {
                    return Err(DirkError::GroupArgColumn(name.clone()));
                };
                resolve(arg)?;
            }
            Expr::Column(c) => {
                resolve(c)?;
                let in_keys = keys.iter().any(|k| {
                    k.name == c.name
                        && (k.origin.is_none() || c.origin.is_none() || k.origin == c.origin)
                });
                if !in_keys {
                    return Err(DirkError::NotGrouped(format!(
                        "QualifiedIdentifier [origin={}, name={}]",
                        c.origin.as_deref().unwrap_or("null"),
                        c.name
                    )));
                }
            }
            other => return Err(DirkError::GroupExpression(debug_expr(other))),
        }
    }
    Ok(())
}

/// Whether `c` names exactly one column of the relation `s` groups (its FROM and joins),
/// as SQLite resolves it; DirkDB's wrapped error when not.
fn resolve_in(s: &Select, c: &ColumnRef, schema: &dyn Schema) -> Result<(), DirkError> {
    if s.from.is_none() {
        return Ok(());
    }
    let probe = Select {
        items: Items::List(vec![(Expr::Column(c.clone()), None)]),
        filter: None,
        group: None,
        limit: None,
        ..s.clone()
    };
    let Some(reason) = schema.prepare_error(&select_sql(&probe, &NoSchema)?) else {
        return Ok(());
    };
    let written = match &c.origin {
        Some(o) => format!("{o}.{}", c.name),
        None => c.name.clone(),
    };
    // The probe also holds the joins' conditions: only an error about `c` itself is `c`'s.
    if !reason.ends_with(&written) {
        return Ok(());
    }
    if reason.starts_with("no such column") {
        return Err(DirkError::GroupFieldNotFound(written));
    }
    if reason.starts_with("ambiguous column name") {
        let scope = Select {
            items: Items::All,
            ..probe
        };
        let count = schema
            .columns(&select_sql(&scope, &NoSchema)?)
            .map_or(2, |cols| {
                cols.iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(&c.name))
                    .count()
            });
        return Err(DirkError::GroupAmbiguous {
            name: written,
            count: count.max(2),
        });
    }
    // Another failure (an unknown table, …) is reported when the statement runs.
    Ok(())
}

/// Every select of a query, derived tables and set-operator operands included.
fn each_select<'q>(q: &'q Query, out: &mut Vec<&'q Select>) {
    let visit = |s: &'q Select, out: &mut Vec<&'q Select>| {
        out.push(s);
        for o in std::iter::once(&s.from)
            .flatten()
            .chain(s.joins.iter().map(|j| &j.origin))
        {
            if let Source::Query(inner) = &o.source {
                each_select(inner, out);
            }
        }
    };
    visit(&q.first, out);
    for (_, operand) in &q.rest {
        match operand {
            Operand::Select(s) => visit(s, out),
            Operand::Paren(inner) => each_select(inner, out),
        }
    }
}

/// For each select of `stmt` that reads relations, the SQL of the relation its names are
/// resolved in (FROM and joins, before WHERE): where an ambiguous name's occurrences are counted.
pub fn name_scopes(stmt: &Statement) -> Vec<String> {
    let mut selects = Vec::new();
    match stmt {
        Statement::Select(q) | Statement::CreateView { query: q, .. } => {
            each_select(q, &mut selects)
        }
        Statement::Insert {
            source: InsertSource::Select(s),
            ..
        } => selects.push(s),
        _ => {}
    }
    selects
        .into_iter()
        .filter(|s| s.from.is_some())
        .map(|s| {
            let scope = Select {
                items: Items::All,
                filter: None,
                group: None,
                limit: None,
                ..s.clone()
            };
            select_sql(&scope, &NoSchema).unwrap_or_default()
        })
        .collect()
}

/// Whether `column` is a key, an item or an aggregate's argument of a grouping select of
/// `stmt` (DirkDB reports its resolution errors with the Java class name in front).
pub fn resolved_by_group(stmt: &Statement, column: &str) -> bool {
    let mut selects = Vec::new();
    match stmt {
        Statement::Select(q) | Statement::CreateView { query: q, .. } => {
            each_select(q, &mut selects)
        }
        _ => return false,
    }
    let named = |c: &ColumnRef| {
        c.name == column
            || c.origin
                .as_ref()
                .is_some_and(|o| format!("{o}.{}", c.name) == column)
    };
    selects.into_iter().filter(|s| grouped(s)).any(|s| {
        s.group.iter().flatten().any(named)
            || matches!(&s.items, Items::List(items) if items.iter().any(|(e, _)| match e {
                Expr::Column(c) => named(c),
                Expr::Call(_, args) => matches!(args.first(), Some(Expr::Column(c)) if named(c)),
                _ => false,
            }))
    })
}

/// DirkDB's checks of a query's `#vondrona` selects before it runs.
pub fn check_query(q: &Query, schema: &dyn Schema) -> Result<(), DirkError> {
    let mut selects = Vec::new();
    each_select(q, &mut selects);
    selects.into_iter().try_for_each(|s| check_group(s, schema))
}

/// An item of a grouping select (already checked by [`check_group`]): a grouped column or an
/// aggregate answering a double, `sum`/`avg` refusing strings as DirkDB does.
pub(super) fn group_item_sql(e: &Expr, alias: Option<&str>) -> String {
    let sql = match e {
        Expr::Call(name, args) => {
            let arg = args.first().map_or_else(|| "NULL".into(), expr_sql);
            let numeric = |which: &str| {
                format!(
                    "{}({arg}, '{which}')",
                    super::values::Function::Numeric.sql_name()
                )
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "count" => format!("CAST(count({arg}) AS REAL)"),
                "sum" => format!("total({})", numeric("SUM")),
                _ => format!("coalesce(avg({}), 0.0)", numeric("AVG")),
            }
        }
        other => expr_sql(other),
    };
    match (alias, e) {
        (Some(a), _) => format!("{sql} AS {}", ident(a)),
        (None, Expr::Column(_)) => sql,
        (None, _) => format!("{sql} AS {}", ident(&debug_expr(e))),
    }
}

pub(super) fn item_sql(e: &Expr, alias: Option<&str>) -> String {
    let sql = value_sql(e);
    match (alias, e) {
        (Some(a), _) => format!("{sql} AS {}", ident(a)),
        (None, Expr::Column(_)) => sql,
        (None, _) => format!("{sql} AS {}", ident(&debug_expr(e))),
    }
}

pub(super) fn column_sql(c: &ColumnRef) -> String {
    match &c.origin {
        Some(o) => format!("{}.{}", ident(o), ident(&c.name)),
        None => ident(&c.name),
    }
}

thread_local! {
    /// Set while [`with_sql_operators`] runs.
    static SQL_OPERATORS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with expressions translated to SQL's own operators (`=`, `+`, `AND`, …) instead
/// of DirkDB's value functions: the SQL a statement stands for to the proxy's classifier and
/// the cache's keys and row pins, which read its shape, not its values.
pub fn with_sql_operators<T>(f: impl FnOnce() -> T) -> T {
    let before = SQL_OPERATORS.with(|c| c.replace(true));
    let out = f();
    SQL_OPERATORS.with(|c| c.set(before));
    out
}

/// [`expr_sql`] with SQL's operators (see [`with_sql_operators`]).
fn plain_expr_sql(e: &Expr) -> String {
    match e {
        Expr::Call(name, args) => {
            let a: Vec<String> = args.iter().map(expr_sql).collect();
            format!("{}({})", ident(name), a.join(", "))
        }
        Expr::Neg(e) => format!("(- {})", expr_sql(e)),
        Expr::Not(e) => format!("(NOT coalesce({}, 0))", expr_sql(e)),
        Expr::Binary(l, op, r) => {
            let (l, r) = (expr_sql(l), expr_sql(r));
            let op = match op {
                BinOp::Add => "+",
                BinOp::Sub => "-",
                BinOp::Mul => "*",
                BinOp::Div => return format!("(CAST({l} AS REAL) / {r})"),
                BinOp::Eq => "=",
                BinOp::Neq => "<>",
                BinOp::Lt => "<",
                BinOp::Lte => "<=",
                BinOp::Gt => ">",
                BinOp::Gte => ">=",
                BinOp::And => "AND",
                BinOp::Or => "OR",
            };
            format!("({l} {op} {r})")
        }
        other => expr_sql(other),
    }
}

/// The SQL of an expression, fully parenthesised, with DirkDB's value semantics (the
/// functions of [`super::values`]).
pub fn expr_sql(e: &Expr) -> String {
    use super::values::Function as F;
    if SQL_OPERATORS.with(|c| c.get())
        && matches!(
            e,
            Expr::Call(..) | Expr::Neg(_) | Expr::Not(_) | Expr::Binary(..)
        )
    {
        return plain_expr_sql(e);
    }
    match e {
        Expr::Number(n) => number_sql(n),
        Expr::Str(s) => sql_string(s),
        Expr::Null => "NULL".into(),
        Expr::Column(c) => column_sql(c),
        Expr::Call(name, args) => {
            // Outside `#vondrona` an aggregate fails for the first row evaluated (DirkDB's
            // FunctionExpr.eval); the argument keeps SQLite from evaluating it ahead of rows.
            let arg = args.first().map_or_else(|| "NULL".into(), expr_sql);
            format!(
                "{}({}, {arg})",
                F::RowAggregate.sql_name(),
                sql_string(name)
            )
        }
        Expr::Neg(e) => format!("{}({})", F::Neg.sql_name(), expr_sql(e)),
        Expr::Not(e) => format!("(NOT {})", truth_sql(e)),
        Expr::IsNull(e, not) => {
            format!(
                "({} IS {}NULL)",
                expr_sql(e),
                if *not { "NOT " } else { "" }
            )
        }
        Expr::Binary(l, BinOp::And, r) => format!(
            "(CASE WHEN {} THEN {} ELSE 0 END)",
            truth_sql(l),
            truth_sql(r)
        ),
        Expr::Binary(l, BinOp::Or, r) => format!(
            "(CASE WHEN {} THEN 1 ELSE {} END)",
            truth_sql(l),
            truth_sql(r)
        ),
        Expr::Binary(l, op, r) => {
            let f = match op {
                BinOp::Add => F::Add,
                BinOp::Sub => F::Sub,
                BinOp::Mul => F::Mul,
                BinOp::Div => F::Div,
                BinOp::Eq => F::Eq,
                BinOp::Neq => F::Ne,
                BinOp::Lt => F::Lt,
                BinOp::Lte => F::Le,
                BinOp::Gt => F::Gt,
                BinOp::Gte => F::Ge,
                BinOp::And | BinOp::Or => F::Truth,
            };
            if matches!(op, BinOp::Eq | BinOp::Neq) {
                // Java's CompareOp tells a Boolean from a Double: `(1 = 2) = -0` compares
                // false and -0.0 as numbers (0.0 == -0.0, true), where two doubles would
                // compare by Double.equals. So a boolean operand goes as DirkDB's boolean value.
                return format!("{}({}, {})", f.sql_name(), value_sql(l), value_sql(r));
            }
            format!("{}({}, {})", f.sql_name(), expr_sql(l), expr_sql(r))
        }
    }
}

/// The SQL of `e` as a value leaving its expression (a select item, a `havaozy` value): a
/// boolean becomes DirkDB's boolean value ([`super::values::Function::Bool`]), which stays a
/// boolean through derived tables, views and set operations and which no domain accepts.
fn value_sql(e: &Expr) -> String {
    if is_boolean(e) && !SQL_OPERATORS.with(|c| c.get()) {
        format!(
            "{}({})",
            super::values::Function::Bool.sql_name(),
            expr_sql(e)
        )
    } else {
        expr_sql(e)
    }
}

/// Whether DirkDB's value of `e` is a boolean (a comparison, `ary`/`na`, `!`, `dia null`).
pub fn is_boolean(e: &Expr) -> bool {
    match e {
        Expr::Not(_) | Expr::IsNull(..) => true,
        Expr::Binary(_, op, _) => !matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div),
        _ => false,
    }
}

/// The SQL of `e`'s truthiness, 1 or 0, never null.
pub(super) fn truth_sql(e: &Expr) -> String {
    if is_boolean(e) || SQL_OPERATORS.with(|c| c.get()) {
        expr_sql(e)
    } else {
        format!(
            "{}({})",
            super::values::Function::Truth.sql_name(),
            expr_sql(e)
        )
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
