//! A corpus of realistic SQLite and DirkDB statements checked against the proxy's routing
//! classifier, [`dirkdb_core::sql::classify::classify`].
//!
//! The corpus lives in `classify_corpus.txt`, one statement per line, as `CLASS<TAB>statement`:
//!
//! * `R` — [`StatementClass::Read`]: may run on a replica.
//! * `W` — [`StatementClass::Write`]: must run on the primary.
//! * `U:<db>` — [`StatementClass::Use`] of that database.
//! * `T:BEGIN`, `T:COMMIT`, `T:ROLLBACK`, `T:SAVEPOINT:<name>`, `T:RELEASE:<name>`,
//!   `T:ROLLBACK_TO:<name>` — [`StatementClass::Transaction`].
//!
//! Lines starting with `#` are comments and blank lines are ignored. Lines the classifier
//! currently gets wrong in the dangerous direction are kept, commented out, with a `# BUG:` prefix.
//!
//! The safety rule the corpus guards: a write must NEVER be classified `Read`, because the proxy
//! would send it to a replica. Anything the classifier cannot be sure about (unknown commands,
//! half statements, syntax `sqlparser` does not understand) must be `Write`. Connection-specific
//! functions (`changes()`, `last_insert_rowid()`, `total_changes()`) and every PRAGMA are `Write`
//! too, since their result or effect belongs to one connection. A read classified `Write` is merely
//! conservative; such lines are marked with a `# conservative:` comment above them.

use dirkdb_core::sql::classify::{classify, StatementClass, TransactionControl};

const CORPUS: &str = include_str!("classify_corpus.txt");

/// Words that only appear in a statement written with DirkDB's Malagasy keywords.
const MALAGASY_WORDS: &[&str] = &[
    "ampiasao",
    "alaivo",
    "ao",
    "ao@",
    "#ao",
    "#ao@",
    "rehefa",
    "#rehefa",
    "vondrona",
    "fetra",
    "antso",
    "tonona",
    "#ka",
    "#ankambana",
    "#analana",
    "#atifitra",
    "ary",
    "na",
    "dia",
    "tsy",
    "manampia",
    "sanda",
    "#sanda",
    "havaozy",
    "ova",
    "fafao",
    "manamboara",
    "ravao",
    "asehoy",
    "tahiry",
    "tabilao",
    "jery",
    "isa",
    "lahatsoratra",
    "daty",
];

struct Case<'a> {
    line: usize,
    expected: StatementClass,
    statement: &'a str,
}

fn parse_class(text: &str) -> Result<StatementClass, String> {
    use TransactionControl as T;
    let class = match text {
        "R" => StatementClass::Read,
        "W" => StatementClass::Write,
        "T:BEGIN" => StatementClass::Transaction(T::Begin),
        "T:COMMIT" => StatementClass::Transaction(T::Commit),
        "T:ROLLBACK" => StatementClass::Transaction(T::Rollback),
        _ => {
            if let Some(db) = text.strip_prefix("U:") {
                StatementClass::Use(db.to_string())
            } else if let Some(name) = text.strip_prefix("T:SAVEPOINT:") {
                StatementClass::Transaction(T::Savepoint(name.to_string()))
            } else if let Some(name) = text.strip_prefix("T:RELEASE:") {
                StatementClass::Transaction(T::Release(name.to_string()))
            } else if let Some(name) = text.strip_prefix("T:ROLLBACK_TO:") {
                StatementClass::Transaction(T::RollbackTo(name.to_string()))
            } else {
                return Err(format!("unknown class `{text}`"));
            }
        }
    };
    Ok(class)
}

fn cases() -> Vec<Case<'static>> {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in CORPUS.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((class, statement)) = raw.split_once('\t') else {
            errors.push(format!(
                "line {line}: no TAB between class and statement: {raw:?}"
            ));
            continue;
        };
        if statement.contains('\t') || statement.trim().is_empty() {
            errors.push(format!(
                "line {line}: empty statement or extra TAB: {raw:?}"
            ));
            continue;
        }
        if statement.trim_end().ends_with(';') {
            errors.push(format!("line {line}: statement ends with `;`: {raw:?}"));
            continue;
        }
        match parse_class(class.trim()) {
            Ok(expected) => cases.push(Case {
                line,
                expected,
                statement,
            }),
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "malformed corpus lines:\n{}",
        errors.join("\n")
    );
    cases
}

fn is_malagasy(statement: &str) -> bool {
    statement
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '#' | '@')))
        .any(|word| MALAGASY_WORDS.iter().any(|m| m.eq_ignore_ascii_case(word)))
}

#[test]
fn corpus_is_large_and_bilingual() {
    let cases = cases();
    let malagasy = cases.iter().filter(|c| is_malagasy(c.statement)).count();
    assert!(
        cases.len() >= 200,
        "only {} statements in the corpus",
        cases.len()
    );
    assert!(
        malagasy >= 40,
        "only {malagasy} Malagasy statements in the corpus"
    );
}

#[test]
fn every_statement_is_classified_as_expected() {
    let cases = cases();
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let actual = classify(case.statement);
            (actual != case.expected).then(|| {
                let danger = if actual == StatementClass::Read {
                    "  <-- SENT TO A REPLICA"
                } else {
                    ""
                };
                format!(
                    "line {}: expected {:?}, got {:?}{danger}\n    {}",
                    case.line, case.expected, actual, case.statement
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} statements misclassified:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
