//! Integration tests of `mg3d-synth`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test synth_tests <module>::`.

mod python_crosscheck;
mod synth;
