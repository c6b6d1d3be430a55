//! Unit tests of DirkDB's parser, router and translator.

use super::ast::*;
use super::*;

fn parse(sql: &str) -> Result<Statement, DirkError> {
    parser::parse_statement(sql)
}

fn sql(s: &str) -> String {
    let stmt = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    plan(&stmt, &NoSchema).unwrap().steps.join("; ")
}

fn relation(s: &str) -> Naming {
    match plan(&parse(s).unwrap(), &NoSchema).unwrap().answer {
        Answer::Relation(n) => n,
        other => panic!("{other:?}"),
    }
}

#[test]
fn whitespace_around_hash_and_at() {
    assert_eq!(
        parse("alaivo n # ao @ t # rehefa n > 3").unwrap(),
        parse("alaivo n #ao@ t #rehefa n > 3").unwrap()
    );
    assert_eq!(
        parse("ALAIVO n AO@t").unwrap(),
        parse("alaivo n ao t").unwrap()
    );
}

#[test]
fn select_translation_keeps_dirkdb_meaning() {
    assert_eq!(sql("alaivo 1 antso x"), "SELECT 1.0 AS `x`");
    assert_eq!(
        sql("alaivo s #ao@ t #rehefa n = 1"),
        "SELECT `s` FROM (SELECT DISTINCT * FROM `t`) AS `t` WHERE dirkdb_eq(`n`, 1.0)"
    );
    assert_eq!(
        sql("alaivo 1 = 1 na 2 = 2 ary 1 = 2 antso x"),
        "SELECT dirkdb_bool((CASE WHEN (CASE WHEN dirkdb_eq(1.0, 1.0) THEN 1 ELSE dirkdb_eq(2.0, 2.0) END) THEN dirkdb_eq(1.0, 2.0) ELSE 0 END)) AS `x`"
    );
    assert_eq!(
        sql("alaivo * #ao@ t #fetra 2"),
        "SELECT * FROM `t` LIMIT -1 OFFSET 2"
    );
    assert_eq!(
        sql("alaivo * #ao@ t #fetra 1 3"),
        "SELECT * FROM `t` LIMIT 2 OFFSET 1"
    );
    assert_eq!(
        sql("alaivo * #ao@ t fetra 3 1"),
        "SELECT * FROM `t` LIMIT 0 OFFSET 3"
    );
    assert_eq!(
        sql("alaivo n #ao@ t #rehefa !(n > 2)"),
        "SELECT `n` FROM (SELECT DISTINCT * FROM `t`) AS `t` WHERE (NOT dirkdb_gt(`n`, 2.0))"
    );
    assert_eq!(
        sql("alaivo 7 / 2 antso x"),
        "SELECT dirkdb_div(7.0, 2.0) AS `x`"
    );
    assert_eq!(
        sql("alaivo n + 1 dia null antso x #ao@ t"),
        "SELECT dirkdb_add(`n`, (1.0 IS NULL)) AS `x` FROM `t`"
    );
}

#[test]
fn every_join_kind() {
    let cases = [
        ("#tonona", " CROSS JOIN `jb`"),
        ("#tonona:@", " CROSS JOIN `jb`"),
        ("#tonona:anatiny@", " CROSS JOIN `jb`"),
        ("tonona", " CROSS JOIN `jb`"),
    ];
    for (word, join) in cases {
        assert_eq!(
            sql(&format!("alaivo a, b #ao@ ja {word} jb")),
            format!("SELECT `a`, `b` FROM `ja`{join}"),
            "{word}"
        );
    }
    for (word, kind) in [
        ("#tonona:avia@", "LEFT"),
        ("#tonona:ankavia@", "LEFT"),
        ("# tonona : avanana @", "RIGHT"),
        ("#tonona:ankavanana", "RIGHT"),
        ("#tonona:feno@", "FULL"),
    ] {
        assert_eq!(
            sql(&format!("alaivo ja.k, a, b #ao@ ja {word} jb #ka ja.k = jb.k")),
            format!(
                "SELECT `ja`.`k`, `a`, `b` FROM (SELECT DISTINCT * FROM `ja`) AS `ja` {kind} JOIN (SELECT DISTINCT * FROM `jb`) AS `jb` ON dirkdb_eq(`ja`.`k`, `jb`.`k`)"
            ),
            "{word}"
        );
    }
    assert_eq!(
        sql("alaivo * #ao@ ja #tonona:natoraly@ jb"),
        "SELECT * FROM `ja` NATURAL JOIN `jb`"
    );
    assert_eq!(
        relation("alaivo ja.k, a, b #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k"),
        Naming {
            relation: "ja_left_join_jb_projection".into(),
            columns: Some(vec![
                ("k".into(), Some("ja".into())),
                ("a".into(), None),
                ("b".into(), None)
            ]),
        }
    );
    assert_eq!(
        relation("alaivo a, b #ao@ ja #tonona jb").relation,
        "ja_produit_jb_projection"
    );
}

