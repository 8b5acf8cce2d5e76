//! `mpf-train info`: parameter count per part and a FLOPs estimate.

use burn::prelude::*;
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
        let [h, w] = self.flops.input;
        s += &format!("\nFLOPs at {h}×{w} (1 multiply-add = 1 FLOP, as fvcore):\n");
        s += &format!("{:<22}{}\n", "backbone", g(self.flops.backbone));
        s += &format!("{:<22}{}\n", "pixel_decoder", g(self.flops.pixel_decoder));
        s += &format!("{:<22}{}\n", "transformer_decoder", g(self.flops.transformer_decoder));
        s += &format!("{:<22}{}\n", "total", g(self.flops.total()));
        s
    }
}
