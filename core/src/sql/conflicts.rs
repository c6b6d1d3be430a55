//! MULTI_PRIMARY's conflict statements (issue #16), in English and in DirkDB's Malagasy words:
//!
//! | English | DirkDB's words |
//! |---|---|
//! | `SHOW CONFLICTS` | `asehoy ny fifanoherana` (also `asehoy fifanoherana`) |
//! | `RESOLVE CONFLICT <id> KEEP LOCAL` | `vahao ny fifanoherana <id> tazony eto` |
//! | `RESOLVE CONFLICT <id> KEEP REMOTE` | `vahao ny fifanoherana <id> tazony lavitra` |
//!
//! *fifanoherana* is Malagasy for conflict, *vahao* "solve it", *tazony* "keep it", *eto* "here"
//! and *lavitra* "far". `<id>` is `<master>.<n>` as `SHOW CONFLICTS` lists it, or `<n>` alone on
//! the master that holds the conflict. Both the server and the proxy recognize them before any
//! translation ([`parse`]); the proxy gathers every master's conflicts into one answer, and
//! sends a resolution to the master that holds the conflict. [`show_sql`] renders a list as a
//! query, so it is paged and printed like any result.

use serde_json::Value;

/// A conflict statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictStatement {
    /// `SHOW CONFLICTS`
    Show,
    /// `RESOLVE CONFLICT <id> KEEP LOCAL|REMOTE`
    Resolve {
        /// The master named in the id (`None`: the one spoken to).
        master: Option<String>,
        /// The conflict's number on that master.
        id: u64,
        /// KEEP REMOTE (the other master's change) rather than LOCAL (the home's row).
        keep_remote: bool,
    },
}

/// Recognizes a conflict statement; `None` for every other statement, `Some(Err)` for a
/// malformed `RESOLVE CONFLICT`.
pub fn parse(sql: &str) -> Option<Result<ConflictStatement, String>> {
    let text = sql.trim().trim_end_matches(';').trim();
    let words: Vec<String> = text
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["show", "conflicts"] | ["asehoy", "fifanoherana"] | ["asehoy", "ny", "fifanoherana"] => {
            return Some(Ok(ConflictStatement::Show))
        }
        ["resolve", "conflict", ..] | ["vahao", "fifanoherana", ..] => {}
        ["vahao", "ny", "fifanoherana", ..] => {}
        _ => return None,
    }
    let head = if w.get(1) == Some(&"ny") { 3 } else { 2 };
    let rest: Vec<&str> = text.split_whitespace().skip(head).collect();
    Some(parse_resolution(&rest).ok_or_else(|| {
        format!(
            "expected `RESOLVE CONFLICT <id> KEEP LOCAL|REMOTE` (`vahao ny fifanoherana <id> \
             tazony eto|lavitra`), <id> as SHOW CONFLICTS lists it (`m1.3`), got `{text}`"
        )
    }))
}

fn parse_resolution(rest: &[&str]) -> Option<ConflictStatement> {
    let [id, keep, side] = rest else {
        return None;
    };
    if !(keep.eq_ignore_ascii_case("keep") || keep.eq_ignore_ascii_case("tazony")) {
        return None;
    }
    let keep_remote = match side.to_ascii_lowercase().as_str() {
        "local" | "eto" => false,
        "remote" | "lavitra" => true,
        _ => return None,
    };
    let (master, number) = match id.rsplit_once('.') {
        Some((m, n)) if !m.is_empty() => (Some(m.to_string()), n),
        Some(_) => return None,
        None => (None, *id),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ConflictStatement::Resolve {
        master,
        id: number.parse().ok()?,
        keep_remote,
    })
}

/// The columns of `SHOW CONFLICTS`, as `GET /replication/conflicts` names them.
const COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("master", "master"),
    ("database", "database"),
    ("table", "table"),
    ("rowKey", "row_key"),
    ("keyKind", "key_kind"),
    ("local", "local_version"),
    ("remote", "remote_version"),
    ("remoteOp", "remote_op"),
    ("strategy", "strategy"),
    ("state", "state"),
    ("resolution", "resolution"),
    ("detectedAtMs", "detected_at_ms"),
    ("home", "home"),
];

/// One conflict as a row of `SHOW CONFLICTS`: `id` as `<master>.<n>`, versions as
/// `<origin>:<seq>`.
fn row(c: &Value) -> Vec<Value> {
    if let Some(why) = c["unlisted"].as_str() {
        return unlisted_row(c, why);
    }
    let version = |origin: &str, seq: &str| {
        Value::from(format!(
            "{}:{}",
            c[origin].as_str().unwrap_or("?"),
            c[seq].as_u64().unwrap_or(0)
        ))
    };
    COLUMNS
        .iter()
        .map(|(field, _)| match *field {
            "id" => Value::from(format!(
                "{}.{}",
                c["master"].as_str().unwrap_or("?"),
                c["id"].as_u64().unwrap_or(0)
            )),
            "local" => version("localOrigin", "localSeq"),
            "remote" => version("remoteOrigin", "remoteSeq"),
            other => c[other].clone(),
        })
        .collect()
}

