//! Refreshing a kept answer from a changed row's image instead of dropping it.
//!
//! A point query on one table — `SELECT <columns or *> FROM t WHERE <key> = <literal>`, with
//! only more `column = literal` terms beside, nothing else — answers the one row its key names,
//! projected. When the change feed reports that row changed and sends its image (its stored
//! columns after the commit, see `dirkdb_core::change_feed`), the answer after the change is
//! the same projection of the image: [`refreshed`] writes it, byte for byte as the server
//! would (the page through the same serializer), and the entry stays. Under a trickle of
//! updates by key, the next read of an updated row is then a hit instead of a miss.
//!
//! It does so only where it can be sure, and otherwise the entry is dropped as before:
//! * the kept answer is exactly one row on one page (an answer of no row stays "no row" only
//!   until a row with the key appears: it is dropped);
//! * every projected column is in the image and holds an INTEGER, TEXT or NULL (a REAL or a
//!   BLOB is written differently in answers to DirkDB's language and for its booleans);
//! * every column the WHERE pins still holds a pinned literal, compared exactly: a column's
//!   own collation or affinity could make other values equal too, so an inexact match drops
//!   the entry rather than keep a row the query might no longer return.
//!
//! The query side ([`RowRefresh`]) is read by `crate::statement_analysis`; the store
//! (`crate::result_store`) rewrites an entry when one changed row matched it and that row came
//! with an image.

use std::collections::HashMap;

use bytes::Bytes;
use dirkdb_core::change_feed::RowKey;
use dirkdb_core::frame::{PageFrame, RelationPage, PAGE_HEADER, RELATION_END};
use serde_json::Value;

use crate::table_keys::canonical_json;

/// How a point query's answer follows from its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRefresh {
    /// The table it reads (lower case).
    pub table: String,
    /// What it selects.
    pub projection: Projection,
    /// Its pinned columns (lower case) and the canonical values (`crate::table_keys`) each may
    /// hold for the row to be in the answer.
    pub pins: Vec<(String, Vec<String>)>,
}

/// The columns of a point query's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projection {
    /// `*`: the answer's own column names are the table's columns.
    Star,
    /// Plain column references (lower case), in order; aliases name them in the answer.
    Columns(Vec<String>),
}

/// A row image's columns (see `dirkdb_core::change_feed::RowImage`).
pub type Columns = serde_json::Map<String, Value>;

/// The answer `bytes` (one page of one row, then `RELATION_JSON_END` and the closing message)
/// rewritten for the row whose key object is `key` and image `image`; `None` when it cannot be
/// rewritten with certainty (see the module docs).
pub fn refreshed(
    bytes: &[u8],
    refresh: &RowRefresh,
    key: &RowKey,
    image: &Columns,
) -> Option<Bytes> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (header, rest) = text.split_once('\n')?;
    if header.strip_prefix(PAGE_HEADER)? != " 1/1" {
        return None;
    }
    let (json, tail) = rest.split_once('\n')?;
    if tail.strip_prefix(RELATION_END)?.as_bytes().first() != Some(&b'\n') {
        return None;
    }
    let mut page: RelationPage = serde_json::from_str(json).ok()?;
    if page.page != 1 || page.total_pages != 1 || page.rows.len() != 1 {
        return None;
    }
    let row = RowValues::of(key, image);
    if !refresh.pins.iter().all(|(column, allowed)| {
        row.get(column)
            .is_some_and(|v| allowed.contains(&canonical_json(v)))
    }) {
        return None;
    }
    let names: Vec<String> = match &refresh.projection {
        Projection::Star => page.columns.iter().map(|c| c.name.to_lowercase()).collect(),
        Projection::Columns(columns) if columns.len() == page.columns.len() => columns.clone(),
        Projection::Columns(_) => return None,
    };
    let values: Option<Vec<Value>> = names
        .iter()
        .map(|name| row.get(name).filter(|v| plain(v)).cloned())
        .collect();
    page.rows = vec![values?];
    let frame = PageFrame::from_page(&page).ok()?;
    let mut out = String::with_capacity(bytes.len() + 16);
    out.push_str(header);
    out.push('\n');
    out.push_str(frame.json());
    out.push('\n');
    out.push_str(tail);
    Some(Bytes::from(out))
}

/// A row's values by lower-case column name: its image, and its key object for `rowid`.
struct RowValues<'a> {
    values: HashMap<String, &'a Value>,
}

impl<'a> RowValues<'a> {
    fn of(key: &'a RowKey, image: &'a Columns) -> RowValues<'a> {
        let mut values: HashMap<String, &Value> =
            key.iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
        values.extend(image.iter().map(|(k, v)| (k.to_lowercase(), v)));
        RowValues { values }
    }

    fn get(&self, column: &str) -> Option<&'a Value> {
        self.values.get(column).copied()
    }
}

