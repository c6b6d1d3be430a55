//! The statements of each workload: templates with parameters (`:id`, `:n`, `:s`) that get
//! fresh random values before every execution.

use dirkdb_core::sql::split_script;
use fastrand::Rng;

use super::args::{BenchArgs, WorkloadKind};
use super::BenchError;

/// The point-select statement.
pub const POINT_SELECT: &str = "SELECT id, k, v, pad FROM bench WHERE id = :id";
/// The range-select statement.
pub const RANGE_SELECT: &str = "SELECT id, v FROM bench WHERE id BETWEEN :id AND :id+99";
/// The single-row insert.
pub const INSERT: &str = "INSERT INTO bench(k, v, pad) VALUES (:n, :s, :s)";
/// The single-row update.
pub const UPDATE: &str = "UPDATE bench SET k = :n, v = :s WHERE id = :id";

/// A parameter of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    /// Random row id, 1..=rows.
    Id,
    /// Random integer 0..=999.
    N,
    /// Random short string literal.
    S,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Param(Param),
}

/// A statement with its parameters located once, rendered many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The values of one rendering: each parameter is drawn at its first use.
struct Values<'a> {
    rng: &'a mut Rng,
    rows: u64,
    id: Option<u64>,
    n: Option<u64>,
    s: Option<String>,
}

impl Values<'_> {
    fn text(&mut self, param: Param) -> String {
        match param {
            Param::Id => {
                let rows = self.rows.max(1);
                let rng = &mut *self.rng;
                self.id.get_or_insert_with(|| rng.u64(1..=rows)).to_string()
            }
            Param::N => {
                let rng = &mut *self.rng;
                self.n.get_or_insert_with(|| rng.u64(0..1000)).to_string()
            }
            Param::S => {
                let rng = &mut *self.rng;
                let s = self.s.get_or_insert_with(|| {
                    let letters: String = (0..8).map(|_| rng.lowercase()).collect();
                    format!("'{letters}'")
                });
                s.clone()
            }
        }
    }
}

impl Template {
    /// Locates the parameters of `sql`, skipping string literals and quoted identifiers; an
    /// unknown `:name` is refused.
    pub fn parse(sql: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = sql.char_indices().peekable();
        let mut quote: Option<char> = None;
        while let Some((i, c)) = chars.next() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"' | '`') => quote = Some(c),
                (None, ':') => {
                    let name: String = sql[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        let param = param_named(&name)?;
                        parts.push(Part::Text(std::mem::take(&mut text)));
                        parts.push(Part::Param(param));
                        for _ in 0..name.len() {
                            chars.next();
                        }
                        continue;
                    }
                }
                (None, _) => {}
            }
            text.push(c);
        }
        parts.push(Part::Text(text));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        Ok(Template { parts })
    }

    /// The template's first 40 characters, its whitespace collapsed, for reports.
    fn name(&self) -> String {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Param(Param::Id) => text.push_str(":id"),
                Part::Param(Param::N) => text.push_str(":n"),
                Part::Param(Param::S) => text.push_str(":s"),
            }
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let joined = words.join(" ");
        match joined.char_indices().nth(40) {
            Some((cut, _)) => format!("{}…", &joined[..cut]),
            None => joined,
        }
    }

    /// The statement with fresh values (`rows` bounds `:id`).
    pub fn render(&self, rng: &mut Rng, rows: u64) -> String {
        let mut values = Values {
            rng,
            rows,
            id: None,
            n: None,
            s: None,
        };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Param(p) => out.push_str(&values.text(*p)),
            }
        }
        out
    }
}

fn param_named(name: &str) -> Result<Param, String> {
    match name {
        "id" => Ok(Param::Id),
        "n" => Ok(Param::N),
        "s" => Ok(Param::S),
        other => Err(format!(
            "unknown parameter :{other} (the parameters are :id, :n and :s)"
        )),
    }
}

/// What the clients run: templates and how to pick one per operation.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Which workload this is.
    pub kind: WorkloadKind,
    /// Share of point-selects in `mixed`.
    pub read_ratio: f64,
    /// Range of `:id`.
    pub rows: u64,
    templates: Vec<Template>,
}

impl Workload {
    /// The workload chosen on the command line (reads `--sql-file` for `custom`).
    pub fn from_args(args: &BenchArgs) -> Result<Workload, BenchError> {
        let templates = match args.workload {
            WorkloadKind::PointSelect => builtin(&[POINT_SELECT]),
            WorkloadKind::RangeSelect => builtin(&[RANGE_SELECT]),
            WorkloadKind::Insert => builtin(&[INSERT]),
            WorkloadKind::Update => builtin(&[UPDATE]),
            WorkloadKind::Mixed => builtin(&[POINT_SELECT, UPDATE]),
            WorkloadKind::Custom => custom_templates(args)?,
        };
        Ok(Workload {
            kind: args.workload,
            read_ratio: args.read_ratio,
            rows: args.rows(),
            templates,
        })
    }

