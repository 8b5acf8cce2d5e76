//! `mpf-train info`: parameter count per part and a FLOPs estimate.

use burn::prelude::*;
use mpf_model::backbone::BackboneKind;
use mpf_model::flops::{FlopsEstimate, estimate};
use mpf_model::model::trainable_params;
use serde::Serialize;

use crate::config::ExperimentConfig;

/// Parameters of one part of the model.
#[derive(Debug, Clone, Serialize)]
pub struct PartInfo {
    /// Part name.
    pub name: &'static str,
    /// All parameter elements, frozen ones included.
    pub params: usize,
    /// Trainable elements (what PyTorch's `model.parameters()` counts for the reference).
    pub trainable: usize,
}

/// What `info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Per part: backbone, pixel decoder, transformer decoder (layers, queries, level embedding),
    /// heads (decoder norm, class head, mask MLP).
    pub parts: Vec<PartInfo>,
    /// Sum of `params`.
    pub total_params: usize,
    /// Sum of `trainable`.
    pub trainable_params: usize,
    /// FLOPs estimate (fvcore convention) per part.
    pub flops: FlopsEstimate,
    /// The published parameter count of the same architecture, when it is one of the papers'.
    pub published: Option<Published>,
}

/// A parameter count from the literature.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Published {
    /// The model, as the source names it.
    pub model: &'static str,
    /// Parameters in millions, as printed there.
    pub params_m: f64,
    /// Where.
    pub source: &'static str,
}

const MASK2FORMER: &str = "Cheng et al., Masked-attention Mask Transformer, CVPR 2022, Tables 1-2";

/// The published Mask2Former count of `cfg`'s architecture: the COCO models (80 or 133 classes,
/// 100 queries, 200 for Swin-L) with the paper's pixel decoder and decoder widths.
pub fn published(cfg: &ExperimentConfig) -> Option<Published> {
    let m = &cfg.model;
    let (pd, dec) = (&m.pixel_decoder, &m.decoder);
    let standard = matches!(m.num_classes, 80 | 133)
        && (pd.conv_dim, pd.mask_dim, pd.encoder_layers, pd.ffn_dim) == (256, 256, 6, 1024)
        && (dec.hidden_dim, dec.num_layers, dec.ffn_dim) == (256, 9, 2048);
    if !standard {
        return None;
    }
    let bb = &m.backbone;
    let (model, params_m, queries) = match bb.kind {
        BackboneKind::Resnet => match (bb.depth, bb.width) {
            (50, 64) => ("Mask2Former R50", 44.0, 100),
            (101, 64) => ("Mask2Former R101", 63.0, 100),
            _ => return None,
        },
        BackboneKind::Swin => match (bb.swin.embed_dim, bb.swin.depths.as_slice()) {
            (96, [2, 2, 6, 2]) => ("Mask2Former Swin-T", 47.0, 100),
            (96, [2, 2, 18, 2]) => ("Mask2Former Swin-S", 69.0, 100),
            (128, [2, 2, 18, 2]) => ("Mask2Former Swin-B", 107.0, 100),
            (192, [2, 2, 18, 2]) => ("Mask2Former Swin-L (200 queries)", 216.0, 200),
            _ => return None,
        },
    };
    (dec.num_queries == queries).then_some(Published { model, params_m, source: MASK2FORMER })
}

/// Builds the model described by `cfg` on `device` and counts its parameters; estimates FLOPs at
/// `size = [height, width]`.
pub fn model_info<B: Backend>(
    cfg: &ExperimentConfig,
    size: [usize; 2],
    device: &B::Device,
) -> anyhow::Result<ModelInfo> {
    let model = cfg.model.init::<B>(device)?;
    let part = |name, params: usize, trainable: usize| PartInfo { name, params, trainable };
    let heads = &model.decoder.heads;
    let (heads_all, heads_train) = (heads.num_params(), trainable_params::<B, _>(heads));
    let parts = vec![
        part("backbone", model.backbone.num_params(), trainable_params::<B, _>(&model.backbone)),
        part("pixel_decoder", model.pixel_decoder.num_params(), trainable_params::<B, _>(&model.pixel_decoder)),
        part(
            "transformer_decoder",
            model.decoder.num_params() - heads_all,
            trainable_params::<B, _>(&model.decoder) - heads_train,
        ),
        part("heads", heads_all, heads_train),
    ];
    Ok(ModelInfo {
        total_params: parts.iter().map(|p| p.params).sum(),
        trainable_params: parts.iter().map(|p| p.trainable).sum(),
        parts,
        flops: estimate(&cfg.model, size[0], size[1])?,
        published: published(cfg),
    })
}

impl ModelInfo {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let m = |n: usize| format!("{:>10.3} M", n as f64 / 1e6);
        let g = |f: f64| format!("{:>9.1} G", f / 1e9);
        let mut s = format!("{:<22}{:>13}{:>13}\n", "part", "params", "trainable");
        for p in &self.parts {
            s += &format!("{:<22}{:>13}{:>13}\n", p.name, m(p.params), m(p.trainable));
        }
        s += &format!("{:<22}{:>13}{:>13}\n", "total", m(self.total_params), m(self.trainable_params));
        if let Some(p) = &self.published {
            s += &format!("{:<22}{:>11.0} M{:>13}   {} ({})\n", "published", p.params_m, "", p.model, p.source);
        }
        let [h, w] = self.flops.input;
        s += &format!("\nFLOPs at {h}×{w} (1 multiply-add = 1 FLOP, as fvcore):\n");
        s += &format!("{:<22}{}\n", "backbone", g(self.flops.backbone));
        s += &format!("{:<22}{}\n", "pixel_decoder", g(self.flops.pixel_decoder));
        s += &format!("{:<22}{}\n", "transformer_decoder", g(self.flops.transformer_decoder));
        s += &format!("{:<22}{}\n", "total", g(self.flops.total()));
        s
    }
}
