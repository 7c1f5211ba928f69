//! Integration tests of `mg3d-shard`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test shard_tests <module>::`.

mod common;
mod loader;
mod python;
mod stage;
