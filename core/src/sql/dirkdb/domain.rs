//! DirkDB's types ("domains", DIRKDB-DIALECT.md §6) once resolved: the SQL CHECK expression that
//! enforces one in the SQLite schema, its canonical DirkDB text (how a named domain is stored),
//! Java's display of it in error texts, and Java's display of numbers.

use super::ast::{Member, TypeAtom, TypeExpr};

/// A resolved type: a union of atoms, none of them a name.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain(pub Vec<TypeAtom>);

/// Resolves the named parts of `ty` with `lookup` (a domain's stored canonical text);
/// `Err(name)` names the first unknown domain.
pub fn resolve(ty: &TypeExpr, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Domain, String> {
    let mut atoms = Vec::new();
    for atom in &ty.0 {
        match atom {
            TypeAtom::Named(name) => {
                let text = lookup(name).ok_or_else(|| name.clone())?;
                let stored = parse_canonical(&text).ok_or_else(|| name.clone())?;
                atoms.extend(stored.0);
            }
            other => atoms.push(other.clone()),
        }
    }
    Ok(Domain(atoms))
}

/// Reads a domain back from its canonical text.
pub fn parse_canonical(text: &str) -> Option<Domain> {
    let src = format!("manamboara efitra _ ({text})");
    match super::parser::parse_statement(&src).ok()? {
        super::ast::Statement::CreateDomain { ty, .. } => {
            if ty.0.iter().any(|a| matches!(a, TypeAtom::Named(_))) {
                return None;
            }
            Some(Domain(ty.0))
        }
        _ => None,
    }
}

impl Domain {
    /// DirkDB's own syntax for this type, parseable by [`parse_canonical`].
    pub fn canonical(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(canonical_atom).collect();
        parts.join(":")
    }

    /// The domain as DirkDB stores it (a table's column or a named domain, written as JSON by
    /// Jackson): each `TANISA`'s members in the order its `HashSet` iterates them, which is the
    /// order they are read back in (`add` one by one). Applied once per store, so a table's type
    /// from a named domain has gone through the domain's store and the table's.
    pub fn stored(&self) -> Domain {
        Domain(
            self.0
                .iter()
                .map(|a| match a {
                    TypeAtom::Enum(members) => TypeAtom::Enum(java_set(members)),
                    other => other.clone(),
                })
                .collect(),
        )
    }

    /// Java's `Domain.toString()`: `Domain{NUMBER(min:0.0,max:10.0)}`.
    pub fn display(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(display_atom).collect();
        format!("Domain{{{}}}", parts.join(", "))
    }

    /// An SQL expression true when `column` (already quoted) holds a value of this type.
    /// Null is always accepted.
    pub fn check_sql(&self, column: &str) -> String {
        let parts: Vec<String> = self.0.iter().map(|a| atom_sql(a, column)).collect();
        format!("{column} IS NULL OR {}", parts.join(" OR "))
    }
}

fn opt(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn canonical_atom(atom: &TypeAtom) -> String {
    match atom {
        TypeAtom::Number(min, max) => format!(
            "ISA({},{})",
            opt(min.map(java_double)),
            opt(max.map(java_double))
        ),
        TypeAtom::Text(min, max) => format!("LAHATSORATRA({},{})", opt(*min), opt(*max)),
        TypeAtom::Date => "DATY".into(),
        TypeAtom::Enum(members) => {
            let m: Vec<String> = members
                .iter()
                .map(|m| match m {
                    Member::Number(n) => java_double(*n),
                    Member::Str(s) => sql_string(s),
                })
                .collect();
            format!("TANISA({})", m.join(","))
        }
        TypeAtom::Named(n) => n.clone(),
    }
}

fn display_atom(atom: &TypeAtom) -> String {
    match atom {
        TypeAtom::Number(min, max) => format!(
            "NUMBER(min:{},max:{})",
            opt(min.map(java_double)),
            opt(max.map(java_double))
        ),
        TypeAtom::Text(min, max) => format!("VARCHAR( {},{} )", opt(*min), opt(*max)),
        TypeAtom::Date => "DATE".into(),
        TypeAtom::Enum(members) => {
            // DomainEnum.toString: the HashSet's iteration order (the set DirkDB reads back from
            // the members as stored), ten members at most, and ", ..." once ten are shown (even
            // when there are exactly ten).
            let set = java_set(members);
            let shown: Vec<String> = set
                .iter()
                .take(10)
                .map(|m| match m {
                    Member::Number(n) => java_double(*n),
                    Member::Str(s) => s.clone(),
                })
                .collect();
            let more = if set.len() >= 10 { ", ..." } else { "" };
            format!(
                "DomainEnum{{allowedValues=[{}{more}], size={}}}",
                shown.join(", "),
                set.len()
            )
        }
        TypeAtom::Named(n) => n.clone(),
    }
}

/// A `HashSet<Object>` built by adding `members` in this order (Java's `equals`: a duplicate is
/// dropped), as it iterates.
fn java_set(members: &[Member]) -> Vec<Member> {
    use super::java_hash::{iteration_order, JavaKey};
    use super::values::{java_double_hash, java_string_hash};
    let mut distinct: Vec<&Member> = Vec::with_capacity(members.len());
    for m in members {
        let same = |d: &&Member| match (d, m) {
            (Member::Number(a), Member::Number(b)) => java_double_bits(*a) == java_double_bits(*b),
            (Member::Str(a), Member::Str(b)) => a == b,
            _ => false,
        };
        if !distinct.iter().any(same) {
            distinct.push(m);
        }
    }
    let keys: Vec<(i32, JavaKey<'_>)> = distinct
        .iter()
        .map(|m| match m {
            Member::Number(n) => (java_double_hash(*n), JavaKey::Double(*n)),
            Member::Str(s) => (java_string_hash(s), JavaKey::Str(s)),
        })
        .collect();
    iteration_order(&keys)
        .into_iter()
        .map(|i| distinct[i].clone())
        .collect()
}

/// `Double.doubleToLongBits` (what `Double.equals` compares): every NaN is one NaN.
fn java_double_bits(d: f64) -> u64 {
    if d.is_nan() {
        0x7ff8_0000_0000_0000
    } else {
        d.to_bits()
    }
}

fn atom_sql(atom: &TypeAtom, c: &str) -> String {
    const NUMERIC: &str = "typeof({c}) IN ('integer','real')";
    let numeric = NUMERIC.replace("{c}", c);
    match atom {
        TypeAtom::Number(min, max) => {
            let mut s = format!("({numeric}");
            if let Some(min) = min {
                s.push_str(&format!(" AND {c} >= {}", sql_real(*min)));
            }
            if let Some(max) = max {
                s.push_str(&format!(" AND {c} <= {}", sql_real(*max)));
            }
            s.push(')');
            s
        }
        TypeAtom::Text(min, max) => {
            let mut s = format!("(typeof({c}) = 'text'");
            if let Some(min) = min {
                s.push_str(&format!(" AND length({c}) >= {min}"));
            }
            if let Some(max) = max {
                s.push_str(&format!(" AND length({c}) <= {max}"));
            }
            s.push(')');
            s
        }
        TypeAtom::Date => "0".into(),
        TypeAtom::Enum(members) => {
            let strings: Vec<String> = members
                .iter()
                .filter_map(|m| match m {
                    Member::Str(s) => Some(sql_string(s)),
                    Member::Number(_) => None,
                })
                .collect();
            let numbers: Vec<String> = members
                .iter()
                .filter_map(|m| match m {
                    Member::Number(n) => Some(sql_real(*n)),
                    Member::Str(_) => None,
                })
                .collect();
            let mut parts = Vec::new();
            if !strings.is_empty() {
                parts.push(format!(
                    "(typeof({c}) = 'text' AND {c} IN ({}))",
                    strings.join(",")
                ));
            }
            if !numbers.is_empty() {
                parts.push(format!("({numeric} AND {c} IN ({}))", numbers.join(",")));
            }
            if parts.is_empty() {
                "0".into()
            } else {
                format!("({})", parts.join(" OR "))
            }
        }
        TypeAtom::Named(_) => "0".into(),
    }
}

/// An SQL string literal.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An SQL REAL literal for `v`.
pub fn sql_real(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:?}");
        if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
            s
        } else {
            format!("{s}.0")
        }
    } else if v > 0.0 {
        "9e999".into()
    } else {
        "-9e999".into()
    }
}

