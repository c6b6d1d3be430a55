//! DirkDB's error texts for the errors SQLite reports while running a translated DirkDB
//! statement (DIRKDB-DIALECT.md §8.2). Errors DirkDB does not have keep SQLite's reason.

use super::ast::Statement;

/// DirkDB's text for SQLite's `text`, raised by `stmt` in database `db`.
pub fn from_sqlite(stmt: &Statement, db: &str, original: &str) -> String {
    let text = original.trim();
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
    if let Some(name) = text.strip_prefix("ambiguous column name: ") {
        return format!("Le champ '{name}' est ambigu. Il apparaît 2 fois dans la relation.");
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
    if text.contains("do not have the same number of result columns") {
        return "L(?) AND R(?)".to_string();
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
            from_sqlite(&select, "d", "no such table: zz"),
            "La table d.zz n'as pas été trouvé"
        );
        assert_eq!(
            from_sqlite(&select, "d", "no such column: N"),
            "Le champ 'N' n'existe pas dans la relation."
        );
        let insert = parse_statement("manampia ao t (zz) sanda (1)").unwrap();
        assert_eq!(
            from_sqlite(&insert, "d", "table t has no column named zz"),
            "Champ 'zz' non trouvé dans la relation"
        );
        assert_eq!(
            from_sqlite(
                &insert,
                "d",
                "table t has 2 columns but 1 values were supplied"
            ),
            "Cannot add  Individual of fields_size=1 in relation(t) with domains_size 2"
        );
        let update = parse_statement("havaozy t ova zz = 1").unwrap();
        assert_eq!(
            from_sqlite(&update, "d", "no such column: zz"),
            "Champ 'zz' non trouvé dans la relation t"
        );
        assert_eq!(
            from_sqlite(&update, "d", "disk I/O error"),
            "disk I/O error"
        );
    }
}
