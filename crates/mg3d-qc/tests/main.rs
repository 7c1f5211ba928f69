//! Integration tests of `mg3d-qc`, linked into one binary. Run one group with
//! `cargo test --workspace --test qc_tests <module>::`.

mod page;
