//! # mpformer
//!
//! MP-Former (Mask-Piloted Transformer, CVPR 2023) and Mask2Former on Burn. This umbrella crate
//! re-exports the mpf crates so that one dependency brings the whole framework:
//!
//! - [`model`] (`mpf-model`): backbone, pixel decoder, masked-attention decoder, heads,
//!   post-processing;
//! - [`import`] (`mpf-import`): Hugging Face Mask2Former weights into the model;
//! - [`pilot`] (`mpf-pilot`): the mask-piloted part (`[pilot]` config, GT attention rows,
//!   self-attention mask, noise, `MpFormer` and its training forward);
//! - [`criterion`] (`mpf-criterion`): Hungarian matcher, losses, MP losses, appendix-C baselines;
//! - [`data`] (`mpf-data`): COCO / panoptic / semantic readers, synthetic shapes, augmentation,
//!   batching and the parallel loader;
//! - [`eval`] (`mpf-eval`): COCO mask AP through hotcoco, mIoU, overlays and curves;
//! - [`train`] (`mpf-train`): typed experiment configs, backend selection, the training program
//!   and the other commands of the `mpf-train` program.
//!
//! Backends are cargo features: `flex` (default, pure-Rust CPU), `wgpu` (Vulkan/Metal/DX12, or
//! CPU through Mesa's lavapipe) and `cuda`.

pub use mpf_criterion as criterion;
pub use mpf_data as data;
pub use mpf_eval as eval;
pub use mpf_import as import;
pub use mpf_model as model;
pub use mpf_pilot as pilot;
pub use mpf_train as train;