/// The row standing for a master whose conflicts could not be listed (`{"master": …,
/// "unlisted": why}`): its `master`, `why` as its `state`, everything else NULL.
fn unlisted_row(c: &Value, why: &str) -> Vec<Value> {
    COLUMNS
        .iter()
        .map(|(field, _)| match *field {
            "master" => c["master"].clone(),
            "state" => Value::from(why),
            _ => Value::Null,
        })
        .collect()
}

/// `SHOW CONFLICTS` over `conflicts` (the JSON of `GET /replication/conflicts`' `conflicts`),
/// open ones first, as a query.
pub fn show_sql(conflicts: &[Value]) -> String {
    let mut sorted: Vec<&Value> = conflicts.iter().collect();
    sorted.sort_by_key(|c| {
        (
            c["state"] != "open",
            c["detectedAtMs"].as_i64().unwrap_or(0),
        )
    });
    let rows: Vec<Vec<Value>> = sorted.into_iter().map(row).collect();
    let json = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
    let columns: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, name))| format!("json_extract(value, '$[{i}]') AS \"{name}\""))
        .collect();
    format!(
        "SELECT {} FROM json_each('{}') ORDER BY key",
        columns.join(", "),
        json.replace('\'', "''")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_not_listed_gets_a_row_saying_why() {
        let listed = [serde_json::json!({"master": "m1", "unlisted": "not listed: m1 is down"})];
        let r = row(&listed[0]);
        assert_eq!(r.len(), COLUMNS.len());
        assert_eq!(r[1], "m1");
        assert_eq!(r[10], "not listed: m1 is down");
        assert!(r
            .iter()
            .enumerate()
            .all(|(i, v)| i == 1 || i == 10 || v.is_null()));
        assert!(show_sql(&listed).contains("not listed: m1 is down"));
    }

    #[test]
    fn both_spellings_parse() {
        for show in [
            "SHOW CONFLICTS",
            "show conflicts;",
            "asehoy ny fifanoherana",
            "Asehoy fifanoherana",
        ] {
            assert_eq!(parse(show), Some(Ok(ConflictStatement::Show)), "{show}");
        }
        let resolve = |master: Option<&str>, id, keep_remote| {
            Some(Ok(ConflictStatement::Resolve {
                master: master.map(str::to_string),
                id,
                keep_remote,
            }))
        };
        assert_eq!(
            parse("RESOLVE CONFLICT m1.3 KEEP REMOTE;"),
            resolve(Some("m1"), 3, true)
        );
        assert_eq!(
            parse("resolve conflict 7 keep local"),
            resolve(None, 7, false)
        );
        assert_eq!(
            parse("vahao ny fifanoherana M2.4 tazony eto"),
            resolve(Some("M2"), 4, false)
        );
        assert_eq!(
            parse("vahao fifanoherana 4 tazony lavitra"),
            resolve(None, 4, true)
        );
        for bad in [
            "RESOLVE CONFLICT",
            "RESOLVE CONFLICT m1.x KEEP LOCAL",
            "RESOLVE CONFLICT .3 KEEP LOCAL",
            "RESOLVE CONFLICT 3 KEEP BOTH",
            "RESOLVE CONFLICT 3 LOCAL",
            "vahao ny fifanoherana 3 tazony",
        ] {
            assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(parse("SHOW TABLES"), None);
        assert_eq!(parse("SELECT 'RESOLVE CONFLICT'"), None);
    }

    #[test]
    fn a_list_is_a_query_with_open_conflicts_first() {
        let conflicts = vec![
            serde_json::json!({"id": 1, "master": "m1", "database": "testdb", "table": "t",
                "rowKey": "{\"rowid\":1}", "keyKind": "primary key", "localOrigin": "m1",
                "localSeq": 9, "remoteOrigin": "m2", "remoteSeq": 4, "remoteOp": "U",
                "strategy": "SOURCE_WINS", "state": "resolved", "resolution": "REMOTE",
                "detectedAtMs": 5}),
            serde_json::json!({"id": 2, "master": "m1", "database": "it's", "table": "t",
                "rowKey": "{\"rowid\":2}", "keyKind": "rowid", "localOrigin": "m1",
                "localSeq": 10, "remoteOrigin": "m2", "remoteSeq": 5, "remoteOp": "I",
                "strategy": "MANUAL", "state": "open", "resolution": null,
                "detectedAtMs": 6}),
        ];
        let sql = show_sql(&conflicts);
        assert!(sql.contains("AS \"row_key\""), "{sql}");
        assert!(sql.contains("'[[\"m1.2\",\"m1\",\"it''s\""), "{sql}");
        assert!(sql.contains("\"m1:10\",\"m2:5\""), "{sql}");
    }
}
