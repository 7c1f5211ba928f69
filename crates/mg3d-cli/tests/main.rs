//! Integration tests of `mg3d-cli`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test cli_tests <module>::`.

mod cli;
mod curate;
mod eval;
mod hostile;
mod partitions;
