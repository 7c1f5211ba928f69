//! Integration tests of `mg3d-eval`, linked into one binary. Run one group with
//! `cargo test --workspace --test eval_tests <module>::`.

mod entity_align;
mod metrics;
