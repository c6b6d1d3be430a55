//! DirkDB's own language end to end: a course script written in DirkDB's grammar, every
//! statement form of `../shared/DIRKDB-DIALECT.md`, run through a server, the proxy and the
//! cache, each answer compared with the one DirkDB gives (message texts exactly; relations by
//! name, column names and origins, and rows — as a set, since SQLite's row order is not
//! DirkDB's storage order). Where DirkDB itself fails (views that cannot be read, aliased joins)
//! the expected answer is what DirkDB meant.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use common::cache::CacheProcess;
use common::cluster::Cluster;
use common::{inproc, ServerProcess};
use dirkdb_client::{Client, ClientError, Reply};
use serde_json::{json, Value};

/// What DirkDB answers.
enum Want {
    /// A message line.
    Msg(&'static str),
    /// `Hadisoana : <text>`.
    Fail(&'static str),
    /// A relation: name, columns as `name` or `name@origin`, rows.
    Rel(&'static str, &'static [&'static str], Value),
}

use Want::*;

/// The course script: statement, DirkDB's answer.
fn course() -> Vec<(&'static str, Want)> {
    vec![
        ("manamboara tahiry kilasy", Msg("Ny tahiry : kilasy dia voaforona soamantsara")),
        ("manamboara tahiry kilasy", Fail("Ny tahiry (kilasy) dia efa misy")),
        ("asehoy ny tabilao", Fail("Tsy nisafidy tahiry ianao")),
        ("ravao ny tabilao x", Fail("Tsy nisafidy tahiry ianao")),
        (
            "alaivo 1 + 1",
            Rel("dual_projection", &["(NUMBER(1.0) ADD NUMBER(1.0))"], json!([[2.0]])),
        ),
        ("ampiasao tsisy", Fail("Tsy misy ny tahiry : tsisy")),
        ("ampiasao kilasy tsisy", Fail("Can not eval because the input contains some remaining=' tsisy'")),
        ("AMPIASAO kilasy", Msg("Ny tahiry : kilasy dia miasa ankehitriny")),
        ("manamboara efitra naoty ( ISA(0,20) )", Msg("Ny efitra : naoty dia voaforona soamantsara")),
        ("manamboara efitra naoty ( ISA(0,20) )", Fail("Ny efitra : naoty dia efa misys")),
        ("manamboara efitra sokajy (TANISA('L1', L2, 3))", Msg("Ny efitra : sokajy dia voaforona soamantsara")),
        ("manamboara efitra anarana (LAHATSORATRA(2,10))", Msg("Ny efitra : anarana dia voaforona soamantsara")),
        ("manamboara efitra ratsy (tsisy)", Fail("La table kilasy.tsisy n'as pas été trouvé")),
        ("manamboara efitra d TANISA(a)", Fail("'(' no hamaritana ny efitra")),
        (
            "asehoy ny efitra",
            Rel("fanasehoana", &["fanasehoana@fanasehoana"], json!([["naoty"], ["sokajy"], ["anarana"]])),
        ),
        (
            "manamboara tabilao mpianatra (id ISA(null,null), anarana anarana, sokajy sokajy, teraka DATY)",
            Msg("Ny tabilao : mpianatra dia voaforona soamantsara"),
        ),
        ("manamboara tabilao x (a tsisy)", Fail("La table kilasy.tsisy n'as pas été trouvé")),
        ("manamboara tabilao mpianatra (a ISA(0,1))", Fail("Ny tabilao : mpianatra dia efa misy")),
        ("manamboara tabilao y", Fail("Liste de champs attendue après le nom de la table")),
        (
            "manampia #ao@ mpianatra (id, anarana, sokajy) #sanda (1, 'Rabe', 'L1'), (2, \"Rasoa\", 'L2'), (3, 'Rakoto', 3)",
            Msg("Tafinditra ny fiovana ny tabilao"),
        ),
        (
            "manampia ao mpianatra (id, anarana) sanda (4, 'R')",
            Fail("can not convert into domain d : Domain{VARCHAR( 2,10 )} at values ind=1 { \"R\" } "),
        ),
        (
            "manampia ao mpianatra (id, anarana) sanda (4, 5)",
            Fail("can not convert into domain d : Domain{VARCHAR( 2,10 )} at values ind=1 { 5.0 } "),
        ),
        (
            "manampia ao mpianatra (id, sokajy) sanda (4, 'L3')",
            Fail("can not convert into domain d : Domain{DomainEnum{allowedValues=[L1, L2, 3.0], size=3}} at values ind=2 { \"L3\" } "),
        ),
        (
            "manampia ao mpianatra (id, sokajy) sanda (4, '3')",
            Fail("can not convert into domain d : Domain{DomainEnum{allowedValues=[L1, L2, 3.0], size=3}} at values ind=2 { \"3\" } "),
        ),
        (
            "manampia ao mpianatra (id, teraka) sanda (4, '2024-01-31')",
            Fail("can not convert into domain d : Domain{DATE} at values ind=3 { \"2024-01-31\" } "),
        ),
        ("manampia ao mpianatra (zz) sanda (1)", Fail("Champ 'zz' non trouvé dans la relation")),
        (
            "manampia ao mpianatra (id, anarana) sanda (1)",
            Fail("Le nombre de champs (2) ne correspond pas au nombre de valeurs (1)"),
        ),
        ("manampia ao@ mpianatra sanda (1,'a')", Fail("Parenthèse ouvrante '(' attendue")),
        (
            "manampia ao@ mpianatra (id) sanda (-1)",
            Fail("Attendu (sans casse) \"null\", trouvé \"-1)\""),
        ),
        (
            "manampia ao@ mpianatra () sanda (1, 'ab')",
            Fail("Cannot add  Individual of fields_size=2 in relation(mpianatra) with domains_size 4"),
        ),
        (
            "manamboara tabilao naoty_tb (id ISA(null,null), lohahevitra LAHATSORATRA(null,null), naoty naoty)",
            Msg("Ny tabilao : naoty_tb dia voaforona soamantsara"),
        ),
        (
            "manampia ao @ naoty_tb () sanda (1, 'math', 15), (1, 'info', 18), (2, 'math', 9), (9, 'math', 12)",
            Msg("Tafinditra ny fiovana ny tabilao"),
        ),
        (
            "manampia ao naoty_tb (id, naoty) sanda (1, 21)",
            Fail("can not convert into domain d : Domain{NUMBER(min:0.0,max:20.0)} at values ind=2 { 21.0 } "),
        ),
        (
            "havaozy naoty_tb ova naoty = naoty + 10 rehefa id = 1",
            Fail("can not convert into domain d : Domain{NUMBER(min:0.0,max:20.0)} at values ind=2 { 25.0 } "),
        ),
        (
            "havaozy naoty_tb ova naoty = naoty + 1 #rehefa lohahevitra = 'math'",
            Msg("Tafinditra ny fiovana ny tabilao"),
        ),
        ("havaozy naoty_tb ova zz = 1", Fail("Champ 'zz' non trouvé dans la relation naoty_tb")),
        (
            "alaivo * #ao@ mpianatra",
            Rel(
                "mpianatra",
                &["id@mpianatra", "anarana@mpianatra", "sokajy@mpianatra", "teraka@mpianatra"],
                json!([[1.0, "Rabe", "L1", null], [2.0, "Rasoa", "L2", null], [3.0, "Rakoto", 3.0, null]]),
            ),
        ),
        (
            "alaivo anarana # ao @ mpianatra # rehefa id > 1",
            Rel("mpianatra_selection_projection", &["anarana"], json!([["Rasoa"], ["Rakoto"]])),
        ),
        (
            "alaivo m.anarana, n.naoty #ao@ mpianatra m #tonona:@ naoty_tb n #ka m.id = n.id",
            Rel(
                "mpianatra_produit_naoty_tb_selection_projection",
                &["anarana@m", "naoty@n"],
                json!([["Rabe", 16.0], ["Rabe", 18.0], ["Rasoa", 10.0]]),
            ),
        ),
        (
            "alaivo anarana, naoty #ao@ mpianatra #tonona:avia@ naoty_tb #ka mpianatra.id = naoty_tb.id",
            Rel(
                "mpianatra_left_join_naoty_tb_projection",
                &["anarana", "naoty"],
                json!([["Rabe", 16.0], ["Rabe", 18.0], ["Rasoa", 10.0], ["Rakoto", null]]),
            ),
        ),
        (
            "alaivo anarana, naoty #ao@ mpianatra #tonona:ankavanana@ naoty_tb #ka mpianatra.id = naoty_tb.id",
            Rel(
                "mpianatra_right_join_naoty_tb_projection",
                &["anarana", "naoty"],
                json!([["Rabe", 16.0], ["Rabe", 18.0], ["Rasoa", 10.0], [null, 13.0]]),
            ),
        ),
        (
            "alaivo anarana, naoty #ao@ mpianatra # tonona : feno @ naoty_tb #ka mpianatra.id = naoty_tb.id",
            Rel(
                "mpianatra_left_join_naoty_tb_Union_mpianatra_right_join_naoty_tb_projection",
                &["anarana", "naoty"],
                json!([["Rabe", 16.0], ["Rabe", 18.0], ["Rasoa", 10.0], ["Rakoto", null], [null, 13.0]]),
            ),
        ),
        (
            "alaivo anarana, lohahevitra #ao@ mpianatra #tonona:natoraly@ naoty_tb",
            Rel(
                "mpianatra_natural_join_naoty_tb_projection",
                &["anarana", "lohahevitra"],
                json!([["Rabe", "math"], ["Rabe", "info"], ["Rasoa", "math"]]),
            ),
        ),
        (
            "alaivo anarana, lohahevitra #ao@ mpianatra #tonona naoty_tb #fetra 0 2",
            Rel(
                "mpianatra_produit_naoty_tb_projection_limit",
                &["anarana", "lohahevitra"],
                json!([["Rabe", "math"], ["Rabe", "info"]]),
            ),
        ),
        (
            "alaivo id #ao@ mpianatra #ankambana@ alaivo id #ao@ naoty_tb",
            Rel("mpianatra_projection_Union_naoty_tb_projection", &["id"], json!([[1.0], [2.0], [3.0], [9.0]])),
        ),
        (
            "alaivo id #ao@ naoty_tb #analana alaivo id #ao@ mpianatra",
            Rel("naoty_tb_projection_diff_mpianatra_projection", &["id"], json!([[9.0]])),
        ),
        (
            "alaivo id #ao@ naoty_tb ^ alaivo id #ao@ mpianatra",
            Rel("naoty_tb_projection_inter_mpianatra_projection", &["id"], json!([[1.0], [2.0]])),
        ),
        (
            "alaivo id #ao@ mpianatra #+@ (alaivo id #ao@ naoty_tb #-@ alaivo id #ao@ mpianatra)",
            Rel(
                "mpianatra_projection_Union_naoty_tb_projection_diff_mpianatra_projection",
                &["id"],
                json!([[1.0], [2.0], [3.0], [9.0]]),
            ),
        ),
        (
            "alaivo lohahevitra, count(naoty), sum(naoty), avg(naoty) antso salan #ao@ naoty_tb #vondrona (lohahevitra)",
            Rel(
                "naoty_tb_groupBy",
                &[
                    "lohahevitra",
                    "FunctionExpr(count, [ID(QualifiedIdentifier [origin=null, name=naoty])])",
                    "FunctionExpr(sum, [ID(QualifiedIdentifier [origin=null, name=naoty])])",
                    "salan",
                ],
                json!([["info", 1.0, 18.0, 18.0], ["math", 3.0, 39.0, 13.0]]),
            ),
        ),
        (
            "alaivo x #ao@ (alaivo anarana antso x #ao@ mpianatra #rehefa id = 1) q",
            Rel("mpianatra_selection_projection_projection", &["x"], json!([["Rabe"]])),
        ),
        (
            "alaivo x #ao@ (alaivo anarana antso x #ao@ mpianatra)",
            Fail("Tous les tables dérivé doit avoir leur propre alias"),
        ),
        ("alaivo * #ao@ mpianatra #fetra 2", Rel("mpianatra_limit", &["id@mpianatra", "anarana@mpianatra", "sokajy@mpianatra", "teraka@mpianatra"], json!([[3.0, "Rakoto", 3.0, null]]))),
        (
            "alaivo id #ao@ mpianatra #rehefa id = 1 na id = 2 ary id = 3",
            Rel("mpianatra_selection_projection", &["id"], json!([])),
        ),
        (
            "alaivo id #ao@ mpianatra #rehefa !(teraka > 2)",
            Rel("mpianatra_selection_projection", &["id"], json!([[1.0], [2.0], [3.0]])),
        ),
        (
            "alaivo id #ao@ mpianatra #rehefa teraka dia null #ary anarana dia tsy null #na id = 7",
            Rel("mpianatra_selection_projection", &["id"], json!([[1.0], [2.0], [3.0]])),
        ),
        ("alaivo 7 / 2 antso x", Rel("dual_projection", &["x"], json!([[3.5]]))),
        // DirkDB's values: booleans, null arithmetic, truthiness comparisons, division by zero.
        (
            "alaivo 1 = 1 antso a, null + 1 antso b, -null antso c, 5 = '5' antso d, 1 = '1' antso e, 'b' > 'a' antso f, !null antso g",
            Rel("dual_projection", &["a", "b", "c", "d", "e", "f", "g"], json!([[true, 1.0, -0.0, false, true, false, true]])),
        ),
        ("alaivo id #ao@ mpianatra #rehefa id = '1'", Rel("mpianatra_selection_projection", &["id"], json!([[1.0]]))),
        ("alaivo null = null antso a, null != 1 antso b", Rel("dual_projection", &["a", "b"], json!([[false, false]]))),
        // Java's CompareOp: a Boolean and a Double of other classes compare as numbers
        // (0.0 == -0.0), two Doubles by Double.equals (0.0 and -0.0 differ).
        (
            "alaivo (1 = 2) = -0 antso a, (1 = 2) != -0 antso b, 0 = -0 antso c, (1 = 1) = (2 = 2) antso d, (1 = 1) = 'yes' antso e",
            Rel("dual_projection", &["a", "b", "c", "d", "e"], json!([[true, false, false, true, true]])),
        ),
        ("alaivo 1 / 0", Fail("division by zero numerator = 1.0 / 0")),
        ("alaivo id / 0 #ao@ mpianatra #rehefa id > 100", Rel("mpianatra_selection_projection", &["(ID(QualifiedIdentifier [origin=null, name=id]) DIV NUMBER(0.0))"], json!([]))),
        ("alaivo 'abc' + 1 antso x, '12abc' + 1 antso y", Rel("dual_projection", &["x", "y"], json!([[1.0, 13.0]]))),
        // A boolean stays one through derived tables, views and set operations, and no domain
        // takes it (DirkDB's NUMBER, VARCHAR, TANISA and DATE refuse a Boolean).
        (
            "alaivo b, b ary 1 = 1 antso c #ao@ (alaivo id > 1 antso b #ao@ mpianatra) q",
            Rel("mpianatra_projection_projection", &["b", "c"], json!([[false, false], [true, true], [true, true]])),
        ),
        (
            "alaivo id > 2 antso b #ao@ mpianatra #ankambana@ alaivo 1 = 1 antso b",
            Rel("mpianatra_projection_Union_dual_projection", &["b"], json!([[false], [true]])),
        ),
        ("manamboara jery marina @ alaivo id, id = 2 antso b #ao@ mpianatra", Msg("Ny jery : marina dia voaforona soamantsara")),
        ("alaivo b #ao@ marina #rehefa b", Rel("marina_selection_projection", &["b"], json!([[true]]))),
        (
            "manampia ao mpianatra (id) alaivo 1 = 1",
            Fail("can not convert into domain d : Domain{NUMBER(min:null,max:null)} at values ind=0 { true } "),
        ),
        (
            "havaozy mpianatra ova anarana = id > 1 rehefa id = 2",
            Fail("can not convert into domain d : Domain{VARCHAR( 2,10 )} at values ind=1 { true } "),
        ),
        ("ravao ny jery marina", Msg("")),
        // `#vondrona` checks, in DirkDB's words.
        (
            "alaivo lohahevitra, naoty #ao@ naoty_tb #vondrona (lohahevitra)",
            Fail("Champ non agrégé doit être dans #vondrona: QualifiedIdentifier [origin=null, name=naoty]"),
        ),
        ("alaivo * #ao@ naoty_tb #vondrona (id)", Fail("GROUP BY n'est supporté que pour une liste explicite de champs")),
        ("alaivo id, max(naoty) #ao@ naoty_tb #vondrona (id)", Fail("Fonction non supportée dans GROUP BY: max")),
        ("alaivo count(naoty) #ao@ naoty_tb", Fail("Function 'count' ne peut pas être évaluée ligne-par-ligne")),
        (
            "alaivo zz, count(id) #ao@ naoty_tb #vondrona (zz)",
            Fail("sqlTsinjo.query.err.eval.FieldNotFoundErr: Le champ 'zz' n'existe pas dans la relation."),
        ),
        // DirkDB's order: the keys are resolved first, then each item in turn.
        (
            "alaivo lohahevitra, naoty #ao@ naoty_tb #vondrona (zz)",
            Fail("sqlTsinjo.query.err.eval.FieldNotFoundErr: Le champ 'zz' n'existe pas dans la relation."),
        ),
        (
            "alaivo id, zz, max(naoty) #ao@ naoty_tb #vondrona (id)",
            Fail("sqlTsinjo.query.err.eval.FieldNotFoundErr: Le champ 'zz' n'existe pas dans la relation."),
        ),
        (
            "alaivo id, count(q.zz) #ao@ naoty_tb q #vondrona (id)",
            Fail("sqlTsinjo.query.err.eval.FieldNotFoundErr: Le champ 'q.zz' n'existe pas dans la relation."),
        ),
        (
            "alaivo id, count(naoty) #ao@ naoty_tb #tonona naoty_tb b #vondrona (id)",
            Fail("sqlTsinjo.query.err.eval.AmbigousNameErr: Le champ 'id' est ambigu. Il apparaît 2 fois dans la relation."),
        ),
        (
            "alaivo id, sum(lohahevitra) #ao@ naoty_tb #vondrona (id)",
            Fail("SUM attend une valeur numérique, trouvé: java.lang.String"),
        ),
        // Exact counts in set-operator and ambiguity errors; a difference keeps duplicates.
        (
            "alaivo id, anarana #ao@ mpianatra #ankambana@ alaivo id #ao@ naoty_tb",
            Fail("mpianatra_projection(2) AND naoty_tb_projection(1)"),
        ),
        (
            "alaivo id #ao@ mpianatra #tonona naoty_tb a #tonona naoty_tb b",
            Fail("Le champ 'id' est ambigu. Il apparaît 3 fois dans la relation."),
        ),
        (
            "alaivo id #ao@ naoty_tb #analana@ alaivo id #ao@ mpianatra #rehefa id = 2",
            Rel("naoty_tb_projection_diff_mpianatra_selection_projection", &["id"], json!([[1.0], [1.0], [9.0]])),
        ),
        (
            "alaivo * #ao@ naoty_tb #analana@ alaivo * #ao@ naoty_tb #rehefa id = 1",
            Rel(
                "naoty_tb_diff_naoty_tb_selection",
                &["id@naoty_tb", "lohahevitra@naoty_tb", "naoty@naoty_tb"],
                json!([[2.0, "math", 10.0], [9.0, "math", 13.0]]),
            ),
        ),
        ("SHOW TABLES", Rel("sqlite_master", &["table@sqlite_master"], json!([["mpianatra"], ["naoty_tb"]]))),
        ("alaivo 'a\\'b' antso x, \"s\" antso y", Rel("dual_projection", &["x", "y"], json!([["a'b", "s"]]))),
        ("alaivo id dia 5 #ao@ mpianatra", Fail("After 'is' or 'is not' must be 'null' ")),
        ("alaivo tsisy #ao@ mpianatra", Fail("Le champ 'tsisy' n'existe pas dans la relation.")),
        ("alaivo * #ao@ tsisy", Fail("La table kilasy.tsisy n'as pas été trouvé")),
        ("alaivo *", Fail("Vous ne pouvez pas faire select all si l'origin de la table n'existe pas")),
        ("manamboara jery v antso alaivo 1", Fail("Le caractère '@' est attendu après le nom de la vue")),
        (
            "manamboara jery tsara @ alaivo anarana, naoty #ao@ mpianatra #tonona naoty_tb #ka mpianatra.id = naoty_tb.id #rehefa naoty > 12",
            Msg("Ny jery : tsara dia voaforona soamantsara"),
        ),
        ("manamboara jery tsara @ alaivo 1", Fail("Ny jery : tsara dia efa misy")),
        (
            "alaivo anarana #ao@ tsara #rehefa naoty > 17",
            Rel("tsara_selection_projection", &["anarana"], json!([["Rabe"]])),
        ),
        ("asehoy ny jery", Rel("fanasehoana", &["fanasehoana@fanasehoana"], json!([["tsara"]]))),
        (
            "asehoy ny tabilao",
            Rel("fanasehoana", &["fanasehoana@fanasehoana"], json!([["mpianatra"], ["naoty_tb"]])),
        ),
        ("fafao #ao@ naoty_tb #rehefa id = 9", Msg("Tafinditra ny fiovana ny tabilao")),
        ("alaivo id #ao@ naoty_tb #rehefa id = 9", Rel("naoty_tb_selection_projection", &["id"], json!([]))),
        ("ravao ny jery tsara", Msg("")),
        ("ravao ny jery tsara", Fail("Ny jery kilasy.tsara dia tsy hita")),
        ("ravao ny efitra sokajy", Msg("")),
        ("ravao ny efitra sokajy", Fail("La table kilasy.sokajy n'as pas été trouvé")),
        (
            "manampia ao mpianatra (id, sokajy) sanda (5, 'L9')",
            Fail("can not convert into domain d : Domain{DomainEnum{allowedValues=[L1, L2, 3.0], size=3}} at values ind=2 { \"L9\" } "),
        ),
        ("fafao ao@ naoty_tb", Msg("Tafinditra ny fiovana ny tabilao")),
        ("ravao ny tabilao naoty_tb", Msg("")),
        ("ravao ny tabilao naoty_tb", Fail("La table kilasy.naoty_tb n'as pas été trouvé")),
        (
            "SELECT id AS n FROM mpianatra WHERE id = 1",
            Rel("mpianatra", &["n@mpianatra"], json!([[1.0]])),
        ),
        ("ravao tabilao", Fail("Commande valide non trouvé")),
        ("ravao ny tahiry kilasy", Msg("")),
        ("ravao ny tahiry kilasy", Fail("Tsy misy ny tahiry : kilasy")),
        // The dropped current database is no longer selected (through the proxy too).
        ("asehoy ny tabilao", Fail("Tsy nisafidy tahiry ianao")),
    ]
}

fn column_label(c: &dirkdb_core::frame::Column) -> String {
    match &c.origin {
        Some(o) => format!("{}@{o}", c.name),
        None => c.name.clone(),
    }
}

fn sorted(rows: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(Value::to_string).collect();
    v.sort();
    v
}

/// Runs the course script on `client` and checks every answer.
async fn run_course(client: &mut Client, through: &str) {
    for (sql, want) in course() {
        let got = client.execute(sql).await;
        let context = format!("{through}: {sql}");
        match (want, got) {
            (Msg(text), Ok(Reply::Message(m))) => assert_eq!(m, text, "{context}"),
            (Fail(text), Err(ClientError::Server(e))) => assert_eq!(e, text, "{context}"),
            (Rel(name, columns, rows), Ok(Reply::Rows(rs))) => {
                assert_eq!(rs.name.as_deref(), Some(name), "{context}");
                let labels: Vec<String> = rs.columns.iter().map(column_label).collect();
                assert_eq!(labels, columns, "{context}");
                let want: Vec<Value> = rows.as_array().cloned().unwrap_or_default();
                let got: Vec<Value> = rs.rows.iter().map(|r| Value::Array(r.clone())).collect();
                assert_eq!(sorted(&got), sorted(&want), "{context}");
            }
            (_, got) => panic!("{context}: unexpected answer {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_course_script_answers_as_dirkdb_through_the_server() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    run_course(&mut c, "server").await;
}

#[tokio::test]
async fn the_course_script_answers_as_dirkdb_through_the_proxy_and_the_cache() {
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let mut c = cluster.proxy_client().await;
    run_course(&mut c, "proxy").await;
    let cache = CacheProcess::start(&cluster, 3000, 200, &[]);
    cache.wait_for_feed();
    let mut c = cache.client().await;
    run_course(&mut c, "cache").await;
    // Twice through the cache: every read answered from memory or not, the same answers.
    let mut c = cache.client().await;
    run_course(&mut c, "cache, again").await;
    // DirkDB spellings of one read share an entry; a DirkDB write drops it.
    for sql in [
        "manamboara tahiry k2",
        "ampiasao k2",
        "manamboara tabilao t (n ISA(null,null))",
        "manampia ao t (n) sanda (1), (1), (2)",
    ] {
        c.execute(sql).await.unwrap();
    }
    let hits = cache.stat("hits");
    let first = c.query("alaivo n #ao@ t #rehefa n > 0").await.unwrap();
    assert_eq!(
        first.rows,
        [[json!(1.0)], [json!(2.0)]],
        "WHERE removes duplicates"
    );
    let second = c.query("ALAIVO n # ao @ t # rehefa n > 0").await.unwrap();
    assert_eq!(first, second);
    assert_eq!(cache.stat("hits"), hits + 1, "{}", cache.stats());
    c.execute("manampia #ao@ t (n) #sanda (3)").await.unwrap();
    let third = c.query("alaivo n #ao@ t #rehefa n > 0").await.unwrap();
    assert_eq!(third.rows.len(), 3);
}

/// One DirkDB read through the cache: its rows, as a set, and whether the cache answered it
/// from memory.
async fn cached_read(c: &mut Client, cache: &CacheProcess, sql: &str) -> (Vec<String>, bool) {
    let hits = cache.stat("hits");
    let rows = c.query(sql).await.unwrap().rows;
    let rows: Vec<Value> = rows.into_iter().map(Value::Array).collect();
    (sorted(&rows), cache.stat("hits") > hits)
}

/// The cache keys every DirkDB read form (joins of every kind with `#tonona … #ka`, set
/// operators, `#fetra`, `#vondrona`, derived tables, views) and drops it when a DirkDB write
/// (`manampia`, `havaozy`, `fafao`, a view or table dropped) changes what it reads — sent
/// through the cache itself, or to the proxy directly (the cache learns it from the change
/// feed). A DirkDB read never shares an entry with the English SQL it stands for.
#[tokio::test]
async fn the_cache_keys_and_drops_every_dirkdb_read_form() {
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let cache = CacheProcess::start(&cluster, 3000, 200, &[]);
    cache.wait_for_feed();
    let mut c = cache.client().await;
    for sql in [
        "manamboara tahiry fitadidiana",
        "ampiasao fitadidiana",
        "manamboara efitra laharana (ISA(0,100))",
        "manamboara tabilao ja (k laharana, a LAHATSORATRA(null,null))",
        "manamboara tabilao jb (k laharana, b LAHATSORATRA(null,null))",
        "manampia ao ja (k, a) sanda (1, 'a1'), (2, 'a2'), (3, 'a3')",
        "manampia ao jb (k, b) sanda (2, 'b2'), (3, 'b3'), (4, 'b4')",
        "manamboara jery vj @ alaivo ja.k, a, b #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k",
    ] {
        c.execute(sql).await.unwrap();
    }
    let reads = [
        "alaivo ja.k, a, b #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k",
        "alaivo ja.k, a, b #ao@ ja #tonona:avanana@ jb #ka ja.k = jb.k",
        "alaivo ja.k, a, b #ao@ ja #tonona:feno@ jb #ka ja.k = jb.k",
        "alaivo a, b #ao@ ja #tonona@ jb #ka ja.k = jb.k",
        "alaivo a, b #ao@ ja #tonona jb",
        "alaivo * #ao@ ja #tonona:natoraly@ jb",
        "alaivo k #ao@ ja #ankambana@ alaivo k #ao@ jb",
        "alaivo k #ao@ ja #analana@ alaivo k #ao@ jb",
        "alaivo k #ao@ ja #atifitra@ alaivo k #ao@ jb",
        "alaivo k #ao@ ja #fetra 1 3",
        "alaivo b, count(k) #ao@ jb #vondrona (b)",
        "alaivo x #ao@ (alaivo k antso x #ao@ jb #rehefa k > 2) q",
        "alaivo * #ao@ jb #rehefa k = 4",
        "alaivo * #ao@ vj",
    ];
    // Each write changes every read above.
    let writes = [
        ("cache", "manampia ao jb (k, b) sanda (1, 'b1')"),
        ("cache", "havaozy jb ova b = 'B', k = k + 10 #rehefa k = 4"),
        ("proxy", "fafao #ao@ jb #rehefa k = 1"),
        ("cache", "havaozy ja ova k = 4, a = 'a4' #rehefa k = 3"),
        ("proxy", "manampia ao jb (k, b) sanda (4, 'b4')"),
    ];
    let mut proxy = cluster.proxy_client().await;
    proxy.execute("ampiasao fitadidiana").await.unwrap();
    let mut primary = cluster.client(0).await;
    primary.execute("ampiasao fitadidiana").await.unwrap();
    let mut before = Vec::new();
    for sql in reads {
        let (rows, _) = cached_read(&mut c, &cache, sql).await;
        let (again, hit) = cached_read(&mut c, &cache, sql).await;
        assert_eq!(rows, again, "{sql}");
        assert!(hit, "{sql}: not answered from the cache: {}", cache.stats());
        before.push(rows);
    }
    for (through, write) in writes {
        match through {
            "cache" => c.execute(write).await.unwrap(),
            _ => proxy.execute(write).await.unwrap(),
        };
        for (i, sql) in reads.iter().enumerate() {
            // What the primary answers now (no cache, no replica that may lag).
            let truth = {
                let rows = primary.query(sql).await.unwrap().rows;
                let rows: Vec<Value> = rows.into_iter().map(Value::Array).collect();
                sorted(&rows)
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let fresh = loop {
                let (rows, _) = cached_read(&mut c, &cache, sql).await;
                // A write through the cache drops its readers before it is answered.
                if rows == truth || through == "cache" || std::time::Instant::now() > deadline {
                    break (rows == truth).then_some(rows);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            assert!(fresh.is_some(), "{sql} after {write} ({through}): the cache kept {:?}, the server answers {truth:?}", before[i]);
            before[i] = truth;
        }
    }
    // DirkDB's answer and SQLite's to the SQL it stands for are two entries.
    let dirk = c.query("alaivo k #ao@ ja").await.unwrap();
    let english = c.query("SELECT `k` FROM `ja`").await.unwrap();
    assert_eq!(dirk.name.as_deref(), Some("ja_projection"));
    assert_ne!(dirk.name, english.name, "{english:?}");
    let dirk_again = c.query("alaivo k #ao@ ja").await.unwrap();
    assert_eq!(dirk_again.name.as_deref(), Some("ja_projection"));
    // Dropping the view drops its reads.
    c.execute("ravao ny jery vj").await.unwrap();
    let gone = c.query("alaivo * #ao@ vj").await;
    assert!(
        matches!(gone, Err(ClientError::Server(ref e)) if e.contains("vj")),
        "{gone:?}"
    );
}

const OPLOG: &str = r#"{ "maxEntries": 1000000 }"#;

fn server_error(result: Result<Reply, ClientError>) -> String {
    match result {
        Err(ClientError::Server(reason)) => reason,
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn show_domains(c: &mut Client) -> Vec<Value> {
    c.query("asehoy ny efitra").await.unwrap().rows.concat()
}

const BOUND: &str =
    "can not convert into domain d : Domain{NUMBER(min:0.0,max:10.0)} at values ind=0 { 11.0 } ";
const LENGTH: &str =
    "can not convert into domain d : Domain{VARCHAR( 1,3 )} at values ind=1 { \"abcd\" } ";

/// Bound and length violations on INSERT and UPDATE, in DirkDB's words.
async fn assert_domains_enforced(c: &mut Client) {
    assert_eq!(
        server_error(c.execute("manampia ao t (a, b) sanda (11, 'x')").await),
        BOUND
    );
    assert_eq!(
        server_error(c.execute("havaozy t ova a = a + 6").await),
        BOUND
    );
    assert_eq!(
        server_error(c.execute("havaozy t ova b = 'abcd' rehefa a = 5").await),
        LENGTH
    );
    // English SQL meets the same constraint: it lives in the schema.
    assert!(server_error(c.execute("UPDATE t SET a = 'five'").await).contains("ind=0"));
}

#[tokio::test]
async fn domains_replicate_survive_restart_full_sync_and_promotion() {
    let mut cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let mut c = cluster.proxy_client().await;
    for sql in [
        "manamboara tahiry d",
        "ampiasao d",
        "manamboara efitra isa10 (ISA(0,10))",
        "manamboara tabilao t (a isa10, b LAHATSORATRA(1,3))",
        "manampia ao t (a, b) sanda (5, 'ab')",
    ] {
        c.execute(sql).await.unwrap();
    }
    assert_domains_enforced(&mut c).await;
    cluster.wait_converged(0, std::time::Duration::from_secs(20));
    cluster.assert_same_data(0);
    // The replica holds the domain and the constraint.
    let mut r = cluster.client(1).await;
    r.execute("ampiasao d").await.unwrap();
    assert_eq!(show_domains(&mut r).await, [json!("isa10")]);
    // A restarted primary still has them.
    cluster.kill9(0);
    cluster.spawn(0);
    // A restarted primary writes again once the proxy renewed its lease.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cluster.get(0, "/replication/status")["acceptsWrites"] != true {
        assert!(std::time::Instant::now() < deadline, "no lease renewed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut p = cluster.client(0).await;
    p.execute("ampiasao d").await.unwrap();
    assert_eq!(show_domains(&mut p).await, [json!("isa10")]);
    assert_domains_enforced(&mut p).await;
    // A replica that must full-sync (the primary's oplog cleared while it was away).
    cluster.kill9(1);
    p.execute("manampia ao t (a, b) sanda (7, 'abc')")
        .await
        .unwrap();
    cluster.post(0, "/replication/oplog/clear", "");
    cluster.spawn(1);
    cluster.wait_converged(0, std::time::Duration::from_secs(20));
    cluster.assert_same_data(0);
    // Promoted by hand, it refuses a direct violation the same way. The proxy goes first: its
    // health checker would (rightly) fence a node promoted behind its back.
    cluster.kill_proxy();
    let promoted = cluster.post(1, "/replication/promote", "");
    assert_eq!(promoted["role"], "PRIMARY", "{promoted}");
    let mut r = cluster.client(1).await;
    r.execute("ampiasao d").await.unwrap();
    assert_eq!(show_domains(&mut r).await, [json!("isa10")]);
    assert_domains_enforced(&mut r).await;
    let rows = r.query("alaivo a, b #ao@ t").await.unwrap().rows;
    assert_eq!(
        sorted(&rows.into_iter().map(Value::Array).collect::<Vec<_>>()),
        sorted(&[json!([5.0, "ab"]), json!([7.0, "abc"])])
    );
}

#[tokio::test]
async fn a_file_copy_holds_the_domains() {
    let mut cluster = Cluster::configure(1, OPLOG);
    let path = cluster.dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        r#""type": "OPLOG""#,
        r#""type": "FILE", "intervalSeconds": 1"#,
    );
    std::fs::write(&path, text).unwrap();
    cluster.spawn(0);
    cluster.spawn(1);
    let mut p = cluster.client(0).await;
    for sql in [
        "manamboara tahiry d",
        "ampiasao d",
        "manamboara efitra isa10 (ISA(0,10))",
        "manamboara tabilao t (a isa10, b LAHATSORATRA(1,3))",
        "manampia ao t (a, b) sanda (5, 'ab')",
    ] {
        p.execute(sql).await.unwrap();
    }
    let started = std::time::Instant::now();
    let mut s = cluster.client(1).await;
    loop {
        // A copy taken between the domain and the table has the domain only: wait for both.
        let copied = s.execute("ampiasao d").await.is_ok()
            && s.query("asehoy ny efitra")
                .await
                .is_ok_and(|rs| rs.rows.concat() == [json!("isa10")])
            && s.query("asehoy ny tabilao")
                .await
                .is_ok_and(|rs| rs.rows.concat() == [json!("t")]);
        if copied {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no copy: {}",
            cluster.log(1)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let schema = s
        .query("SELECT sql FROM sqlite_schema WHERE name = 't'")
        .await
        .unwrap();
    let sql = schema.rows[0][0].as_str().unwrap_or_default().to_string();
    assert!(sql.contains("dirkdb_domain_violation"), "{sql}");
}

/// Reads a connection's answers until `END` lines number `answers`, or the peer closes.
async fn read_answers(stream: &mut tokio::net::TcpStream, answers: usize) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while text.lines().filter(|l| *l == "END").count() < answers {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer, not silence")
            .unwrap();
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

#[tokio::test]
async fn backslash_literals_and_unfinished_statements_get_answers() {
    use tokio::io::AsyncWriteExt;
    let server = ServerProcess::start();
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"alaivo 'a\\'b;c' antso x; SELECT 'a\\';")
        .await
        .unwrap();
    let text = read_answers(&mut stream, 2).await;
    assert!(text.contains(r#""rows":[["a'b;c"]]"#), "{text}");
    assert!(text.contains(r#""rows":[["a\\"]]"#), "{text}");
    // An unterminated literal at the end of the input: an error, not a wait.
    stream.write_all(b"alaivo 'abc").await.unwrap();
    stream.shutdown().await.unwrap();
    let text = read_answers(&mut stream, 1).await;
    assert!(
        text.contains("Hadisoana : the input ended inside a statement"),
        "{text}"
    );
}

#[tokio::test]
async fn dirkdb_answers_come_in_pages_of_twenty_rows_everywhere() {
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let mut c = cluster.proxy_client().await;
    let values: Vec<String> = (1..=45).map(|i| format!("({i})")).collect();
    for sql in [
        "manamboara tahiry pejy".to_string(),
        "ampiasao pejy".to_string(),
        "manamboara tabilao t (n ISA(null,null))".to_string(),
        format!("manampia ao t (n) sanda {}", values.join(", ")),
    ] {
        c.execute(&sql).await.unwrap();
    }
    let cache = CacheProcess::start(&cluster, 3000, 200, &[]);
    cache.wait_for_feed();
    let mut server = cluster.client(0).await;
    server.execute("ampiasao pejy").await.unwrap();
    let mut cached = cache.client().await;
    cached.execute("ampiasao pejy").await.unwrap();
    for (through, client) in [
        ("server", &mut server),
        ("proxy", &mut c),
        ("cache", &mut cached),
    ] {
        let rows = client.query("alaivo n #ao@ t").await.unwrap();
        assert_eq!((rows.rows.len(), rows.pages), (45, 3), "{through}");
        // English SQL keeps the configured page size (500 by default).
        let rows = client.query("SELECT n FROM t").await.unwrap();
        assert_eq!((rows.rows.len(), rows.pages), (45, 1), "{through}");
        let empty = client
            .query("alaivo n #ao@ t #rehefa n > 100")
            .await
            .unwrap();
        assert_eq!((empty.rows.len(), empty.pages), (0, 1), "{through}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_operations_answer_in_dirkdb_order() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    for sql in [
        "manamboara tahiry filaharana",
        "ampiasao filaharana",
        "manamboara tabilao a (n ISA(null,null))",
        "manamboara tabilao b (n ISA(null,null))",
        "manampia ao a (n) sanda (3), (1), (3), (2), (null)",
        "manampia ao b (n) sanda (5), (2), (4), (1), (null)",
    ] {
        c.execute(sql).await.unwrap();
    }
    let rows = |r: dirkdb_client::ResultSet| -> Vec<Value> {
        r.rows.into_iter().map(|r| r[0].clone()).collect()
    };
    // Union: first occurrences, left rows then right rows (SQLite's UNION would sort them).
    let union = c
        .query("alaivo n #ao@ a #ankambana@ alaivo n #ao@ b")
        .await
        .unwrap();
    assert_eq!(
        union.name.as_deref(),
        Some("a_projection_Union_b_projection")
    );
    assert_eq!(
        rows(union),
        [
            json!(3.0),
            json!(1.0),
            json!(2.0),
            Value::Null,
            json!(5.0),
            json!(4.0)
        ]
    );
    // Intersection: distinct left rows found on the right, in left order; null equals null.
    let inter = c.query("alaivo n #ao@ a ^ alaivo n #ao@ b").await.unwrap();
    assert_eq!(rows(inter), [json!(1.0), json!(2.0), Value::Null]);
    // Difference: every left row not on the right, duplicates kept, in left order.
    let diff = c
        .query("alaivo * #ao@ a #analana@ alaivo * #ao@ b")
        .await
        .unwrap();
    assert_eq!(diff.columns[0].origin.as_deref(), Some("a"));
    assert_eq!(rows(diff), [json!(3.0), json!(3.0)]);
    // Inside a derived table too (SQLite's UNION would sort, its EXCEPT drop the duplicates).
    let derived = c
        .query("alaivo n #ao@ (alaivo n #ao@ a #ankambana@ alaivo n #ao@ b) q")
        .await
        .unwrap();
    assert_eq!(
        derived.name.as_deref(),
        Some("a_projection_Union_b_projection_projection")
    );
    assert_eq!(
        rows(derived),
        [
            json!(3.0),
            json!(1.0),
            json!(2.0),
            Value::Null,
            json!(5.0),
            json!(4.0)
        ]
    );
    let derived = c
        .query("alaivo n #ao@ (alaivo * #ao@ a #analana@ alaivo * #ao@ b) q #rehefa n > 0")
        .await
        .unwrap();
    assert_eq!(rows(derived), [json!(3.0)], "WHERE removes the duplicate");
    let derived = c
        .query("alaivo * #ao@ (alaivo * #ao@ a #analana@ alaivo * #ao@ b) q #tonona:avia@ b #ka q.n = b.n")
        .await
        .unwrap();
    assert_eq!(derived.rows, [[json!(3.0), Value::Null]]);
    let e = server_error(
        c.execute("alaivo n #ao@ (alaivo n, n #ao@ a #ankambana@ alaivo n #ao@ b) q")
            .await,
    );
    assert_eq!(e, "a_projection(2) AND b_projection(1)");
    // Chained, with a parenthesised right operand.
    let chain = c
        .query("alaivo n #ao@ b #-@ (alaivo n #ao@ a #+@ alaivo n #ao@ a) #+@ alaivo n #ao@ a")
        .await
        .unwrap();
    assert_eq!(
        rows(chain),
        [
            json!(5.0),
            json!(4.0),
            json!(3.0),
            json!(1.0),
            json!(2.0),
            Value::Null
        ]
    );
}

/// A primary, one replica and the proxy, with `limits.maxStatementBytes` = `limit`.
fn cluster_with_statement_limit(limit: usize) -> Cluster {
    let mut cluster = Cluster::configure_with(1, OPLOG, "{}");
    let path = cluster.dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).expect("config");
    let mut config: Value = serde_json::from_str(&text).expect("config json");
    config["limits"] = json!({ "maxStatementBytes": limit });
    std::fs::write(&path, config.to_string()).expect("write config");
    cluster.spawn_all_with_proxy();
    cluster
}

#[tokio::test]
async fn a_statement_over_the_limit_is_refused_at_once_and_the_session_goes_on() {
    use tokio::io::AsyncWriteExt;
    let cluster = cluster_with_statement_limit(1000);
    let mut setup = cluster.proxy_client().await;
    for sql in [
        "manamboara tahiry fetra",
        "ampiasao fetra",
        "manamboara tabilao t (n ISA(null,null))",
        "manampia ao t (n) sanda (1)",
    ] {
        setup.execute(sql).await.unwrap();
    }
    let proxy = format!("127.0.0.1:{}", cluster.proxy.port);
    for (through, addr) in [("server", cluster.addr(0)), ("proxy", proxy)] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"ampiasao fetra;").await.unwrap();
        read_answers(&mut stream, 1).await;
        // Doubles are written as DirkDB's Java server writes them.
        stream
            .write_all(b"alaivo 12345678 antso a, 0.0001 antso b, 0 - 0 antso c, 7 / 2 antso d, 10000000 * 100 antso e;")
            .await
            .unwrap();
        let text = read_answers(&mut stream, 1).await;
        assert!(
            text.contains(r#""rows":[[1.2345678E7,1.0E-4,0.0,3.5,1.0E9]]"#),
            "{through}: {text}"
        );
        // An unterminated DirkDB literal, no `;` and no end of input: answered at once.
        stream.write_all(b"alaivo 'a\\'").await.unwrap();
        stream.write_all(&[b'x'; 2000]).await.unwrap();
        let text = read_answers(&mut stream, 1).await;
        assert!(
            text.contains("Hadisoana : statement refused after 1001 bytes: it is over the limit of 1000 bytes (limits.maxStatementBytes); it went over inside a string literal opened with '"),
            "{through}: {text}"
        );
        // What follows inside the literal is the refused statement's: never run on its own.
        stream
            .write_all(b"; ravao ny tabilao t; ';alaivo n #ao@ t;")
            .await
            .unwrap();
        let text = read_answers(&mut stream, 1).await;
        assert!(text.contains(r#""rows":[[1.0]]"#), "{through}: {text}");
        // An English statement over the limit whose literal holds a `;` past the limit: one
        // refusal, and the next statement answers.
        let big = format!(
            "SELECT '{}; DROP TABLE t; '; alaivo n #ao@ t;",
            "y".repeat(1500)
        );
        stream.write_all(big.as_bytes()).await.unwrap();
        let text = read_answers(&mut stream, 2).await;
        assert!(
            text.contains("over the limit of 1000 bytes (limits.maxStatementBytes)"),
            "{through}: {text}"
        );
        assert!(text.contains(r#""rows":[[1.0]]"#), "{through}: {text}");
        // A comment that never ends is refused too.
        stream.write_all(b"/* ").await.unwrap();
        stream.write_all(&[b'c'; 1200]).await.unwrap();
        let text = read_answers(&mut stream, 1).await;
        assert!(
            text.contains("it went over inside a comment"),
            "{through}: {text}"
        );
        stream.write_all(b"*/; alaivo n #ao@ t;").await.unwrap();
        let text = read_answers(&mut stream, 1).await;
        assert!(text.contains(r#""rows":[[1.0]]"#), "{through}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_answer_in_dirkdb_order_and_natural_joins_pair_nulls() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    for sql in [
        "manamboara tahiry tonona",
        "ampiasao tonona",
        "manamboara tabilao ja (k ISA(null,null), a LAHATSORATRA(null,null))",
        "manamboara tabilao jb (k ISA(null,null), b LAHATSORATRA(null,null))",
        "manampia ao ja (k, a) sanda (1, 'a1'), (2, 'a2'), (3, 'a3'), (4, 'a4')",
        "manampia ao jb (k, b) sanda (3, 'b3'), (5, 'b5'), (1, 'b1')",
        "manamboara tabilao na (k ISA(null,null), x LAHATSORATRA(null,null))",
        "manamboara tabilao nb (y LAHATSORATRA(null,null), k ISA(null,null))",
        "manampia ao na (k, x) sanda (1, 'x1'), (null, 'x0'), (2, 'x2')",
        "manampia ao nb (y, k) sanda ('y0', null), ('y1', 1), ('y9', 9)",
    ] {
        c.execute(sql).await.unwrap();
    }
    let rows = |r: dirkdb_client::ResultSet| -> Vec<Value> {
        r.rows.into_iter().map(Value::Array).collect()
    };
    // Left join: the matches in product order, then the unmatched left rows.
    let left = c
        .query("alaivo ja.k, a, b #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k")
        .await
        .unwrap();
    assert_eq!(left.name.as_deref(), Some("ja_left_join_jb_projection"));
    assert_eq!(
        rows(left),
        [
            json!([1.0, "a1", "b1"]),
            json!([3.0, "a3", "b3"]),
            json!([2.0, "a2", null]),
            json!([4.0, "a4", null])
        ]
    );
    // Right join: the matches (left-major), then the unmatched right rows in right order.
    let right = c
        .query("alaivo a, b #ao@ ja x #tonona:avanana@ jb y #ka x.k = y.k")
        .await
        .unwrap();
    assert_eq!(
        rows(right),
        [
            json!(["a1", "b1"]),
            json!(["a3", "b3"]),
            json!([null, "b5"])
        ]
    );
    // Full join: left join ∪ right join; `*` lists every column, without any helper column.
    let full = c
        .query("alaivo * #ao@ ja #tonona:feno@ jb #ka ja.k = jb.k")
        .await
        .unwrap();
    let labels: Vec<String> = full.columns.iter().map(column_label).collect();
    assert_eq!(labels, ["k@ja", "a@ja", "k@jb", "b@jb"]);
    assert_eq!(
        rows(full),
        [
            json!([1.0, "a1", 1.0, "b1"]),
            json!([3.0, "a3", 3.0, "b3"]),
            json!([2.0, "a2", null, null]),
            json!([4.0, "a4", null, null]),
            json!([null, null, 5.0, "b5"])
        ]
    );
    // Chained: each outer join's padded rows follow its matches.
    let chain = c
        .query("alaivo ja.k, b, y #ao@ ja #tonona:avia@ jb #ka ja.k = jb.k #tonona:avia@ nb #ka nb.k = ja.k")
        .await
        .unwrap();
    assert_eq!(
        rows(chain),
        [
            json!([1.0, "b1", "y1"]),
            json!([3.0, "b3", null]),
            json!([2.0, null, null]),
            json!([4.0, null, null])
        ]
    );
    // A natural join pairs null with null (DirkDB's row equality), keeps the left's columns
    // then the right's others, and its `#ka` sees the common column unqualified.
    let natural = c
        .query("alaivo * #ao@ na #tonona:natoraly@ nb")
        .await
        .unwrap();
    let labels: Vec<String> = natural.columns.iter().map(column_label).collect();
    assert_eq!(labels, ["k@na", "x@na", "y@nb"]);
    assert_eq!(
        rows(natural),
        [json!([1.0, "x1", "y1"]), json!([null, "x0", "y0"])]
    );
    let filtered = c
        .query("alaivo k, y #ao@ na #tonona:natoraly@ nb #ka k dia null")
        .await
        .unwrap();
    assert_eq!(rows(filtered), [json!([null, "y0"])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_plans_follow_schema_changes_and_recreated_databases() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    let join = "alaivo * #ao@ a #tonona:avia@ b #ka a.n = b.n";
    let labels = |r: &dirkdb_client::ResultSet| -> Vec<String> {
        r.columns.iter().map(column_label).collect()
    };
    for sql in [
        "manamboara tahiry memo",
        "ampiasao memo",
        "manamboara tabilao a (n ISA(null,null))",
        "manamboara tabilao b (n ISA(null,null))",
        "manampia ao a (n) sanda (1), (2)",
        "manampia ao b (n) sanda (2)",
    ] {
        c.execute(sql).await.unwrap();
    }
    let first = c.query(join).await.unwrap();
    assert_eq!(labels(&first), ["n@a", "n@b"]);
    assert_eq!(c.query(join).await.unwrap(), first, "the remembered plan");
    // A schema change (English SQL here) is seen at once.
    c.execute("ALTER TABLE a ADD COLUMN m").await.unwrap();
    let altered = c.query(join).await.unwrap();
    assert_eq!(labels(&altered), ["n@a", "m@a", "n@b"]);
    // A database dropped and created again under its name, its schema at the same version as
    // the first one's when the plan was remembered: planned afresh.
    for sql in [
        "ravao ny tahiry memo",
        "manamboara tahiry memo",
        "ampiasao memo",
        "manamboara tabilao a (n ISA(null,null), x LAHATSORATRA(null,null))",
        "manamboara tabilao b (n ISA(null,null))",
        "ALTER TABLE a ADD COLUMN m",
        "manampia ao a (n, x) sanda (2, 'x')",
    ] {
        c.execute(sql).await.unwrap();
    }
    let again = c.query(join).await.unwrap();
    assert_eq!(labels(&again), ["n@a", "x@a", "m@a", "n@b"]);
    assert_eq!(
        again.rows,
        [[json!(2.0), json!("x"), Value::Null, Value::Null]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_enum_members_come_in_java_hash_order() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    for sql in [
        "manamboara tahiry vondrona",
        "ampiasao vondrona",
        "manamboara tabilao g (c ISA(null,null), v ISA(null,null))",
        "manampia ao g (c, v) sanda (4, 1), (3, 1), (2, 1), (1, 1), (4, 2)",
        "manamboara tabilao e (niveau TANISA('L3', 'M1', 'L2'))",
    ] {
        c.execute(sql).await.unwrap();
    }
    // GroupKey hashes (31 + Double.hashCode) put 4.0, 2.0 and 1.0 in java.util.HashMap's
    // bucket 15 (first seen in that order) and 3.0 in bucket 7.
    let groups = c
        .query("alaivo c, count(v) antso n #ao@ g #vondrona (c)")
        .await
        .unwrap();
    assert_eq!(
        groups.rows,
        [
            [json!(3.0), json!(1.0)],
            [json!(4.0), json!(2.0)],
            [json!(2.0), json!(1.0)],
            [json!(1.0), json!(1.0)]
        ]
    );
    let e = server_error(c.execute("manampia ao e (niveau) sanda ('L1')").await);
    assert_eq!(
        e,
        "can not convert into domain d : Domain{DomainEnum{allowedValues=[M1, L2, L3], size=3}} at values ind=0 { \"L1\" } "
    );
}

/// Keys that collide: twelve `#vondrona` keys in one bucket of java.util.HashMap make it double
/// its table twice (a bin of nine in a table under 64) and then turn the bin into a tree, whose
/// root comes first and whose new nodes follow their tree parents; a `TANISA` whose members
/// collide the same way is displayed in that order. Expected orders printed by the JDK 17's own
/// HashMap and HashSet (a set built by `add` in the order given, and read back once, as DirkDB's
/// table file is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_bins_of_java_hash_maps_order_groups_and_enum_members() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    let keys = [
        1, 16, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 1001, 1002, 1003, 1004, 1005, 1006,
    ];
    let rows: Vec<String> = keys.iter().map(|k| format!("({k}, 1)")).collect();
    for sql in [
        "manamboara tahiry hazo".to_string(),
        "ampiasao hazo".into(),
        "manamboara tabilao g (c ISA(null,null), v ISA(null,null))".into(),
        format!("manampia ao g (c, v) sanda {}", rows.join(", ")),
        "manamboara tabilao e (m TANISA(m0, m619, m718, m817, m839, m916, m938, m1019, m1118, m1217, m1239, m1316, 2.5, x))".into(),
    ] {
        c.execute(&sql).await.unwrap();
    }
    let groups = c
        .query("alaivo c, count(v) antso n #ao@ g #vondrona (c)")
        .await
        .unwrap();
    let order: Vec<f64> = groups.rows.iter().map(|r| r[0].as_f64().unwrap()).collect();
    assert_eq!(
        order,
        [
            1001.0, 1002.0, 1003.0, 1004.0, 1005.0, 1006.0, 261.0, 1.0, 16.0, 256.0, 257.0, 258.0,
            259.0, 260.0, 262.0, 263.0, 264.0, 265.0
        ]
    );
    let e = server_error(c.execute("manampia ao e (m) sanda ('m1')").await);
    assert_eq!(
        e,
        "can not convert into domain d : Domain{DomainEnum{allowedValues=[2.5, m817, m0, m619, m718, m839, m916, m938, m1019, m1316, ...], size=14}} at values ind=0 { \"m1\" } "
    );
}