#[test]
fn set_operators_in_every_spelling() {
    for (op, sqlop) in [
        ("#ankambana@", "UNION"),
        ("#ankambana", "UNION"),
        ("ankambana", "UNION"),
        ("+", "UNION"),
        ("#+@", "UNION"),
        ("#analana@", "EXCEPT"),
        ("-", "EXCEPT"),
        ("#-@", "EXCEPT"),
        ("#atifitra@", "INTERSECT"),
        ("^", "INTERSECT"),
        ("#^@", "INTERSECT"),
    ] {
        assert_eq!(
            sql(&format!("alaivo n #ao@ t {op} alaivo n #ao@ u")),
            format!("SELECT `n` FROM `t` {sqlop} SELECT `n` FROM `u`"),
            "{op}"
        );
    }
    assert_eq!(
        sql("alaivo n #ao@ t #ankambana@ (alaivo n #ao@ u #analana alaivo n #ao@ v)"),
        "SELECT `n` FROM `t` UNION SELECT * FROM (SELECT `n` FROM `u` EXCEPT SELECT `n` FROM `v`)"
    );
    assert_eq!(
        relation("alaivo n #ao@ t #ankambana@ alaivo n #ao@ u").relation,
        "t_projection_Union_u_projection"
    );
}

#[test]
fn derived_tables_group_by_and_names() {
    assert_eq!(
        relation("alaivo x #ao@ (alaivo n antso x #ao@ t #rehefa n = 5) q").relation,
        "t_selection_projection_projection"
    );
    assert_eq!(
        parse("alaivo x #ao@ (alaivo n #ao@ t)"),
        Err(DirkError::AliasNeeded)
    );
    assert_eq!(
        sql("alaivo c, count(v), sum(v), avg(v) antso m #ao@ g #rehefa v > 1 #vondrona (c)"),
        "SELECT `c`, CAST(count(`v`) AS REAL) AS `FunctionExpr(count, [ID(QualifiedIdentifier [origin=null, name=v])])`, total(dirkdb_numeric(`v`, 'SUM')) AS `FunctionExpr(sum, [ID(QualifiedIdentifier [origin=null, name=v])])`, coalesce(avg(dirkdb_numeric(`v`, 'AVG')), 0.0) AS `m` FROM (SELECT *, row_number() OVER () AS _dirk_g FROM (SELECT DISTINCT * FROM `g`)) AS `g` WHERE dirkdb_gt(`v`, 1.0) GROUP BY `c` ORDER BY dirkdb_java_order(dirkdb_java_hash(`c`)) OVER (ORDER BY min(_dirk_g) ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)"
    );
    assert_eq!(
        relation("alaivo 1+1").columns,
        Some(vec![("(NUMBER(1.0) ADD NUMBER(1.0))".into(), None)])
    );
    assert_eq!(
        relation("alaivo 1 x y z").columns,
        Some(vec![("z".into(), None)])
    );
    assert_eq!(parse("alaivo *"), Err(DirkError::SelectAllWithoutFrom));
    assert_eq!(
        parse("alaivo n #vondrona c").unwrap_err(),
        DirkError::OpenParen
    );
}

