//! Integration tests of `mg3d-train`, linked into one binary (one link of the
//! large dependency set instead of one per file). Run one group with
//! `cargo test --workspace --test train_tests <module>::`.

mod bert_reference;
mod fusion;
mod init_from;
mod libtorch;
mod losses;
mod model_folder;
mod old_layout;
mod swin;
mod train;
