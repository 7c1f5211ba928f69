//! Loader read throughput versus `cat` over a shard directory (default: the demo's).
//!
//! `cargo run --release --workspace --example bench_read -- work/demo/shards [repeats]`
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "work/demo/shards".into()));
    let repeats = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    match mg3d_shard::bench_read(&dir, repeats) {
        Ok(r) => println!("{}", serde_json::to_string_pretty(&r).expect("json")),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