#[test]
fn writes() {
    assert_eq!(
        sql("manampia #ao@ t (n, s) #sanda (1, 'a'), (2.5, \"b\\'c\")"),
        "INSERT INTO `t` (`n`, `s`) VALUES (1.0, 'a'), (2.5, 'b''c')"
    );
    assert_eq!(
        sql("manampia ao t () sanda (1, null)"),
        "INSERT INTO `t` VALUES (1.0, NULL)"
    );
    assert_eq!(
        sql("manampia ao @ t (n) alaivo 0 - 3"),
        "INSERT INTO `t` (`n`) SELECT dirkdb_sub(0.0, 3.0) AS `(NUMBER(0.0) MIN NUMBER(3.0))`"
    );
    assert_eq!(
        parse("manampia ao@ t sanda (1,'a')"),
        Err(DirkError::OpenParen)
    );
    assert_eq!(
        parse("manampia ao@ t (n, s) sanda (1)"),
        Err(DirkError::ValueCount {
            fields: 2,
            values: 1
        })
    );
    assert_eq!(
        parse("manampia ao@ t (n, s) sanda (-1,'abc')")
            .unwrap_err()
            .to_string(),
        "Attendu (sans casse) \"null\", trouvé \"-1,'\""
    );
    assert_eq!(
        sql("havaozy t ova a = 'y', k = k + 10 rehefa k = 3"),
        "UPDATE `t` SET `a` = 'y', `k` = dirkdb_add(`k`, 10.0) WHERE dirkdb_eq(`k`, 3.0)"
    );
    assert_eq!(sql("fafao ao@ t"), "DELETE FROM `t`");
    assert_eq!(
        sql("fafao #ao@ t #rehefa k = 20"),
        "DELETE FROM `t` WHERE dirkdb_eq(`k`, 20.0)"
    );
}

#[test]
fn types_become_check_constraints() {
    let s = sql("manamboara tabilao t (a ISA(0,10), b LAHATSORATRA(2,4), c TANISA('x', 3, y), d DATY, e ISA(null,null):LAHATSORATRA(1,2))");
    assert!(s.starts_with("CREATE TABLE `t` (`a` CONSTRAINT `dirkdb_domain_0` CHECK (`a` IS NULL OR (typeof(`a`) IN ('integer','real') AND `a` >= 0.0 AND `a` <= 10.0) OR dirkdb_domain_violation(`a`, 0, 'Domain{NUMBER(min:0.0,max:10.0)}'))"), "{s}");
    assert!(
        s.contains("(typeof(`c`) = 'text' AND `c` IN ('x','y'))"),
        "{s}"
    );
    assert!(s.contains("`d` IS NULL OR 0 OR"), "{s}");
    assert_eq!(
        parse("manamboara efitra d ( TANISA('a','b',3) )").unwrap(),
        Statement::CreateDomain {
            name: "d".into(),
            ty: TypeExpr(vec![TypeAtom::Enum(vec![
                Member::Str("a".into()),
                Member::Str("b".into()),
                Member::Number(3.0)
            ])])
        }
    );
    assert_eq!(
        parse("manamboara efitra d TANISA(a)"),
        Err(DirkError::DomainOpen)
    );
}

#[test]
fn dirkdb_errors() {
    assert_eq!(parse("SELECT 1"), Err(DirkError::NoCommand));
    assert_eq!(parse("ravao tabilao t"), Err(DirkError::NoCommand));
    assert_eq!(
        parse("ampiasao a b"),
        Err(DirkError::Remaining(" b".into()))
    );
    assert_eq!(parse("alaivo n dia 5"), Err(DirkError::AfterIs));
    assert_eq!(
        parse("alaivo 5. antso x").unwrap_err().to_string(),
        "Can not eval because the input contains some remaining='. antso x'"
    );
    assert_eq!(
        parse("manamboara jery v antso alaivo 1"),
        Err(DirkError::ViewAt)
    );
    let deep = format!("alaivo {}1{}", "(".repeat(500), ")".repeat(500));
    assert_eq!(parse(&deep), Err(DirkError::TooDeep(parser::MAX_DEPTH)));
    let deep = format!("alaivo {}1", "!".repeat(5000));
    assert_eq!(parse(&deep), Err(DirkError::TooDeep(parser::MAX_DEPTH)));
}

#[test]
fn routing_rule() {
    assert_eq!(route("SELECT 1"), Route::English);
    assert_eq!(route("select * from t where x = 'alaivo'"), Route::English);
    assert!(matches!(route("alaivo n #ao@ t"), Route::Dirk(_)));
    assert!(matches!(route("asehoy ny efitra"), Route::Dirk(_)));
    assert_eq!(
        route("ALAIVO * FROM utilisateurs rehefa age > 26"),
        Route::Mixed
    );
    assert_eq!(
        route("manamboara tabilao u (id INTEGER PRIMARY KEY, nom TEXT)"),
        Route::Mixed
    );
    assert_eq!(route("manamboara tabilao u (nom TEXT)"), Route::Mixed);
    assert_eq!(route("asehoy ny tompo"), Route::Mixed, "SHOW OWNERS");
    assert_eq!(route("Asehoy tompo;"), Route::Mixed);
    assert_eq!(
        route("alaivo count(*) ao t rehefa v dia tsy NULL"),
        Route::Mixed
    );
    assert_eq!(route("ravao tabilao t"), Route::Error(DirkError::NoCommand));
    assert!(matches!(
        route("alaivo n dia 5 #ao@ t"),
        Route::Error(DirkError::AfterIs)
    ));
    assert!(matches!(
        route("manamboara tabilao t (a ISA(0,10))"),
        Route::Dirk(_)
    ));
    assert_eq!(route("alaivo 'a\\'b'"), route("alaivo 'a\\'b'"));
    assert!(matches!(route("alaivo 'a\\'b'"), Route::Dirk(_)));
}