/// True for the values written alike in every answer: INTEGER, TEXT, NULL.
fn plain(value: &Value) -> bool {
    match value {
        Value::Null | Value::String(_) => true,
        Value::Number(n) => !n.is_f64(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use dirkdb_core::frame::{encode_frame, Column, Frame};
    use serde_json::json;

    /// The server's answer of `rows` under `columns`, as the wire carries it.
    fn answer(columns: &[&str], rows: Vec<Vec<Value>>) -> Bytes {
        let page = RelationPage {
            name: Some("bench".into()),
            page: 1,
            total_pages: 1,
            columns: columns
                .iter()
                .map(|c| Column {
                    name: c.to_string(),
                    origin: Some("bench".into()),
                })
                .collect(),
            rows,
        };
        let mut out = BytesMut::new();
        for frame in [
            Frame::Page(PageFrame::from_page(&page).unwrap()),
            Frame::RelationEnd,
            Frame::Message("OK".into()),
        ] {
            encode_frame(&frame, &mut out);
        }
        out.freeze()
    }

    fn object(v: Value) -> serde_json::Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn by_id(projection: Projection) -> RowRefresh {
        RowRefresh {
            table: "bench".into(),
            projection,
            pins: vec![("id".into(), vec!["n:5".into()])],
        }
    }

    #[test]
    fn an_answer_is_rewritten_as_the_server_writes_the_new_row() {
        let old = answer(&["id", "v"], vec![vec![json!(5), json!("old")]]);
        let key = object(json!({"rowid": 5}));
        let image = object(json!({"id": 5, "k": 7, "v": "new \"quoted\" é"}));
        let refresh = by_id(Projection::Columns(vec!["id".into(), "v".into()]));
        let new = refreshed(&old, &refresh, &key, &image).unwrap();
        assert_eq!(
            new,
            answer(
                &["id", "v"],
                vec![vec![json!(5), json!("new \"quoted\" é")]]
            )
        );
        // `*` takes the answer's own column names; an alias names a column by its source.
        let star = refreshed(&old, &by_id(Projection::Star), &key, &image).unwrap();
        assert_eq!(star, new);
        let aliased = answer(&["x"], vec![vec![json!(1)]]);
        let refresh = by_id(Projection::Columns(vec!["k".into()]));
        assert_eq!(
            refreshed(&aliased, &refresh, &key, &image).unwrap(),
            answer(&["x"], vec![vec![json!(7)]])
        );
        // The rowid comes from the key object; NULL stays NULL.
        let image = object(json!({"id": 5, "k": null, "v": "n"}));
        let refresh = by_id(Projection::Columns(vec!["rowid".into(), "k".into()]));
        let two = answer(&["rowid", "k"], vec![vec![json!(5), json!(1)]]);
        assert_eq!(
            refreshed(&two, &refresh, &key, &image).unwrap(),
            answer(&["rowid", "k"], vec![vec![json!(5), Value::Null]])
        );
    }

    #[test]
    fn whatever_is_uncertain_is_not_rewritten() {
        let key = object(json!({"rowid": 5}));
        let image = object(json!({"id": 5, "k": 7, "v": "x"}));
        let one = answer(&["id", "v"], vec![vec![json!(5), json!("old")]]);
        let refresh = by_id(Projection::Columns(vec!["id".into(), "v".into()]));
        // No row, or two rows.
        let none = answer(&["id", "v"], vec![]);
        assert_eq!(refreshed(&none, &refresh, &key, &image), None);
        let two = answer(&["id", "v"], vec![vec![json!(5), json!("a")]; 2]);
        assert_eq!(refreshed(&two, &refresh, &key, &image), None);
        // A projected column missing from the image (a generated column), a REAL, a BLOB.
        let refresh_g = by_id(Projection::Columns(vec!["id".into(), "g".into()]));
        assert_eq!(refreshed(&one, &refresh_g, &key, &image), None);
        let real = object(json!({"id": 5, "v": 1.5}));
        assert_eq!(refreshed(&one, &refresh, &key, &real), None);
        let blob = object(json!({"id": 5, "v": {"blob": "00"}}));
        assert_eq!(refreshed(&one, &refresh, &key, &blob), None);
        // A pinned column that no longer holds its literal exactly.
        let pinned = RowRefresh {
            pins: vec![
                ("id".into(), vec!["n:5".into()]),
                ("v".into(), vec!["s:old".into()]),
            ],
            ..refresh.clone()
        };
        assert_eq!(refreshed(&one, &pinned, &key, &image), None);
        let still = object(json!({"id": 5, "v": "old", "k": 1}));
        assert!(refreshed(&one, &pinned, &key, &still).is_some());
        // Not one page of a relation.
        let message = {
            let mut out = BytesMut::new();
            encode_frame(&Frame::Message("OK".into()), &mut out);
            out.freeze()
        };
        assert_eq!(refreshed(&message, &refresh, &key, &image), None);
        // A projection that does not match the answer's width.
        let wide = by_id(Projection::Columns(vec!["id".into()]));
        assert_eq!(refreshed(&one, &wide, &key, &image), None);
    }
}