    /// The statement of the next operation, with the index of its template (in
    /// [`Workload::statement_names`]).
    pub fn next_statement(&self, rng: &mut Rng) -> (usize, String) {
        let index = match self.kind {
            WorkloadKind::Mixed => usize::from(rng.f64() >= self.read_ratio),
            WorkloadKind::Custom => rng.usize(..self.templates.len().max(1)),
            _ => 0,
        };
        match self.templates.get(index) {
            Some(template) => (index, template.render(rng, self.rows)),
            None => (0, String::from("SELECT 1")),
        }
    }

    /// A short name per template, for the latencies reported per statement: `point-select` and
    /// `update` in `mixed`, the statement's first words in `custom`.
    pub fn statement_names(&self) -> Vec<String> {
        match self.kind {
            WorkloadKind::Mixed => vec!["point-select".into(), "update".into()],
            WorkloadKind::Custom => self.templates.iter().map(Template::name).collect(),
            kind => vec![kind.name().to_string()],
        }
    }

    /// A human description, e.g. `mixed (90% point-select, 10% update)`.
    pub fn describe(&self) -> String {
        match self.kind {
            WorkloadKind::Mixed => format!(
                "mixed ({:.0}% point-select, {:.0}% update)",
                self.read_ratio * 100.0,
                (1.0 - self.read_ratio) * 100.0
            ),
            WorkloadKind::Custom => format!("custom ({} statements)", self.templates.len()),
            kind => kind.name().to_string(),
        }
    }
}

fn builtin(sql: &[&str]) -> Vec<Template> {
    sql.iter().filter_map(|s| Template::parse(s).ok()).collect()
}

fn custom_templates(args: &BenchArgs) -> Result<Vec<Template>, BenchError> {
    let Some(path) = &args.sql_file else {
        return Err(BenchError::Failed(
            "the custom workload needs --sql-file FILE".into(),
        ));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Failed(format!("reading {}: {e}", path.display())))?;
    let statements = split_sql_file(&text);
    if statements.is_empty() {
        return Err(BenchError::Failed(format!(
            "{} holds no statement",
            path.display()
        )));
    }
    statements
        .iter()
        .map(|s| Template::parse(s))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Failed(format!("{}: {e}", path.display())))
}

/// The statements of a `--sql-file`: `;`-separated when the file has a `;` outside quotes and
/// comments, else one per non-blank, non-comment line.
pub fn split_sql_file(text: &str) -> Vec<String> {
    let script = split_script(text);
    if !script.statements.is_empty() {
        let mut statements = script.statements;
        if !script.remainder.is_empty() {
            statements.push(script.remainder);
        }
        return statements;
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_replaced_outside_quotes_with_one_value_per_statement() {
        let t = Template::parse("SELECT ':id', x FROM t WHERE a BETWEEN :id AND :id+99").unwrap();
        let mut rng = Rng::with_seed(7);
        let sql = t.render(&mut rng, 50);
        let rest = sql
            .strip_prefix("SELECT ':id', x FROM t WHERE a BETWEEN ")
            .unwrap();
        let (a, b) = rest.split_once(" AND ").unwrap();
        assert_eq!(b, format!("{a}+99"));
        let a: u64 = a.parse().unwrap();
        assert!((1..=50).contains(&a));
    }

    #[test]
    fn string_and_number_parameters() {
        let t = Template::parse("INSERT INTO t VALUES (:n, :s)").unwrap();
        let sql = t.render(&mut Rng::with_seed(1), 10);
        let inner = sql.strip_prefix("INSERT INTO t VALUES (").unwrap();
        let (n, s) = inner.trim_end_matches(')').split_once(", ").unwrap();
        assert!(n.parse::<u64>().unwrap() < 1000);
        assert_eq!(s.len(), 10);
        assert!(s.starts_with('\'') && s.ends_with('\''));
        assert!(Template::parse("SELECT :foo").is_err());
        assert_eq!(
            Template::parse("SELECT 'a:b', \"c:d\"")
                .unwrap()
                .render(&mut Rng::new(), 1),
            "SELECT 'a:b', \"c:d\""
        );
    }

    #[test]
    fn sql_files_split_on_semicolons_or_lines() {
        assert_eq!(
            split_sql_file("SELECT 1;\nSELECT\n 2; SELECT ';'\n"),
            ["SELECT 1", "SELECT\n 2", "SELECT ';'"]
        );
        assert_eq!(
            split_sql_file("-- comment\nSELECT 1\n\n  SELECT 2  \n"),
            ["SELECT 1", "SELECT 2"]
        );
    }
}