#[test]
fn routing_sql_for_classification() {
    let r = |s: &str| match route(s) {
        Route::Dirk(stmt) => routing_sql(&stmt),
        other => panic!("{s}: {other:?}"),
    };
    assert_eq!(r("ampiasao shop"), "USE shop");
    assert_eq!(r("manamboara tahiry shop"), "CREATE DATABASE shop");
    assert_eq!(r("ravao ny tahiry shop"), "DROP DATABASE shop");
    assert_eq!(r("asehoy ny tahiry"), "SHOW DATABASES");
    assert!(r("asehoy ny tabilao").starts_with("SELECT name AS fanasehoana FROM sqlite_schema"));
    assert!(r("manamboara efitra d (ISA(0,1))").starts_with("INSERT INTO dirkdb_domains"));
    assert!(r("ravao ny efitra d").starts_with("DELETE FROM dirkdb_domains"));
    assert_eq!(r("ravao ny jery v"), "DROP VIEW `v`");
}

#[test]
fn values_use_dirkdb_functions_and_booleans_leave_as_values() {
    assert_eq!(
        sql("alaivo null + 1 antso x, -null antso y, 1 / 0 antso z"),
        "SELECT dirkdb_add(NULL, 1.0) AS `x`, dirkdb_neg(NULL) AS `y`, dirkdb_div(1.0, 0.0) AS `z`"
    );
    assert_eq!(
        sql("alaivo n #ao@ t #rehefa s"),
        "SELECT `n` FROM (SELECT DISTINCT * FROM `t`) AS `t` WHERE dirkdb_truth(`s`)"
    );
    assert_eq!(
        sql("alaivo count(n) #ao@ t"),
        "SELECT dirkdb_row_aggregate('count', `n`) AS `FunctionExpr(count, [ID(QualifiedIdentifier [origin=null, name=n])])` FROM `t`"
    );
    // Booleans leaving an expression become DirkDB's boolean values; inside one they stay 1/0.
    assert_eq!(
        sql("alaivo 1 = 1 antso a, 2, !n, n dia null, n #ao@ t"),
        "SELECT dirkdb_bool(dirkdb_eq(1.0, 1.0)) AS `a`, 2.0 AS `NUMBER(2.0)`, \
         dirkdb_bool((NOT dirkdb_truth(`n`))) AS `NOT(ID(QualifiedIdentifier [origin=null, name=n]))`, \
         dirkdb_bool((`n` IS NULL)) AS `(ID(QualifiedIdentifier [origin=null, name=n]) Is NULLVALUE(null))`, \
         `n` FROM `t`"
    );
    assert_eq!(
        sql("havaozy t ova n = n > 1 rehefa n > 1 ary s"),
        "UPDATE `t` SET `n` = dirkdb_bool(dirkdb_gt(`n`, 1.0)) WHERE (CASE WHEN dirkdb_gt(`n`, 1.0) THEN dirkdb_truth(`s`) ELSE 0 END)"
    );
}

