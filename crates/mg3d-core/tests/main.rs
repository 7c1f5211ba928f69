//! Integration tests of `mg3d-core`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test core_tests <module>::`.

mod engine;
mod pipeline_errors;
mod tables;
