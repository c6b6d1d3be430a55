//! Runs one front-end operation `N` times, for instruction counts under
//! `valgrind --tool=callgrind` (repeatable on a loaded machine, unlike criterion's times):
//!
//! ```sh
//! cargo build --release -p dirkdb-core --example dirkdb_instructions
//! for n in 1000 2000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/dirkdb_instructions parse_and_plan_select_join $n 2>&1 | grep refs
//! done
//! ```
//!
//! The difference of the two counts divided by 1000 is the cost of one operation (start-up and
//! the first, memo-filling call cancel out). Operations: see [`OPERATIONS`].

use std::hint::black_box;

use dirkdb_core::sql::dirkdb::{self, parser::parse_statement, NoSchema};
use dirkdb_core::sql::{malagasy, translate};

const POINT_SELECT: &str = "SELECT * FROM utilisateurs WHERE id = 42";
const DIRK_JOIN: &str =
    "alaivo m.anarana, n.naoty antso isa #ao@ mpianatra m #tonona:avia@ naoty_tb n \
     #ka m.id = n.id #rehefa n.naoty > 10 #ary m.anarana dia tsy null";
const DIRK_INSERT: &str =
    "manampia #ao@ mpianatra (id, anarana, sokajy) #sanda (1, 'Rabe', 'L1'), (2, \"Rasoa\", 'L2')";

/// Every operation this example can repeat, by name.
const OPERATIONS: &[&str] = &[
    "route_english_point_select",
    "translate_english_point_select",
    "parse_and_plan_select_join",
    "parse_and_plan_insert",
    "translate_select_join",
    "translate_insert",
    "before_token_translation_select_join",
    "before_token_translation_insert",
];

fn run_once(operation: &str) -> usize {
    match operation {
        "route_english_point_select" => {
            usize::from(dirkdb::route(black_box(POINT_SELECT)) == dirkdb::Route::English)
        }
        "translate_english_point_select" => translate(black_box(POINT_SELECT)).len(),
        "parse_and_plan_select_join" | "parse_and_plan_insert" => {
            let sql = if operation.ends_with("join") {
                DIRK_JOIN
            } else {
                DIRK_INSERT
            };
            parse_statement(black_box(sql))
                .ok()
                .and_then(|stmt| dirkdb::plan(&stmt, &NoSchema).ok())
                .map_or(0, |plan| plan.steps.len())
        }
        "translate_select_join" => translate(black_box(DIRK_JOIN)).len(),
        "translate_insert" => translate(black_box(DIRK_INSERT)).len(),
        "before_token_translation_select_join" => malagasy::translate(black_box(DIRK_JOIN)).len(),
        "before_token_translation_insert" => malagasy::translate(black_box(DIRK_INSERT)).len(),
        _ => 0,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let operation = args.next().unwrap_or_default();
    let times: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    if !OPERATIONS.contains(&operation.as_str()) {
        eprintln!("operations: {}", OPERATIONS.join(", "));
        std::process::exit(2);
    }
    let mut total = 0;
    for _ in 0..times {
        total += run_once(&operation);
    }
    println!("{operation} x{times}: {total}");
}