#[test]
fn group_by_checks_in_dirkdb_words() {
    let err = |s: &str| plan(&parse(s).unwrap(), &NoSchema).unwrap_err().to_string();
    assert_eq!(
        err("alaivo * #ao@ g #vondrona (c)"),
        "GROUP BY n'est supporté que pour une liste explicite de champs"
    );
    assert_eq!(
        err("alaivo c, min(v) #ao@ g #vondrona (c)"),
        "Fonction non supportée dans GROUP BY: min"
    );
    assert_eq!(
        err("alaivo c, COUNT(v, c) #ao@ g #vondrona (c)"),
        "COUNT attend exactement 1 argument"
    );
    assert_eq!(
        err("alaivo c, sum(v + 1) #ao@ g #vondrona (c)"),
        "sum attend un identifiant de colonne (ex: sum(a))"
    );
    assert_eq!(
        err("alaivo c, v #ao@ g #vondrona (c)"),
        "Champ non agrégé doit être dans #vondrona: QualifiedIdentifier [origin=null, name=v]"
    );
    assert_eq!(
        err("alaivo c, 1 + 1 #ao@ g #vondrona (c)"),
        "Expression non supportée avec GROUP BY: (NUMBER(1.0) ADD NUMBER(1.0))"
    );
    assert_eq!(
        err("alaivo x #ao@ (alaivo c, v #ao@ g #vondrona (c)) q"),
        "Champ non agrégé doit être dans #vondrona: QualifiedIdentifier [origin=null, name=v]"
    );
    assert!(plan(
        &parse("alaivo g.c, count(v) #ao@ g #vondrona (c)").unwrap(),
        &NoSchema
    )
    .is_ok());
    // `#vondrona ()` is an ordinary projection: an aggregate there fails per row.
    assert!(
        sql("alaivo count(v) #ao@ g #vondrona ()").contains("dirkdb_row_aggregate('count', `v`)")
    );
}

#[test]
fn dropped_databases_are_named() {
    assert_eq!(
        dropped_database("ravao ny tahiry Shop"),
        Some("Shop".into())
    );
    assert_eq!(dropped_database("DROP DATABASE shop"), Some("shop".into()));
    assert_eq!(
        dropped_database("drop database if exists `shop`"),
        Some("shop".into())
    );
    assert_eq!(dropped_database("ravao ny tabilao shop"), None);
    assert_eq!(dropped_database("DROP TABLE shop"), None);
}

#[test]
fn routing_sql_keeps_sql_operators_for_classification_and_pins() {
    let r = |s: &str| match route(s) {
        Route::Dirk(stmt) => routing_sql(&stmt),
        other => panic!("{s}: {other:?}"),
    };
    assert_eq!(
        r("alaivo * #ao@ users #rehefa id = 1 ary !(n > 2)"),
        "SELECT * FROM (SELECT DISTINCT * FROM `users`) AS `users` WHERE ((`id` = 1.0) AND (NOT coalesce((`n` > 2.0), 0)))"
    );
    // The server's plan of the same statement uses DirkDB's value functions.
    assert!(sql("alaivo * #ao@ users #rehefa id = 1").contains("dirkdb_eq(`id`, 1.0)"));
}

/// A schema with a version that counts how often a plan asks it for columns.
struct Counting {
    version: i64,
    asked: std::cell::Cell<usize>,
}

impl Schema for Counting {
    fn database(&self) -> Option<&str> {
        Some("d")
    }
    fn domain(&self, _: &str) -> Option<String> {
        None
    }
    fn has_domain_table(&self) -> bool {
        false
    }
    fn domain_exists(&self, _: &str) -> bool {
        false
    }
    fn object_type(&self, _: &str) -> Option<String> {
        None
    }
    fn columns(&self, _: &str) -> Option<translate::Columns> {
        self.asked.set(self.asked.get() + 1);
        Some(vec![("n".into(), Some("t".into()))])
    }
    fn version(&self) -> Option<i64> {
        Some(self.version)
    }
}

#[test]
fn plans_are_remembered_per_epoch_and_schema_version() {
    let Route::Dirk(stmt) = route("alaivo n #ao@ t #ankambana@ alaivo n #ao@ u #rehefa n > 1")
    else {
        panic!("DirkDB's");
    };
    let schema = Counting {
        version: 7,
        asked: std::cell::Cell::new(0),
    };
    let first = super::plan_memoized(&stmt, &schema, 1).unwrap();
    let asked = schema.asked.get();
    assert!(asked > 0);
    assert_eq!(super::plan_memoized(&stmt, &schema, 1).unwrap(), first);
    assert_eq!(
        schema.asked.get(),
        asked,
        "remembered: the schema is not asked again"
    );
    super::plan_memoized(&stmt, &schema, 2).unwrap();
    assert_eq!(schema.asked.get(), 2 * asked, "another epoch plans afresh");
    let changed = Counting {
        version: 8,
        asked: std::cell::Cell::new(0),
    };
    super::plan_memoized(&stmt, &changed, 2).unwrap();
    assert_eq!(
        changed.asked.get(),
        asked,
        "another schema version plans afresh"
    );
}
