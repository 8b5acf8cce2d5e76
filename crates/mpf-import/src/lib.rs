//! # mpf-import
//!
//! Loads weights trained elsewhere into [`mpf_model::Mask2Former`]:
//!
//! - Hugging Face transformers `Mask2FormerForUniversalSegmentation`, from a `.safetensors` state
//!   dict ([`hf_key`] is the key table; [`hf_config`] reads the `config.json` beside it), with a ResNet
//! - torchvision ResNet weights into the backbone, from a `.pth` file read with Burn's store
//!   ([`torchvision_key`]);
//!   or a Swin backbone (the released transformers checkpoints; [`hf_swin_key`] is the backbone's
//!   part of the table);
//! - original Mask2Former and MP-Former checkpoints with detectron2 names, from a model-zoo `.pkl`
//!   (pickled numpy arrays, read with `repugnant-pickle`) or a `torch.save` `.pth`
//!   ([`detectron2_key`]; MP-Former's label embedding is handed back in the report);
//! - a transformers `SwinBackbone` state dict into [`mpf_model::swin::SwinTransformer`] alone.
//!
//! Every parameter of the mpf model must be found, every tensor in the file must be used (bar
//! bookkeeping entries such as `num_batches_tracked`), and every shape must match, or the import
//! fails with one error listing all problems by key.
//!
//! The walk over the model uses Burn's module mapper: each parameter is identified by its field
//! path (`decoder.layers.3.cross_attn.q_proj.weight`; enum variants such as `Basic` or `Frozen` are
//! left out), looked up in a table, transformed (PyTorch `Linear` weights are transposed; packed
//! attention projections are split) and written back keeping its id and gradient flag.

mod detectron2;
mod hf;
mod hf_config;
mod loader;
mod pickle;
mod store;
mod swin;
mod torchvision;

pub use detectron2::{LABEL_ENC, detectron2_key};
pub use hf::hf_key;
pub use hf_config::{HfArchitecture, hf_config};
pub use loader::{ImportReport, Source, detect_backbone, import, load_into, param_paths};
pub use store::{HostTensor, TensorStore};
pub use swin::{hf_swin_ignorable, hf_swin_key};
pub use torchvision::torchvision_key;

use std::path::PathBuf;

/// How one source tensor becomes one mpf parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Same layout.
    Identity,
    /// PyTorch `Linear` weight `[out, in]` → Burn `[in, out]`.
    Transpose,
    /// Chunk `index` of 3 along rows (PyTorch's packed q/k/v projection), then transposed if it
    /// is a matrix.
    PackedChunk(usize),
}

/// Where an mpf parameter comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceKey {
    /// Key in the source file.
    pub name: String,
    /// Layout change.
    pub transform: Transform,
}

/// Import failures.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file, or a tensor has an unsupported type.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file does not fit the model; every problem is listed.
    #[error("{path} does not fit the model:\n{}", problems.join("\n"))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// One line per missing, unexpected or misshaped key.
        problems: Vec<String>,
    },
}
