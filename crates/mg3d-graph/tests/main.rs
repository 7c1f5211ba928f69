//! Integration tests of `mg3d-graph`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test graph_tests <module>::`.

mod graph_synth;
mod similarity;
