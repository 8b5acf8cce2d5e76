//! # mpf-model
//!
//! The Mask2Former architecture on Burn, the reference network that MP-Former trains (Cheng et
//! al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022). Every
//! part follows Burn's `Config → init(&device) → Module` pattern and is generic over the backend
//! `B`:
//!
//! | module | part | source |
//! |---|---|---|
//! | [`backbone`] | torchvision-style ResNet 18/34/50/101, frozen or trainable batch norm | He et al. 2016; torchvision |
//! | [`swin`] | Swin Transformer backbone (window attention, shifted windows, patch merging); not yet selectable in [`model::Mask2FormerConfig`] | Liu et al. 2021; transformers' `SwinBackbone` |
//! | [`position`] | normalised sine position encoding | DETR (Carion et al. 2020) |
//! | [`deform_attn`] | multi-scale deformable attention (row-gather form; `grid_sample_2d` as reference) | Deformable DETR (Zhu et al. 2021) |
//! | [`conv`] | convolutions (1×1 as products, im2col on the CPU under autodiff) and group norm | — |
//! | [`pixel_decoder`] | MSDeformAttn pixel decoder (6 encoder layers + 1/4 FPN level) | Mask2Former |
//! | [`attention`] | multi-head attention with boolean masks (`true` = blocked) | PyTorch `nn.MultiheadAttention` |
//! | [`decoder`] | 9-layer masked-attention transformer decoder, 10 predictions, extra-query interface | Mask2Former (masked attention) |
//! | [`heads`] | class head (K+1) and 3-layer mask-embedding MLP | Mask2Former |
//! | [`postprocess`] | semantic, instance and panoptic inference | Mask2Former's inference |
//! | [`model`] | the assembled [`model::Mask2Former`] and its config | Mask2Former |
//! | [`flops`] | analytical parameter-free FLOPs estimate | App. Table 10 |
//! | [`testing`] | the comparison helper every numerical test uses (fails on non-finite values) | — |
//!
//! Shape letters used in the docs: `B` batch, `Q` matching queries, `P` extra (mask-piloted) queries,
//! `T = P + Q`, `K` classes, `L` feature levels, `h×w` a level's size, `H×W` the padded input.
//! Boolean attention masks use `true` = blocked everywhere.

pub mod attention;
pub mod backbone;
pub mod conv;
pub mod decoder;
pub mod deform_attn;
pub mod flops;
pub mod heads;
pub mod init;
pub mod mask;
pub mod model;
pub mod pixel_decoder;
pub mod position;
pub mod postprocess;
pub mod resize;
pub mod rng;
pub mod swin;
pub mod testing;

pub use decoder::{CrossAttentionRows, DecoderOutput, ExtraQueries, Prediction};
pub use model::{Mask2Former, Mask2FormerConfig};

/// Errors raised by model construction and post-processing.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of its valid range; `key` names the config key.
    #[error("invalid config value for `{key}`: {reason}")]
    InvalidConfig {
        /// Dotted config key, e.g. `model.backbone.depth`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An input tensor has a shape the model cannot take.
    #[error("invalid input shape: {0}")]
    InvalidInput(String),
}

#[cfg(test)]
pub(crate) mod test_util {
    pub type TestBackend = burn::backend::Flex;
    pub type TestDevice = burn::backend::flex::FlexDevice;

    pub use crate::testing::max_abs_diff;
}
