//! mg3d-train: MG-3D pre-training with tch 0.24 (libtorch 2.11).
//!
//! This first piece is the runtime: choosing a device from a config string and describing the
//! libtorch the binary runs on (`mg3d doctor`). Models, objectives and the trainer follow.

pub mod runtime;
