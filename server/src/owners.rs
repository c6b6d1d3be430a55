//! `SHOW OWNERS` (`asehoy ny tompo`), `GET /replication/owners` and the owner metrics: every
//! database of this master and every table, view and DirkDB domain in them, with its owner in
//! this master's MULTI_PRIMARY view (see `ownership.rs`).

use dirkdb_core::rendezvous::{ObjectKind, ObjectRef};
use serde::Serialize;

/// One object of this master's catalog and its owner (`SHOW OWNERS`, `GET
/// /replication/owners`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OwnedObject {
    /// DATABASE, TABLE, VIEW or DOMAIN.
    pub kind: &'static str,
    /// Its database.
    pub database: String,
    /// Its name (the database's own name for a DATABASE).
    pub name: String,
    /// Its owner among the masters up (`None`: no master up).
    pub owner: Option<String>,
}

/// Every database of `databases` and every table, view and DirkDB domain in them, with its
/// owner in this master's view.
pub(crate) fn owned_objects(
    state: &crate::storage::Storage,
    databases: &[String],
) -> crate::error::Result<Vec<OwnedObject>> {
    let ownership = &state.settings.ownership;
    let entry = |kind: ObjectKind, db: &str, name: &str| {
        let object = if kind == ObjectKind::Database {
            ObjectRef::database(db)
        } else {
            ObjectRef::object(db, kind, name)
        };
        OwnedObject {
            kind: kind.as_str(),
            database: db.to_string(),
            name: name.to_string(),
            owner: ownership.owner_of(&object),
        }
    };
    let mut out = Vec::new();
    for db in databases {
        out.push(entry(ObjectKind::Database, db, db));
        let database = match state.catalog.get(db) {
            Ok(database) => database,
            Err(_) => continue, // dropped meanwhile
        };
        let conn = database.lease()?;
        let objects = schema_objects(&conn)?;
        database.give_back(conn);
        for (kind, name) in objects {
            out.push(entry(kind, db, &name));
        }
    }
    Ok(out)
}

/// The tables, views and domains of one database file, DirkDB's bookkeeping left out.
fn schema_objects(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(ObjectKind, String)>> {
    use rusqlite::OptionalExtension;
    let mut stmt = conn.prepare(
        "SELECT type, name FROM sqlite_schema WHERE type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_dirk%' ESCAPE '\\' \
         AND name <> 'dirkdb_domains' ORDER BY type, name",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, name) = row?;
        let kind = if kind == "view" {
            ObjectKind::View
        } else {
            ObjectKind::Table
        };
        out.push((kind, name));
    }
    let domains = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'dirkdb_domains'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if domains {
        let mut stmt = conn.prepare("SELECT name FROM dirkdb_domains ORDER BY rowid")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for name in names {
            out.push((ObjectKind::Domain, name?));
        }
    }
    Ok(out)
}

/// `SHOW OWNERS` (`asehoy ny tompo`) as a query over `objects`, so it is paged like any result.
pub(crate) fn show_owners_sql(objects: &[OwnedObject]) -> String {
    let rows: Vec<[String; 4]> = objects
        .iter()
        .map(|o| {
            [
                o.kind.to_string(),
                o.database.clone(),
                o.name.clone(),
                o.owner.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let json = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
    format!(
        "SELECT json_extract(value, '$[0]') AS kind, json_extract(value, '$[1]') AS \"database\", \
         json_extract(value, '$[2]') AS name, json_extract(value, '$[3]') AS owner \
         FROM json_each('{}') ORDER BY key",
        json.replace('\'', "''")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_owners_is_a_query_over_the_objects() {
        let objects = vec![
            OwnedObject {
                kind: "DATABASE",
                database: "testdb".into(),
                name: "testdb".into(),
                owner: Some("m1".into()),
            },
            OwnedObject {
                kind: "TABLE",
                database: "testdb".into(),
                name: "it's".into(),
                owner: None,
            },
        ];
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut stmt = conn.prepare(&show_owners_sql(&objects)).unwrap();
        let rows: Vec<(String, String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows[0],
            (
                "DATABASE".into(),
                "testdb".into(),
                "testdb".into(),
                "m1".into()
            )
        );
        assert_eq!(rows[1].2, "it's");
        assert_eq!(rows[1].3, "");
    }
}
