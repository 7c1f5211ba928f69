//! mg3d-train: MG-3D pre-training with tch 0.24 (libtorch 2.11).
//!
//! - [`error`]: [`TrainError`], what training and the `train` stage return;
//! - [`runtime`]: choosing a device from a config string, describing the libtorch (`mg3d doctor`);
//! - [`bert`]: the text encoder, a Hugging Face BERT loaded from a model folder;
//! - [`torch_pickle`]: `torch.save`d state dicts (`pytorch_model.bin`) read without Python;
//! - [`swin`]: the 3D Swin Transformer image encoder with MONAI SwinViT parameter names;
//! - [`fusion`]: gated cross layers, gates, poolers, heads and the MIM decoder;
//! - [`clause_targets`]: the clause-level similarity targets of inter-patient matching (SSM);
//! - [`losses`]: the five MG-3D objectives as tensor functions;
//! - [`model`]: the whole model and one step's losses;
//! - [`trainer`]: AdamW with lr groups, schedule, clipping, accumulation, checkpoints, resume;
//! - [`tensorboard`]: TensorBoard event files of the scalars of each step;
//! - [`stage`]: the `train` stage.

pub mod bert;
pub mod clause_targets;
pub mod error;
pub mod fusion;
pub mod losses;
pub mod model;
pub mod runtime;
pub mod stage;
pub mod swin;
pub mod tensorboard;
pub mod torch_pickle;
pub mod trainer;

pub use error::TrainError;
