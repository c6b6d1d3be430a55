//! DirkDB's error texts for the errors SQLite reports while running a translated DirkDB
//! statement (DIRKDB-DIALECT.md §8.2). Errors DirkDB does not have keep SQLite's reason.

use super::ast::Statement;

/// The Java class DirkDB names in front of a column error under `#vondrona`.
const GROUP_FIELD_ERROR: &str = "sqlTsinjo.query.err.eval.FieldNotFoundErr: ";
/// Same, for an ambiguous column.
const GROUP_AMBIGUOUS_ERROR: &str = "sqlTsinjo.query.err.eval.AmbigousNameErr: ";

/// DirkDB's text for SQLite's `text`, raised by `stmt` in database `db`. `occurrences` counts
/// the columns of that name in the relation the statement resolves names in (for DirkDB's
/// ambiguity text), when it can.
pub fn from_sqlite(
    stmt: &Statement,
    db: &str,
    original: &str,
    occurrences: &dyn Fn(&str) -> Option<usize>,
) -> String {
    let text = original.trim();
    if let Some(name) = text.strip_prefix("no such column: ") {
        if super::translate::resolved_by_group(stmt, name) {
            return format!("{GROUP_FIELD_ERROR}Le champ '{name}' n'existe pas dans la relation.");
        }
    }
    if let Some(name) = text.strip_prefix("ambiguous column name: ") {
        let count = occurrences(name).filter(|n| *n >= 2).unwrap_or(2);
        let message =
            format!("Le champ '{name}' est ambigu. Il apparaît {count} fois dans la relation.");
        if super::translate::resolved_by_group(stmt, name) {
            return format!("{GROUP_AMBIGUOUS_ERROR}{message}");
        }
        return message;
    }
    if let Some(name) = text.strip_prefix("no such table: ") {
        let name = name.strip_prefix("main.").unwrap_or(name);
        return format!("La table {db}.{name} n'as pas été trouvé");
    }
    if let Some(name) = text.strip_prefix("no such column: ") {
        if let Statement::Update { table, sets, .. } = stmt {
            if sets.iter().any(|(c, _)| c.eq_ignore_ascii_case(name)) {
                return format!("Champ '{name}' non trouvé dans la relation {table}");
            }
        }
        return format!("Le champ '{name}' n'existe pas dans la relation.");
    }
    if let Some(rest) = text.strip_prefix("table ") {
        if let Some((_, column)) = rest.split_once(" has no column named ") {
            return format!("Champ '{column}' non trouvé dans la relation");
        }
        if let Some((table, counts)) = rest.split_once(" has ") {
            // "table t has 2 columns but 1 values were supplied"
            let numbers: Vec<&str> = counts
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .collect();
            if let [columns, values] = numbers.as_slice() {
                return format!(
                    "Cannot add  Individual of fields_size={values} in relation({table}) with domains_size {columns}"
                );
            }
        }
        if let Some(name) = rest.strip_suffix(" already exists") {
            return format!("Ny tabilao : {name} dia efa misy");
        }
    }
    if let Some(rest) = text.strip_prefix("view ") {
        if let Some(name) = rest.strip_suffix(" already exists") {
            return format!("Ny jery : {name} dia efa misy");
        }
    }
    if let Some(name) = text.strip_prefix("no such view: ") {
        let name = name.strip_prefix("main.").unwrap_or(name);
        return format!("Ny jery {db}.{name} dia tsy hita");
    }
    if text.contains("UNIQUE constraint failed: dirkdb_domains.name") {
        if let Statement::CreateDomain { name, .. } = stmt {
            return format!("Ny efitra : {name} dia efa misys");
        }
    }
    original.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::dirkdb::parser::parse_statement;

    #[test]
    fn sqlite_errors_in_dirkdb_words() {
        let select = parse_statement("alaivo n #ao@ t").unwrap();
        assert_eq!(
            from_sqlite(&select, "d", "no such table: zz", &|_| None),
            "La table d.zz n'as pas été trouvé"
        );
        assert_eq!(
            from_sqlite(&select, "d", "no such column: N", &|_| None),
            "Le champ 'N' n'existe pas dans la relation."
        );
        let insert = parse_statement("manampia ao t (zz) sanda (1)").unwrap();
        assert_eq!(
            from_sqlite(&insert, "d", "table t has no column named zz", &|_| None),
            "Champ 'zz' non trouvé dans la relation"
        );
        assert_eq!(
            from_sqlite(
                &insert,
                "d",
                "table t has 2 columns but 1 values were supplied",
                &|_| None
            ),
            "Cannot add  Individual of fields_size=1 in relation(t) with domains_size 2"
        );
        let update = parse_statement("havaozy t ova zz = 1").unwrap();
        assert_eq!(
            from_sqlite(&update, "d", "no such column: zz", &|_| None),
            "Champ 'zz' non trouvé dans la relation t"
        );
        assert_eq!(
            from_sqlite(&update, "d", "disk I/O error", &|_| None),
            "disk I/O error"
        );
    }

    #[test]
    fn ambiguity_counts_and_group_prefixes() {
        let join = parse_statement("alaivo id #ao@ a #tonona b #tonona c").unwrap();
        assert_eq!(
            from_sqlite(&join, "d", "ambiguous column name: id", &|n| (n == "id")
                .then_some(3)),
            "Le champ 'id' est ambigu. Il apparaît 3 fois dans la relation."
        );
        let group = parse_statement("alaivo zz, count(v) #ao@ g #vondrona (zz)").unwrap();
        assert_eq!(
            from_sqlite(&group, "d", "no such column: zz", &|_| None),
            "sqlTsinjo.query.err.eval.FieldNotFoundErr: Le champ 'zz' n'existe pas dans la relation."
        );
        assert_eq!(
            from_sqlite(&group, "d", "no such column: v", &|_| None),
            "sqlTsinjo.query.err.eval.FieldNotFoundErr: Le champ 'v' n'existe pas dans la relation."
        );
    }
}
