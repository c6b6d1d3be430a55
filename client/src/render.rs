//! How the interactive client shows results: aligned tables, CSV or JSON.
//!
//! Tables are drawn like MySQL's and psql's, with numbers aligned right and widths measured in
//! terminal columns (so accented and wide characters line up), followed by the row count and the
//! time the statement took. In tables NULL is shown as `∅` (or the `--null` text), so that it
//! differs from the string `'NULL'`; column names are escaped like cells (`\n`, `\r`).
//!
//! JSON is one array of objects per result whose keys keep the select order and every column:
//! a repeated name gets a `_2`, `_3`… suffix (`SELECT 1 AS a, 2 AS a` → `{"a":1,"a_2":2}`).
//! CSV has one header field per column, repeated names included; NULL is an empty field.

use std::time::Duration;

use dirkdb_core::value::display;
use serde_json::Value;
use unicode_width::UnicodeWidthStr;

use crate::ResultSet;

/// The `--format` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned table with a row count and the elapsed time.
    #[default]
    Table,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON array of objects per result.
    Json,
}

/// How tables show NULL unless `--null` says otherwise.
pub const DEFAULT_NULL_TEXT: &str = "∅";

/// Renders a result in the chosen format (tables show NULL as [`DEFAULT_NULL_TEXT`]).
pub fn render_rows(rs: &ResultSet, format: OutputFormat, elapsed: Duration) -> String {
    render_rows_with_null(rs, format, elapsed, DEFAULT_NULL_TEXT)
}

/// Renders a result; tables show NULL as `null_text`.
pub fn render_rows_with_null(
    rs: &ResultSet,
    format: OutputFormat,
    elapsed: Duration,
    null_text: &str,
) -> String {
    match format {
        OutputFormat::Table => {
            let mut out = table(rs, null_text);
            out.push_str(&footer(rs.rows.len(), elapsed));
            out
        }
        OutputFormat::Csv => csv(rs),
        OutputFormat::Json => json(rs),
    }
}

/// `2 rows (1.3 ms)`.
pub fn footer(rows: usize, elapsed: Duration) -> String {
    let noun = if rows == 1 { "row" } else { "rows" };
    format!("{rows} {noun} ({})\n", elapsed_text(elapsed))
}

/// Milliseconds with one decimal under ten seconds, seconds above.
pub fn elapsed_text(elapsed: Duration) -> String {
    let ms = elapsed.as_secs_f64() * 1000.0;
    if ms < 10_000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn table(rs: &ResultSet, null_text: &str) -> String {
    let headers: Vec<String> = rs.columns.iter().map(|c| one_line(&c.name)).collect();
    let cells: Vec<Vec<String>> = rs
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Null => null_text.to_string(),
                    v => one_line(&display(v)),
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    for row in &cells {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.width());
            }
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            rs.rows
                .iter()
                .any(|r| matches!(r.get(i), Some(Value::Number(_))))
        })
        .collect();
    let rule = rule(&widths);
    let mut out = String::new();
    out.push_str(&rule);
    out.push_str(&line(&headers, &widths, &vec![false; widths.len()]));
    out.push_str(&rule);
    for row in &cells {
        out.push_str(&line(row, &widths, &numeric));
    }
    if !cells.is_empty() {
        out.push_str(&rule);
    }
    out
}

fn one_line(text: &str) -> String {
    text.replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', " ")
}

fn rule(widths: &[usize]) -> String {
    let mut s = String::from("+");
    for w in widths {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
    }
    s.push('\n');
    s
}

fn line(cells: &[String], widths: &[usize], right: &[bool]) -> String {
    let mut s = String::from("|");
    for (i, w) in widths.iter().enumerate() {
        let cell = cells.get(i).map(String::as_str).unwrap_or("");
        let pad = " ".repeat(w.saturating_sub(cell.width()));
        if right.get(i).copied().unwrap_or(false) {
            s.push_str(&format!(" {pad}{cell} |"));
        } else {
            s.push_str(&format!(" {cell}{pad} |"));
        }
    }
    s.push('\n');
    s
}

