//! Which objects a statement writes, and which tables it reads: the inputs of MULTI_PRIMARY's
//! routing (`crate::rendezvous` gives each object its owner).
//!
//! DirkDB's own statements are read with its front end ([`super::dirkdb`]); everything else
//! with `sqlparser` after the Malagasy translation. The answer is best effort for routing only:
//! a statement whose targets cannot be named (a PRAGMA, a `WITH … INSERT`, a trigger) gives
//! [`Targets::Unknown`], and the server that runs it is the final judge — it refuses any write
//! to an object it does not own, whatever the proxy guessed.

use sqlparser::ast::{
    FromTable, ObjectName, ObjectType, Query, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use super::dirkdb::{self, ast::ObjectKind as DirkKind, Route, Statement as Dirk};
use crate::rendezvous::{ObjectKind, ObjectRef};

/// What a statement touches, as far as its text says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Exactly these objects (none: it touches no object, e.g. `SELECT 1`).
    Known(Vec<ObjectRef>),
    /// It cannot be told from the text.
    Unknown,
}

/// The objects `sql` writes, in the session's database `db` (CREATE/DROP DATABASE name the
/// database itself and need no current one).
pub fn written_objects(sql: &str, db: Option<&str>) -> Targets {
    if let Route::Dirk(stmt) = dirkdb::route(sql) {
        return dirk_written(&stmt, db);
    }
    if let Some(name) = database_statement(sql) {
        return Targets::Known(vec![ObjectRef::database(&name)]);
    }
    let Some(db) = db else {
        return Targets::Unknown;
    };
    let Some(stmt) = parse_one(sql) else {
        return Targets::Unknown;
    };
    sql_written(&stmt, db)
}

/// The tables `sql` reads (FROM clauses, joins, derived tables and CTE bodies), in `db`.
pub fn read_tables(sql: &str, db: &str) -> Targets {
    if let Route::Dirk(stmt) = dirkdb::route(sql) {
        let routed = dirkdb::routing_sql(&stmt);
        return read_tables(&routed, db);
    }
    let Some(Statement::Query(query)) = parse_one(sql) else {
        return Targets::Unknown;
    };
    let mut names = Vec::new();
    let mut ctes = Vec::new();
    query_tables(&query, &mut names, &mut ctes);
    names.retain(|n| !ctes.contains(n));
    Targets::Known(dedup(
        names.iter().map(|n| ObjectRef::table(db, n)).collect(),
    ))
}

fn parse_one(sql: &str) -> Option<Statement> {
    let translated = super::translate(sql);
    let mut stmts = Parser::parse_sql(&SQLiteDialect {}, &translated).ok()?;
    (stmts.len() == 1).then(|| stmts.remove(0))
}

/// `CREATE DATABASE x` / `DROP DATABASE x` (with `IF [NOT] EXISTS`), after translation.
fn database_statement(sql: &str) -> Option<String> {
    let translated = super::translate(sql);
    let words: Vec<&str> = translated.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let is = |i: usize, w: &str| upper.get(i).is_some_and(|u| u == w);
    if !(is(0, "CREATE") || is(0, "DROP")) || !(is(1, "DATABASE") || is(1, "SCHEMA")) {
        return None;
    }
    let mut i = 2;
    if is(i, "IF") {
        i += if is(i + 1, "NOT") { 3 } else { 2 };
    }
    let name = words.get(i)?.trim_end_matches(';');
    (words.len() == i + 1 && !name.is_empty()).then(|| unquote(name))
}

fn unquote(name: &str) -> String {
    let n = name.trim();
    let quoted = n.len() >= 2
        && matches!(
            (n.as_bytes()[0], n.as_bytes()[n.len() - 1]),
            (b'"', b'"') | (b'`', b'`') | (b'[', b']')
        );
    if quoted {
        n[1..n.len() - 1].to_string()
    } else {
        n.to_string()
    }
}