/// Java's `Double.toString`: `5.0`, `2.5`, `1.2345678E7`, `1.0E-4`.
pub fn java_double(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let abs = v.abs();
    if v == 0.0 || (1e-3..1e7).contains(&abs) {
        let s = format!("{v:?}");
        return if s.contains('.') { s } else { format!("{s}.0") };
    }
    // Shortest digits in scientific form, written the Java way.
    let s = format!("{v:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.to_string()
    } else {
        format!("{mantissa}.0")
    };
    format!("{mantissa}E{exp}")
}

/// Java's debug display of a stored value in a domain error: strings in double quotes.
pub fn debug_value(value: &DomainValue<'_>) -> String {
    match value {
        DomainValue::Null => "null".into(),
        DomainValue::Number(n) => java_double(*n),
        DomainValue::Text(s) => format!("\"{s}\""),
        DomainValue::Bool(b) => b.to_string(),
        DomainValue::Other => "?".into(),
    }
}

/// A value as the domain check sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainValue<'a> {
    /// null
    Null,
    /// Any number.
    Number(f64),
    /// A string.
    Text(&'a str),
    /// DirkDB's boolean value (a select item such as `1 = 1`), which no domain accepts.
    Bool(bool),
    /// Anything else (a BLOB).
    Other,
}

