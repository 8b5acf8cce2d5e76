//! Analytical compute estimate of a [`Mask2FormerConfig`] at a given input size.
//!
//! Counts multiply-accumulates (MACs) of convolutions, linear layers and attention matmuls, reported
//! as "FLOPs" in the fvcore convention the Mask2Former and MP-Former papers use (one
//! multiply-add = one flop). Normalisations, activations, resizes and the bilinear taps of
//! `grid_sample` are not counted (fvcore skips `grid_sample` as well).

use serde::Serialize;

use crate::ModelError;
use crate::model::Mask2FormerConfig;

/// FLOPs (MACs) per part.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FlopsEstimate {
    /// Input size `[H, W]` after padding to the size divisibility.
    pub input: [usize; 2],
    /// ResNet backbone.
    pub backbone: f64,
    /// Pixel decoder (projections, deformable encoder, FPN level, mask features).
    pub pixel_decoder: f64,
    /// Transformer decoder layers and all prediction heads.
    pub transformer_decoder: f64,
}

impl FlopsEstimate {
    /// Sum over parts.
    pub fn total(&self) -> f64 {
        self.backbone + self.pixel_decoder + self.transformer_decoder
    }
}

fn conv(cin: usize, cout: usize, k: usize, out_hw: usize) -> f64 {
    (cin * cout * k * k) as f64 * out_hw as f64
}

/// Estimates inference FLOPs for one image of `height × width` (padded up to a multiple of 32).
pub fn estimate(cfg: &Mask2FormerConfig, height: usize, width: usize) -> Result<FlopsEstimate, ModelError> {
    cfg.validate()?;
    let (h, w) = (height.div_ceil(32) * 32, width.div_ceil(32) * 32);
    let hw = |s: usize| (h / s) * (w / s);

    // Backbone.
    let bb = &cfg.backbone;
    let (blocks, bottleneck) = bb.layout()?;
    let e = if bottleneck { 4 } else { 1 };
    let mut backbone = conv(3, bb.width, 7, hw(2));
    let mut cin = bb.width;
    for (i, &n) in blocks.iter().enumerate() {
        let planes = bb.width << i;
        let out_stride = 4 << i;
        for j in 0..n {
            let in_stride = if j == 0 && i > 0 { out_stride / 2 } else { out_stride };
            let cout = planes * e;
            if bottleneck {
                backbone += conv(cin, planes, 1, hw(in_stride));
                backbone += conv(planes, planes, 3, hw(out_stride));
                backbone += conv(planes, cout, 1, hw(out_stride));
            } else {
                backbone += conv(cin, planes, 3, hw(out_stride));
                backbone += conv(planes, planes, 3, hw(out_stride));
            }
            if cin != cout || (j == 0 && i > 0) {
                backbone += conv(cin, cout, 1, hw(out_stride));
            }
            cin = cout;
        }
    }

    // Pixel decoder.
    let ch = bb.out_channels()?;
    let pd = &cfg.pixel_decoder;
    let d = pd.conv_dim;
    let s_tokens = hw(32) + hw(16) + hw(8);
    let mut pixel = conv(ch[3], d, 1, hw(32)) + conv(ch[2], d, 1, hw(16)) + conv(ch[1], d, 1, hw(8));
    let samples = pd.num_heads * 3 * pd.num_points;
    let per_layer = s_tokens as f64
        * (2.0 * (d * d) as f64 // value + output projections
            + (d * samples * 3) as f64 // offsets (2 per sample) + attention weights (1 per sample)
            + (samples * (d / pd.num_heads)) as f64 // weighted sum of sampled values
            + 2.0 * (d * pd.ffn_dim) as f64);
    pixel += per_layer * pd.encoder_layers as f64;
    pixel += conv(ch[0], d, 1, hw(4)) + conv(d, d, 3, hw(4)) + conv(d, pd.mask_dim, 1, hw(4));

    // Transformer decoder.
    let dec = &cfg.decoder;
    let (t, dd) = (dec.num_queries as f64, dec.hidden_dim as f64);
    let mut decoder = 0.0;
    if d != dec.hidden_dim {
        decoder += conv(d, dec.hidden_dim, 1, hw(32) + hw(16) + hw(8));
    }
    let level_hw = [hw(32), hw(16), hw(8)];
    for l in 0..dec.num_layers {
        let m = level_hw[l % 3] as f64;
        decoder += 2.0 * t * dd * dd + 2.0 * m * dd * dd + 2.0 * t * m * dd; // cross-attention
        decoder += 4.0 * t * dd * dd + 2.0 * t * t * dd; // self-attention
        decoder += 2.0 * t * dd * dec.ffn_dim as f64; // FFN
    }
    let heads = t * dd * (cfg.num_classes + 1) as f64
        + t * (2.0 * dd * dd + dd * pd.mask_dim as f64)
        + t * pd.mask_dim as f64 * hw(4) as f64;
    decoder += heads * (dec.num_layers + 1) as f64;

    Ok(FlopsEstimate { input: [h, w], backbone, pixel_decoder: pixel, transformer_decoder: decoder })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::ResNetConfig;

    #[test]
    fn resnet50_backbone_matches_known_count() {
        // torchvision ResNet-50 is 4.09 GMACs at 224×224 including the 2.05 MMAC fc layer; the
        // backbone here has no fc. 224 is not a multiple of 32·2 for every stage, so use 224 = 7·32.
        let cfg = Mask2FormerConfig::new().with_backbone(ResNetConfig::new());
        let f = estimate(&cfg, 224, 224).unwrap();
        let g = f.backbone / 1e9;
        assert!((g - (4.089 - 0.002)).abs() < 0.02, "{g}");
    }

    #[test]
    fn coco_r50_is_near_the_papers_226g() {
        // The paper's 226G is averaged over COCO val images (short side 800, long ≤ 1333); an
        // 800×1216 input is a typical size.
        let f = estimate(&Mask2FormerConfig::new(), 800, 1216).unwrap();
        let g = f.total() / 1e9;
        assert!((200.0..260.0).contains(&g), "{g}");
    }
}