fn dirk_written(stmt: &Dirk, db: Option<&str>) -> Targets {
    let object = |kind: ObjectKind, name: &str| match db {
        Some(db) => Targets::Known(vec![ObjectRef::object(db, kind, name)]),
        None => Targets::Unknown,
    };
    match stmt {
        Dirk::CreateDatabase(name) | Dirk::DropDatabase(name) => {
            Targets::Known(vec![ObjectRef::database(name)])
        }
        Dirk::CreateTable { name, .. } => object(ObjectKind::Table, name),
        Dirk::CreateDomain { name, .. } => object(ObjectKind::Domain, name),
        Dirk::CreateView { name, .. } => object(ObjectKind::View, name),
        Dirk::Drop(kind, name) => object(dirk_kind(*kind), name),
        Dirk::Insert { table, .. } | Dirk::Update { table, .. } | Dirk::Delete { table, .. } => {
            object(ObjectKind::Table, table)
        }
        _ => Targets::Known(Vec::new()),
    }
}

fn dirk_kind(kind: DirkKind) -> ObjectKind {
    match kind {
        DirkKind::Table => ObjectKind::Table,
        DirkKind::View => ObjectKind::View,
        DirkKind::Domain => ObjectKind::Domain,
    }
}

fn sql_written(stmt: &Statement, db: &str) -> Targets {
    let table = |name: &ObjectName| last_part(name).map(|n| ObjectRef::table(db, &n));
    let found: Option<Vec<ObjectRef>> = match stmt {
        Statement::Insert(insert) => match &insert.table {
            TableObject::TableName(name) => table(name).map(|t| vec![t]),
            _ => None,
        },
        Statement::Update(update) => {
            relation_name(&update.table.relation).map(|n| vec![ObjectRef::table(db, &n)])
        }
        Statement::Delete(delete) => {
            let from = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            from.iter()
                .map(|t| relation_name(&t.relation).map(|n| ObjectRef::table(db, &n)))
                .collect()
        }
        Statement::CreateTable(create) if create.temporary => Some(Vec::new()),
        Statement::CreateTable(create) => table(&create.name).map(|t| vec![t]),
        Statement::CreateView(view) => {
            last_part(&view.name).map(|n| vec![ObjectRef::object(db, ObjectKind::View, &n)])
        }
        Statement::CreateIndex(index) => table(&index.table_name).map(|t| vec![t]),
        Statement::AlterTable(alter) => table(&alter.name).map(|t| vec![t]),
        Statement::Drop {
            object_type, names, ..
        } => {
            let kind = match object_type {
                ObjectType::Table => ObjectKind::Table,
                ObjectType::View => ObjectKind::View,
                _ => return Targets::Unknown,
            };
            names
                .iter()
                .map(|n| last_part(n).map(|n| ObjectRef::object(db, kind, &n)))
                .collect()
        }
        Statement::Query(_) => Some(Vec::new()),
        _ => None,
    };
    match found {
        Some(objects) => Targets::Known(dedup(objects)),
        None => Targets::Unknown,
    }
}

fn query_tables(query: &Query, names: &mut Vec<String>, ctes: &mut Vec<String>) {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            ctes.push(cte.alias.name.value.to_ascii_lowercase());
            query_tables(&cte.query, names, ctes);
        }
    }
    set_tables(&query.body, names, ctes);
}

fn set_tables(body: &SetExpr, names: &mut Vec<String>, ctes: &mut Vec<String>) {
    match body {
        SetExpr::Select(select) => {
            for t in &select.from {
                join_tables(t, names, ctes);
            }
        }
        SetExpr::Query(q) => query_tables(q, names, ctes),
        SetExpr::SetOperation { left, right, .. } => {
            set_tables(left, names, ctes);
            set_tables(right, names, ctes);
        }
        _ => {}
    }
}

fn join_tables(t: &TableWithJoins, names: &mut Vec<String>, ctes: &mut Vec<String>) {
    factor_tables(&t.relation, names, ctes);
    for join in &t.joins {
        factor_tables(&join.relation, names, ctes);
    }
}

fn factor_tables(factor: &TableFactor, names: &mut Vec<String>, ctes: &mut Vec<String>) {
    match factor {
        TableFactor::Table { name, .. } => names.extend(last_part(name)),
        TableFactor::Derived { subquery, .. } => query_tables(subquery, names, ctes),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => join_tables(table_with_joins, names, ctes),
        _ => {}
    }
}

fn relation_name(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table { name, .. } => last_part(name),
        _ => None,
    }
}

