//! Integration tests of `mg3d-curate`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test curate_tests <module>::`.

mod select;
