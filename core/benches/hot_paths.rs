//! Micro-benchmarks of `dirkdb-core`'s per-request hot paths (issue #7).
//!
//! * `frame/*`: encoding and decoding response frames. A "relation" response is what a server
//!   sends for a query: one page frame, `RELATION_JSON_END`, then the `OK` message.
//! * `splitter/*`: framing a 100-statement script into statements.
//! * `translate/*`: the Malagasy keyword translation every statement goes through.
//! * `classify/*`: the proxy's routing decision (translation + `sqlparser` parse).
//!
//! Run with `cargo bench -p dirkdb-core --bench hot_paths`; figures are in `bench/MICRO.md`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dirkdb_core::frame::{encode_frame, Column, Frame, FrameDecoder, PageFrame, RelationPage};
use dirkdb_core::sql::classify::{classify, StatementClass};
use dirkdb_core::sql::{split_script, translate, SplitItem, StatementSplitter};
use serde_json::{json, Value};

/// The size of one TCP segment's payload on an Ethernet path (MSS with a 1500-byte MTU).
const SEGMENT: usize = 1460;
/// The decoder bound the client uses by default (`limits.maxStatementBytes`).
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

const TOWNS: [&str; 5] = [
    "Antananarivo",
    "Toamasina",
    "Antsirabe",
    "Fianarantsoa",
    "Mahajanga",
];

/// One row of `utilisateurs`: about 100 bytes of JSON.
fn row(i: u64) -> Vec<Value> {
    vec![
        json!(i),
        json!(format!("Rakotomalala Andrianina {i:05}")),
        json!(format!("andrianina.rakotomalala{i:05}@example.mg")),
        json!(18 + i % 60),
        json!(TOWNS[(i % 5) as usize]),
        json!(i % 3 == 1),
    ]
}

fn relation_page(rows: u64) -> RelationPage {
    let columns = ["id", "nom", "email", "age", "ville", "actif"]
        .iter()
        .map(|name| Column {
            name: (*name).to_string(),
            origin: Some("utilisateurs".to_string()),
        })
        .collect();
    RelationPage {
        name: Some("utilisateurs".to_string()),
        page: 1,
        total_pages: 1,
        columns,
        rows: (0..rows).map(row).collect(),
    }
}

/// The frames of a one-page relation response.
fn relation_response(rows: u64) -> Vec<Frame> {
    let page = PageFrame::from_page(&relation_page(rows)).expect("page serializes");
    vec![
        Frame::Page(page),
        Frame::RelationEnd,
        Frame::Message("OK".to_string()),
    ]
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for frame in frames {
        encode_frame(frame, &mut out);
    }
    out
}

/// Decodes a whole response delivered in `chunk`-byte reads, the way `ClientConnection` does:
/// each read is appended to the (reused) read buffer, then every whole frame is taken out.
fn decode_in_chunks(wire: &[u8], chunk: usize, buf: &mut BytesMut) -> usize {
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    buf.clear();
    let mut frames = 0;
    for piece in wire.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(frame) = decoder.decode(buf).expect("valid frames") {
            black_box(&frame);
            frames += 1;
        }
    }
    assert!(!decoder.is_mid_frame(buf));
    frames
}