/// DirkDB's text when `value` does not fit the column at `index` (0-based, table order).
pub fn violation_text(domain_display: &str, index: usize, value: &DomainValue<'_>) -> String {
    format!(
        "can not convert into domain d : {domain_display} at values ind={index} {{ {} }} ",
        debug_value(value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_doubles() {
        assert_eq!(java_double(5.0), "5.0");
        assert_eq!(java_double(2.5), "2.5");
        assert_eq!(java_double(-0.0), "-0.0");
        assert_eq!(java_double(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(java_double(12345678.0), "1.2345678E7");
        assert_eq!(java_double(0.0001), "1.0E-4");
    }

    #[test]
    fn displays_and_canonical_text_round_trip() {
        let d = Domain(vec![
            TypeAtom::Text(Some(1), Some(2)),
            TypeAtom::Number(Some(0.0), Some(5.0)),
        ]);
        assert_eq!(
            d.display(),
            "Domain{VARCHAR( 1,2 ), NUMBER(min:0.0,max:5.0)}"
        );
        assert_eq!(d.canonical(), "LAHATSORATRA(1,2):ISA(0.0,5.0)");
        assert_eq!(parse_canonical(&d.canonical()), Some(d));
        let e = Domain(vec![TypeAtom::Enum(vec![
            Member::Str("a".into()),
            Member::Str("it's".into()),
            Member::Number(3.0),
        ])]);
        assert_eq!(parse_canonical(&e.canonical()), Some(e.clone()));
        assert_eq!(
            e.display(),
            "Domain{DomainEnum{allowedValues=[a, it's, 3.0], size=3}}"
        );
        // Java's HashSet order (DirkDB's examen1 script's niveau_domain).
        let niveau = Domain(vec![TypeAtom::Enum(
            ["L3", "M1", "L2"]
                .iter()
                .map(|m| Member::Str(m.to_string()))
                .collect(),
        )]);
        assert_eq!(
            niveau.display(),
            "Domain{DomainEnum{allowedValues=[M1, L2, L3], size=3}}"
        );
        let ten = Domain(vec![TypeAtom::Enum(
            (0..10).map(|i| Member::Number(f64::from(i))).collect(),
        )]);
        assert!(
            ten.display().ends_with(", ...], size=10}}"),
            "{}",
            ten.display()
        );
        assert_eq!(
            Domain(vec![TypeAtom::Number(None, None)]).display(),
            "Domain{NUMBER(min:null,max:null)}"
        );
    }

    #[test]
    fn violation_texts() {
        assert_eq!(
            violation_text(
                "Domain{NUMBER(min:0.0,max:10.0)}",
                0,
                &DomainValue::Number(11.0)
            ),
            "can not convert into domain d : Domain{NUMBER(min:0.0,max:10.0)} at values ind=0 { 11.0 } "
        );
        assert_eq!(
            violation_text("Domain{DATE}", 2, &DomainValue::Text("x")),
            "can not convert into domain d : Domain{DATE} at values ind=2 { \"x\" } "
        );
    }
}
