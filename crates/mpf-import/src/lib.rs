//! # mpf-import
//!
//! Loads weights trained elsewhere into [`mpf_model::Mask2Former`]:
//!
//! - Hugging Face transformers `Mask2FormerForUniversalSegmentation` with a ResNet backbone, from a
//!   `.safetensors` state dict ([`hf_key`] is the key table);
//! - torchvision ResNet weights into the backbone, from a `.pth` file read with Burn's store
//!   ([`torchvision_key`]);
//! - a transformers `SwinBackbone` state dict into [`mpf_model::swin::SwinTransformer`]
//!   ([`hf_swin_key`]; not yet part of a Mask2Former config).
//!
//! Every parameter of the mpf model must be found, every tensor in the file must be used (bar
//! bookkeeping entries such as `num_batches_tracked`), and every shape must match, or the import
//! fails with one error listing all problems by key.
//!
//! The walk over the model uses Burn's module mapper: each parameter is identified by its field
//! path (`decoder.layers.3.cross_attn.q_proj.weight`; enum variants such as `Basic` or `Frozen` are
//! left out), looked up in a table, transformed (PyTorch `Linear` weights are transposed; packed
//! attention projections are split) and written back keeping its id and gradient flag.

mod hf;
mod loader;
mod store;
mod swin;
mod torchvision;

pub use hf::hf_key;
pub use loader::{ImportReport, Source, import, load_into, param_paths};
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