fn bench_frames(c: &mut Criterion) {
    let message = vec![Frame::Message("OK".to_string())];
    let cases = [
        ("message_ok", message),
        ("relation_1_row", relation_response(1)),
        ("relation_500_rows", relation_response(500)),
    ];
    let mut group = c.benchmark_group("frame");
    for (name, frames) in &cases {
        let wire = encode_all(frames);
        let expected = frames.len();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        assert_eq!(decode_in_chunks(&wire, wire.len(), &mut buf), expected);
        assert_eq!(decode_in_chunks(&wire, SEGMENT, &mut buf), expected);
        group.throughput(Throughput::Bytes(wire.len() as u64));

        // The server's write path: frames into a reused buffer (`ServerConnection::write_frame`).
        let mut out = BytesMut::with_capacity(wire.len());
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                for frame in frames {
                    encode_frame(black_box(frame), &mut out);
                }
                black_box(out.len())
            })
        });
        // Both decode cases include copying the bytes into the read buffer (reused, as the
        // client's is), as a socket read does; only the number of reads differs.
        group.bench_function(format!("decode_whole/{name}"), |b| {
            b.iter(|| decode_in_chunks(black_box(&wire), wire.len(), &mut buf))
        });
        if wire.len() > SEGMENT {
            group.bench_function(format!("decode_1460B_segments/{name}"), |b| {
                b.iter(|| decode_in_chunks(black_box(&wire), SEGMENT, &mut buf))
            });
        }
    }
    group.finish();

    // What surrounds the codec: the server serializes each page to JSON, and a client that
    // wants values (rather than passing the text on) parses it back.
    let mut group = c.benchmark_group("page_json");
    let page = relation_page(500);
    let frame = PageFrame::from_page(&page).expect("page serializes");
    group.throughput(Throughput::Bytes(frame.json().len() as u64));
    group.bench_function("serialize/500_rows", |b| {
        b.iter(|| PageFrame::from_page(black_box(&page)).expect("serializes"))
    });
    group.bench_function("parse/500_rows", |b| {
        b.iter_batched_ref(
            || frame.clone(),
            |f| f.parse().expect("parses"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A 100-statement script: DDL, inserts (some with `;` inside literals), comments, updates,
/// selects and one trigger whose body holds `;`s.
fn script_100() -> String {
    let mut s = String::from(
        "-- DirkDB sample script\n\
         CREATE TABLE utilisateurs (id INTEGER PRIMARY KEY, nom TEXT, email TEXT, age INTEGER);\n\
         CREATE TABLE journal (id INTEGER PRIMARY KEY, quoi TEXT);\n\
         CREATE TRIGGER t_log AFTER INSERT ON utilisateurs BEGIN\n  \
         INSERT INTO journal (quoi) VALUES ('nouveau; ' || new.nom);\n  \
         UPDATE journal SET quoi = quoi || ';' WHERE id = last_insert_rowid();\nEND;\n",
    );
    let mut n = 3;
    let mut i = 0;
    while n < 100 {
        let stmt = match i % 6 {
            0..=2 => format!(
                "INSERT INTO utilisateurs (nom, email, age) VALUES ('Rabe {i}; fils', 'rabe{i}@example.mg', {});\n",
                18 + i % 50
            ),
            3 => format!("/* mise à jour {i} */ UPDATE utilisateurs SET age = age + 1 WHERE id = {i};\n"),
            4 => format!("SELECT nom, \"email\" FROM utilisateurs WHERE nom LIKE '%;{i}%'; -- fin\n"),
            _ => format!("alaivo * ao utilisateurs rehefa age > {i} ary nom dia tsy NULL;\n"),
        };
        s.push_str(&stmt);
        n += 1;
        i += 1;
    }
    s
}

fn bench_splitter(c: &mut Criterion) {
    let script = script_100();
    assert_eq!(split_script(&script).statements.len(), 100);
    let mut group = c.benchmark_group("splitter");
    group.throughput(Throughput::Bytes(script.len() as u64));
    group.bench_function("split_script/100_statements", |b| {
        b.iter(|| split_script(black_box(&script)))
    });
    // The server's read path: bytes pushed as 1460-byte segments, statements drained after each.
    group.bench_function("splitter_1460B_segments/100_statements", |b| {
        b.iter(|| {
            let mut splitter = StatementSplitter::new(MAX_FRAME_BYTES);
            let mut count = 0;
            for piece in black_box(&script).as_bytes().chunks(SEGMENT) {
                splitter.push(piece);
                while let Some(item) = splitter.next_item() {
                    if let SplitItem::Statement(bytes) = item {
                        black_box(bytes);
                        count += 1;
                    }
                }
            }
            count
        })
    });
    group.finish();
}

const POINT_SELECT: &str = "SELECT * FROM utilisateurs WHERE id = 42";
const INSERT: &str =
    "INSERT INTO utilisateurs (nom, email, age) VALUES ('Rabe', 'rabe@example.mg', 31)";
const JOIN_SUBQUERY: &str = "SELECT u.nom, c.total FROM utilisateurs u JOIN commandes c ON c.user_id = u.id \
     WHERE c.total > (SELECT avg(total) FROM commandes WHERE ville = 'Antananarivo') ORDER BY c.total DESC LIMIT 20";
const MALAGASY: &str = "alaivo * ao utilisateurs rehefa age > 30 ary nom dia tsy NULL";
/// About 600 bytes mixing Malagasy and English, with literals and a comment to copy through.
const LONG_MIXED: &str = "/* tatitra isam-bolana */ alaivo u.nom antso anarana, u.email, count(c.id) antso isa_commandes, \
     sum(c.total) AS total_lany ao utilisateurs u tonona:avia commandes c #ka c.user_id = u.id \
     LEFT JOIN villes v ON v.nom = u.ville rehefa u.age > 30 ary u.nom dia tsy NULL \
     na (u.ville = 'ao Antananarivo; rehefa alaivo' AND c.total >= 1000) \
     ary c.created_at BETWEEN '2026-01-01' AND '2026-01-31' ary \"ao\" != 'tsy' \
     vondrona u.nom, u.email HAVING count(c.id) > 2 ORDER BY total_lany DESC fetra 50";

fn bench_translate(c: &mut Criterion) {
    assert_eq!(translate(POINT_SELECT), POINT_SELECT);
    assert_eq!(
        translate(MALAGASY),
        "SELECT * FROM (SELECT DISTINCT * FROM `utilisateurs`) AS `utilisateurs` \
         WHERE ((`age` > 30.0) AND (`nom` IS NOT NULL))"
    );
    assert!(translate(LONG_MIXED).contains("LEFT JOIN commandes c ON"));
    let mut group = c.benchmark_group("translate");
    for (name, sql) in [
        ("english_point_select", POINT_SELECT),
        ("malagasy_select", MALAGASY),
        ("long_mixed", LONG_MIXED),
    ] {
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| b.iter(|| translate(black_box(sql))));
    }
    group.finish();
}

fn bench_classify(c: &mut Criterion) {
    let cases = [
        ("point_select", POINT_SELECT, StatementClass::Read),
        ("insert", INSERT, StatementClass::Write),
        ("join_subquery", JOIN_SUBQUERY, StatementClass::Read),
        ("malagasy_select", MALAGASY, StatementClass::Read),
    ];
    let mut group = c.benchmark_group("classify");
    for (name, sql, expected) in cases {
        assert_eq!(classify(sql), expected, "{name}");
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| b.iter(|| classify(black_box(sql))));
    }
    group.finish();
}

/// DirkDB's grammar: a select with a join and an insert, as DirkDB's course scripts write them.
const DIRK_JOIN: &str =
    "alaivo m.anarana, n.naoty antso isa #ao@ mpianatra m #tonona:avia@ naoty_tb n \
     #ka m.id = n.id #rehefa n.naoty > 10 #ary m.anarana dia tsy null";
const DIRK_INSERT: &str =
    "manampia #ao@ mpianatra (id, anarana, sokajy) #sanda (1, 'Rabe', 'L1'), (2, \"Rasoa\", 'L2')";

/// A schema that knows nothing but has a version, so that plans are remembered.
struct VersionedSchema;

impl dirkdb_core::sql::dirkdb::Schema for VersionedSchema {
    fn database(&self) -> Option<&str> {
        Some("main")
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
    fn version(&self) -> Option<i64> {
        Some(1)
    }
}

fn bench_dirkdb(c: &mut Criterion) {
    use dirkdb_core::sql::dirkdb::{self, parser::parse_statement, NoSchema};
    assert_eq!(dirkdb::route(POINT_SELECT), dirkdb::Route::English);
    let mut group = c.benchmark_group("dirkdb");
    group.bench_function("route_english_point_select", |b| {
        b.iter(|| dirkdb::route(black_box(POINT_SELECT)))
    });
    for (name, sql) in [("select_join", DIRK_JOIN), ("insert", DIRK_INSERT)] {
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(format!("parse_and_plan/{name}"), |b| {
            b.iter(|| {
                let stmt = parse_statement(black_box(sql)).expect("parses");
                dirkdb::plan(&stmt, &NoSchema).expect("plans")
            })
        });
        group.bench_function(format!("route_memoized/{name}"), |b| {
            b.iter(|| dirkdb::route(black_box(sql)))
        });
        // What the server pays per run once the plan is remembered (its schema lookups are a
        // no-op here: the schema answers a fixed version, no database work).
        let dirkdb::Route::Dirk(stmt) = dirkdb::route(sql) else {
            panic!("{sql} is DirkDB's")
        };
        group.bench_function(format!("plan_memoized/{name}"), |b| {
            b.iter(|| dirkdb::plan_memoized(black_box(&stmt), &VersionedSchema, 1).expect("plans"))
        });
        group.bench_function(format!("translate/{name}"), |b| {
            b.iter(|| translate(black_box(sql)))
        });
        // Before the front end: these statements went through the token substitution of
        // `sql::malagasy` (still the mixed form's path), whose output SQLite then refused.
        group.bench_function(format!("before_token_translation/{name}"), |b| {
            b.iter(|| dirkdb_core::sql::malagasy::translate(black_box(sql)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_dirkdb,
    bench_frames,
    bench_splitter,
    bench_translate,
    bench_classify
);
criterion_main!(benches);
