//! Runs the `decide/default` benchmark's decision a fixed number of times, for instruction
//! counts that do not depend on the machine's load:
//!
//! ```sh
//! cargo build --release -p portcullis-policy-store --example decide_loop
//! valgrind --tool=callgrind target/release/examples/decide_loop 1000            # evaluated
//! valgrind --tool=callgrind target/release/examples/decide_loop 1000 --cached   # from cache
//! ```
//!
//! Divide the total instruction count by the number of decisions (the snapshot build is a
//! fixed cost; run with two counts and subtract to remove it).

#[path = "../benches/fixtures/mod.rs"]
#[expect(dead_code, reason = "the loop uses the default state only")]
mod fixtures;

use std::hint::black_box;

use fixtures::{AliceReadsD1, default_state, fail};
use portcullis_engine::decision::{decide, decide_uncached};
use portcullis_engine::snapshot::Snapshot;

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1000), |n| n.parse())
        .unwrap_or_else(|e| fail(&format!("the decision count: {e}")));
    let snapshot = Snapshot::build(default_state(), 0).unwrap_or_else(|e| fail(&e.to_string()));
    let question = AliceReadsD1::new();
    let request = question.request();
    let cached = std::env::args().nth(2).is_some_and(|a| a == "--cached");
    let run = if cached { decide } else { decide_uncached };
    let mut allowed = 0_u64;
    for _ in 0..count {
        allowed += u64::from(run(black_box(&snapshot), black_box(&request)).allowed);
    }
    println!("{allowed} of {count} allowed");
}