/// The object's own name (`main.t` → `t`), lower-cased.
fn last_part(name: &ObjectName) -> Option<String> {
    Some(name.0.last()?.as_ident()?.value.to_ascii_lowercase())
}

fn dedup(mut objects: Vec<ObjectRef>) -> Vec<ObjectRef> {
    objects.sort();
    objects.dedup();
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(sql: &str) -> Vec<String> {
        match written_objects(sql, Some("shop")) {
            Targets::Known(v) => v.iter().map(ObjectRef::key).collect(),
            Targets::Unknown => vec!["?".into()],
        }
    }

    #[test]
    fn english_writes_name_their_objects() {
        assert_eq!(
            written("INSERT INTO Users(a) VALUES (1)"),
            ["DB:shop|TABLE:users"]
        );
        assert_eq!(
            written("insert or replace into main.t values (1)"),
            ["DB:shop|TABLE:t"]
        );
        assert_eq!(
            written("UPDATE t SET a = 1 WHERE b IN (SELECT b FROM u)"),
            ["DB:shop|TABLE:t"]
        );
        assert_eq!(
            written("DELETE FROM \"Odd Name\""),
            ["DB:shop|TABLE:odd name"]
        );
        assert_eq!(
            written("CREATE TABLE IF NOT EXISTS t (id INTEGER)"),
            ["DB:shop|TABLE:t"]
        );
        assert_eq!(written("CREATE TEMP TABLE x (id)"), Vec::<String>::new());
        assert_eq!(
            written("CREATE VIEW v AS SELECT * FROM t"),
            ["DB:shop|VIEW:v"]
        );
        assert_eq!(written("CREATE INDEX i ON t(a)"), ["DB:shop|TABLE:t"]);
        assert_eq!(written("ALTER TABLE t ADD COLUMN c"), ["DB:shop|TABLE:t"]);
        assert_eq!(written("DROP TABLE IF EXISTS t"), ["DB:shop|TABLE:t"]);
        assert_eq!(written("DROP VIEW v"), ["DB:shop|VIEW:v"]);
        assert_eq!(written("CREATE DATABASE testdb"), ["DB:testdb"]);
        assert_eq!(written("drop database if exists testdb"), ["DB:testdb"]);
        assert_eq!(written("PRAGMA user_version = 3"), ["?"]);
        assert_eq!(written("SELECT 1"), Vec::<String>::new());
        assert_eq!(
            written_objects("INSERT INTO t VALUES (1)", None),
            Targets::Unknown,
            "no database: nothing to name"
        );
    }

    #[test]
    fn dirkdb_and_malagasy_writes_name_their_objects() {
        assert_eq!(written("manamboara tahiry testdb"), ["DB:testdb"]);
        assert_eq!(written("ravao ny tahiry testdb"), ["DB:testdb"]);
        assert_eq!(
            written("manamboara tabilao utilisateurs (id ISA, anarana LAHATSORATRA)"),
            ["DB:shop|TABLE:utilisateurs"]
        );
        assert_eq!(
            written("manampia ao utilisateurs sanda (1, 'Alice')"),
            ["DB:shop|TABLE:utilisateurs"]
        );
        assert_eq!(
            written("ravao ny tabilao utilisateurs"),
            ["DB:shop|TABLE:utilisateurs"]
        );
        assert_eq!(written("MANAMPIA ao@ t (a) SANDA (1)"), ["DB:shop|TABLE:t"]);
    }

    #[test]
    fn reads_name_the_tables_they_read() {
        let read = |sql: &str| match read_tables(sql, "shop") {
            Targets::Known(v) => v.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
            Targets::Unknown => vec!["?".into()],
        };
        assert_eq!(read("SELECT * FROM t JOIN u ON t.a = u.a"), ["t", "u"]);
        assert_eq!(read("WITH x AS (SELECT * FROM a) SELECT * FROM x"), ["a"]);
        assert_eq!(
            read("SELECT * FROM (SELECT * FROM T) UNION SELECT * FROM b"),
            ["b", "t"]
        );
        assert_eq!(read("SELECT 1"), Vec::<String>::new());
        assert_eq!(read("alaivo * ao utilisateurs"), ["utilisateurs"]);
    }
}