fn csv(rs: &ResultSet) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let _ = writer.write_record(rs.columns.iter().map(|c| c.name.as_str()));
    for row in &rs.rows {
        let _ = writer.write_record(row.iter().map(|v| match v {
            Value::Null => String::new(),
            other => display(other),
        }));
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn json(rs: &ResultSet) -> String {
    let keys: Vec<String> = unique_keys(rs.columns.iter().map(|c| c.name.as_str()))
        .iter()
        .map(|k| Value::String(k.clone()).to_string())
        .collect();
    let objects: Vec<String> = rs
        .rows
        .iter()
        .map(|row| {
            let fields: Vec<String> = keys
                .iter()
                .zip(row)
                .map(|(key, value)| format!("{key}:{value}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    format!("[{}]\n", objects.join(","))
}

/// Column names made unique in select order: the second `a` is `a_2`, the third `a_3` (skipping
/// names already taken).
fn unique_keys<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let names: Vec<&str> = names.collect();
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut keys = Vec::with_capacity(names.len());
    for name in &names {
        let mut key = name.to_string();
        let mut n = 1;
        while taken.contains(&key) {
            n += 1;
            key = format!("{name}_{n}");
        }
        taken.insert(key.clone());
        keys.push(key);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use dirkdb_core::frame::Column;
    use serde_json::json;

    fn rs() -> ResultSet {
        ResultSet {
            name: Some("t".into()),
            columns: vec![
                Column {
                    name: "id".into(),
                    origin: Some("t".into()),
                },
                Column {
                    name: "nom".into(),
                    origin: Some("t".into()),
                },
            ],
            rows: vec![
                vec![json!(1), json!("Élodie")],
                vec![json!(10), Value::Null],
            ],
            pages: 1,
        }
    }

    #[test]
    fn table_is_aligned_with_count_and_time() {
        let out = render_rows(&rs(), OutputFormat::Table, Duration::from_micros(1500));
        assert_eq!(
            out,
            "+----+--------+\n| id | nom    |\n+----+--------+\n\
             |  1 | Élodie |\n| 10 | ∅      |\n+----+--------+\n2 rows (1.5 ms)\n"
        );
    }

    #[test]
    fn null_differs_from_the_string_null_and_headers_are_escaped() {
        let mut r = rs();
        r.columns[1].name = "two\nlines".into();
        r.rows = vec![vec![json!(1), json!("NULL")], vec![json!(2), Value::Null]];
        let out = render_rows_with_null(&r, OutputFormat::Table, Duration::ZERO, "(null)");
        assert!(out.contains("| id | two\\nlines |"), "{out}");
        assert!(out.contains("|  1 | NULL       |"), "{out}");
        assert!(out.contains("|  2 | (null)     |"), "{out}");
    }

    #[test]
    fn json_keeps_select_order_and_every_column() {
        let name = |n: &str| Column {
            name: n.into(),
            origin: None,
        };
        let r = ResultSet {
            name: None,
            columns: vec![name("a"), name("a"), name("z"), name("b"), name("a_2")],
            rows: vec![vec![json!(1), json!(2), json!(3), json!(4), json!(5)]],
            pages: 1,
        };
        assert_eq!(
            render_rows(&r, OutputFormat::Json, Duration::ZERO),
            "[{\"a\":1,\"a_2\":2,\"z\":3,\"b\":4,\"a_2_2\":5}]\n"
        );
        assert_eq!(
            render_rows(&r, OutputFormat::Csv, Duration::ZERO),
            "a,a,z,b,a_2\n1,2,3,4,5\n"
        );
    }

    #[test]
    fn csv_and_json() {
        assert_eq!(
            render_rows(&rs(), OutputFormat::Csv, Duration::ZERO),
            "id,nom\n1,Élodie\n10,\n"
        );
        assert_eq!(
            render_rows(&rs(), OutputFormat::Json, Duration::ZERO),
            "[{\"id\":1,\"nom\":\"Élodie\"},{\"id\":10,\"nom\":null}]\n"
        );
    }

    #[test]
    fn empty_result_and_singular() {
        let mut r = rs();
        r.rows.clear();
        let out = render_rows(&r, OutputFormat::Table, Duration::ZERO);
        assert!(out.ends_with("+\n0 rows (0.0 ms)\n"), "{out}");
        assert_eq!(footer(1, Duration::from_secs(12)), "1 row (12.00 s)\n");
    }
}
