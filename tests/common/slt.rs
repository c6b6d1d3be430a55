//! A sqllogictest driver: runs `.test` files in SQLite's sqllogictest format (parsed and checked by
//! the `sqllogictest` crate) against any DirkDB SQL port — a server, the proxy or the cache — over
//! real TCP with DirkDB's own client, and counts passed, failed and skipped records.
//!
//! Values are written the way SQLite's reference runner writes them, from the column types the
//! record declares (`query ITR`): NULL as `NULL`, `I` as an integer, `R` with three decimals, `T`
//! as text with an empty text as `(empty)` and control characters as `@`. Results are compared
//! one value a line (SQLite's layout) unless a file says `control resultmode rowwise`, and past a
//! file's `hash-threshold` the crate compares `N values hashing to <md5>` as SQLite's runner does.
//! Records may name the labels `sqlite` and `dirkdb` in `onlyif`/`skipif`. Each file runs in a
//! database of its own, created for it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dirkdb_client::{Client, ClientError, Reply};
use dirkdb_core::sql::split_script;
use serde_json::Value;
use sqllogictest::{
    AsyncDB, Condition, Control, DBOutput, DefaultColumnType, QueryExpect, Record, ResultMode,
    Runner,
};

/// The labels `onlyif`/`skipif` records are matched against: DirkDB runs SQLite underneath.
pub(crate) const LABELS: [&str; 2] = ["sqlite", "dirkdb"];

/// Failures kept per file for the report (each one names its file and line).
const FAILURES_KEPT: usize = 20;

/// Records counted over one or more files.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

/// What running a directory (or one file) against one port gave.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub tally: Tally,
    pub files: usize,
    /// The first failures of each file, as the crate words them.
    pub failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Tally {
            passed,
            failed,
            skipped,
        } = self.tally;
        write!(
            f,
            "{passed} passed, {failed} failed, {skipped} skipped ({} files)",
            self.files
        )
    }
}

/// The `.test` files under `dir` (or `dir` itself when it is a file), sorted.
pub(crate) fn test_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "test") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Runs every file of `files` against `addr`, file `i` in a new database `<prefix>_<i>`.
/// `hash_threshold`: results of more values than this are compared by their MD5 until a file
/// says `hash-threshold` itself (0: never). SQLite's corpus was written with 8 and says nothing.
pub(crate) async fn run_files(
    addr: &str,
    prefix: &str,
    files: &[PathBuf],
    hash_threshold: usize,
) -> Report {
    let mut report = Report::default();
    for (i, path) in files.iter().enumerate() {
        let database = format!("{prefix}_{i}");
        let (tally, failures) = run_file(addr, &database, path, hash_threshold).await;
        report.tally.add(tally);
        report.files += 1;
        report.failures.extend(failures);
    }
    report
}

/// One connection of a file's run: a client whose current database is the file's.
pub(crate) struct Session {
    client: Client,
    /// The column types the record being run declares (empty for a statement).
    types: Arc<Mutex<Vec<DefaultColumnType>>>,
}

#[async_trait::async_trait]
impl AsyncDB for Session {
    type Error = ClientError;
    type ColumnType = DefaultColumnType;

