//! Integration tests of `mg3d-volume`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test volume_tests <module>::`.

mod fuzz;
mod ingest_synth;
mod presets;
mod real_files;
mod rle;
