//! Integration tests of `mg3d-report`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test report_tests <module>::`.

mod entities_synth;
mod eval_sets;
mod fuzz;
mod reports_synth;
mod tokens_reference;
mod tokens_train;