    /// Runs each statement of `sql` in turn (SQLite's runner hands a record to `sqlite3_exec`,
    /// which runs them all) and answers the last one's result.
    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, ClientError> {
        let script = split_script(sql);
        let mut reply = Reply::Message(String::new());
        for statement in script.statements.iter().chain(Some(&script.remainder)) {
            if !statement.is_empty() {
                reply = self.client.execute(statement).await?;
            }
        }
        let rows = match reply {
            Reply::Message(_) => return Ok(DBOutput::StatementComplete(0)),
            Reply::Rows(rows) => rows,
        };
        let declared = self.types.lock().map(|t| t.clone()).unwrap_or_default();
        let types: Vec<_> = (0..rows.columns.len())
            .map(|i| declared.get(i).cloned().unwrap_or(DefaultColumnType::Text))
            .collect();
        let rows = rows
            .rows
            .iter()
            .map(|row| row.iter().zip(&types).map(|(v, t)| render(v, t)).collect())
            .collect();
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "dirkdb"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Runs one file in a new database `database`; its tally and its first failures.
async fn run_file(
    addr: &str,
    database: &str,
    path: &Path,
    hash_threshold: usize,
) -> (Tally, Vec<String>) {
    let failed = |why: String| {
        let tally = Tally {
            failed: 1,
            ..Tally::default()
        };
        (tally, vec![format!("{}: {why}", path.display())])
    };
    let records = match read_records(path) {
        Ok(records) => records,
        Err(why) => return failed(why),
    };
    if let Err(e) = create_database(addr, database).await {
        return failed(format!("cannot create database {database}: {e}"));
    }
    let types = Arc::new(Mutex::new(Vec::new()));
    let mut runner = Runner::new({
        let (addr, database, types) = (addr.to_string(), database.to_string(), types.clone());
        move || {
            let (addr, database, types) = (addr.clone(), database.clone(), types.clone());
            async move {
                let mut client = Client::connect(&addr).await?;
                client.execute(&format!("USE {database}")).await?;
                Ok(Session { client, types })
            }
        }
    });
    for label in LABELS {
        runner.add_label(label);
    }
    runner.with_hash_threshold(hash_threshold);
    let valuewise = Record::Control(Control::ResultMode(ResultMode::ValueWise));
    let _ = runner.run_async(valuewise).await;
    let outcome = run_records(&mut runner, &types, records).await;
    runner.shutdown_async().await;
    outcome
}

/// Reads and parses `path`. SQLite's files end some condition lines with a `# comment`
/// (`onlyif sqlite # empty RHS`), which the crate does not read: those comments are cut first.
fn read_records(path: &Path) -> Result<Vec<Record<DefaultColumnType>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let script: String = text
        .lines()
        .map(|line| {
            let condition = line.starts_with("onlyif ") || line.starts_with("skipif ");
            match line.split_once(" #") {
                Some((kept, _)) if condition => kept.trim_end(),
                _ => line,
            }
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    sqllogictest::parse_with_name(&script, path.display().to_string())
        .map_err(|e| format!("cannot parse: {e}"))
}

/// Creates `database` on `addr`, retrying for up to 20 s while the part finds its primary (a
/// proxy answers writes only after its first health round).
async fn create_database(addr: &str, database: &str) -> Result<(), ClientError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut client = Client::connect(addr).await?;
            client.execute(&format!("CREATE DATABASE {database}")).await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs `records` in order, counting statements and queries; a `halt` whose conditions hold
/// ends the file.
async fn run_records<M>(
    runner: &mut Runner<Session, M>,
    types: &Mutex<Vec<DefaultColumnType>>,
    records: Vec<Record<DefaultColumnType>>,
) -> (Tally, Vec<String>)
where
    M: sqllogictest::MakeConnection<Conn = Session>,
{
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    // The conditions read since the last statement, query or `halt`, and how many conditions
    // of `halt`s that did not halt came before them: the crate's parser hands those on to the
    // next statement, which they do not govern.
    let (mut pending, mut of_halts) = (Vec::new(), 0usize);
    for mut record in records {
        match &mut record {
            Record::Condition(condition) => {
                pending.push(condition.clone());
                continue;
            }
            Record::Halt { .. } if !pending.iter().any(skips) => break,
            Record::Halt { .. } => {
                of_halts += pending.len();
                pending.clear();
                continue;
            }
            Record::Statement { conditions, .. } | Record::Query { conditions, .. } => {
                conditions.drain(..of_halts.min(conditions.len()));
                (pending, of_halts) = (Vec::new(), 0);
                if conditions.iter().any(skips) {
                    tally.skipped += 1;
                    continue;
                }
            }
            Record::System { .. } => {
                tally.skipped += 1;
                continue;
            }
            _ => {}
        }
        let counted = matches!(record, Record::Statement { .. } | Record::Query { .. });
        declare_types(types, &record);
        match runner.run_async(record).await {
            Ok(_) if counted => tally.passed += 1,
            Ok(_) => {}
            Err(e) => {
                tally.failed += 1;
                if failures.len() < FAILURES_KEPT {
                    failures.push(e.display(false).to_string());
                }
            }
        }
    }
    (tally, failures)
}

/// Tells the session the column types `record` declares.
fn declare_types(types: &Mutex<Vec<DefaultColumnType>>, record: &Record<DefaultColumnType>) {
    let declared = match record {
        Record::Query {
            expected: QueryExpect::Results { types, .. },
            ..
        } => types.clone(),
        _ => Vec::new(),
    };
    if let Ok(mut types) = types.lock() {
        *types = declared;
    }
}

/// True when `condition` says a record is not for DirkDB.
fn skips(condition: &Condition) -> bool {
    match condition {
        Condition::OnlyIf { label } => !LABELS.contains(&label.as_str()),
        Condition::SkipIf { label } => LABELS.contains(&label.as_str()),
    }
}

/// One value as SQLite's reference runner writes a column of type `kind`.
fn render(value: &Value, kind: &DefaultColumnType) -> String {
    match (value, kind) {
        (Value::Null, _) => "NULL".to_string(),
        (_, DefaultColumnType::Integer) => integer(value).to_string(),
        (_, DefaultColumnType::FloatingPoint) => three_decimals(real(value)),
        _ => printable(&text(value)),
    }
}

/// SQLite's integer of a value: a REAL truncated, a text's leading number.
fn integer(value: &Value) -> i64 {
    match value {
        Value::Number(n) => n
            .as_i64()
            .unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64),
        Value::Bool(b) => i64::from(*b),
        _ => leading_number(&text(value)) as i64,
    }
}

/// SQLite's REAL of a value: a text's leading number.
fn real(value: &Value) -> f64 {
    match value {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        _ => leading_number(&text(value)),
    }
}

/// `%.3f` as SQLite's own printf writes it: at most 16 significant digits, zeros after them
/// (`-9223372036854775808.0` is `-9223372036854776000.000`).
fn three_decimals(v: f64) -> String {
    let fixed = format!("{v:.3}");
    let significant = fixed.bytes().filter(u8::is_ascii_digit).count();
    if significant <= 16 || !v.is_finite() {
        return fixed;
    }
    // Round to 16 significant digits, then write them in fixed notation padded with zeros.
    let rounded = format!("{:.15e}", v.abs());
    let (mantissa, exponent) = rounded.split_once('e').unwrap_or((&rounded, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let whole = usize::try_from(exponent.parse::<i32>().unwrap_or(0) + 1).unwrap_or(0);
    let mut text: String = digits
        .chars()
        .chain(std::iter::repeat('0'))
        .take(whole)
        .collect();
    if text.is_empty() {
        text.push('0');
    }
    let fraction: String = digits
        .chars()
        .skip(whole)
        .chain(std::iter::repeat('0'))
        .take(3)
        .collect();
    let sign = if v < 0.0 { "-" } else { "" };
    format!("{sign}{text}.{fraction}")
}

/// The longest prefix of `text` that reads as a number, else 0 (SQLite's text to number).
fn leading_number(text: &str) -> f64 {
    let text = text.trim_start();
    (1..=text.len())
        .rev()
        .filter(|&end| text.is_char_boundary(end))
        .find_map(|end| text[..end].parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The text of a value: a REAL as SQLite writes it (`1.0`, `0.5`), a BLOB's bytes.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Value::Object(o) => match o.get("blob").and_then(Value::as_str) {
            Some(hex) => String::from_utf8_lossy(&hex_bytes(hex)).into_owned(),
            None => value.to_string(),
        },
        other => other.to_string(),
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// `(empty)` for an empty text, and `@` for each byte outside printable ASCII, as SQLite's runner.
fn printable(text: &str) -> String {
    if text.is_empty() {
        return "(empty)".to_string();
    }
    text.bytes()
        .map(|b| {
            if (b' '..=b'~').contains(&b) {
                b as char
            } else {
                '@'
            }
        })
        .collect()
}
