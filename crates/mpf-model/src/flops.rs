//! Analytical compute estimate of a [`Mask2FormerConfig`] at a given input size.
//!
//! Counts multiply-accumulates (MACs) of convolutions, linear layers and attention matmuls, reported
//! as "FLOPs" in the fvcore convention the Mask2Former and MP-Former papers use (one
//! multiply-add = one flop). Normalisations, activations, resizes and the bilinear taps of
//! `grid_sample` are not counted (fvcore skips `grid_sample` as well).

use serde::Serialize;

use crate::ModelError;
use crate::backbone::{BackboneKind, ResNetConfig};
use crate::model::Mask2FormerConfig;
use crate::swin::SwinConfig;

/// FLOPs (MACs) per part.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FlopsEstimate {
    /// Input size `[H, W]` after padding to the size divisibility.
    pub input: [usize; 2],
    /// Backbone (ResNet or Swin).
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

/// ResNet MACs; `hw(s)` is the number of positions at stride `s`.
fn resnet(r: &ResNetConfig, hw: impl Fn(usize) -> usize) -> Result<f64, ModelError> {
    let (blocks, bottleneck) = r.layout()?;
    let e = if bottleneck { 4 } else { 1 };
    let mut backbone = conv(3, r.width, 7, hw(2));
    let mut cin = r.width;
    for (i, &n) in blocks.iter().enumerate() {
        let planes = r.width << i;
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
    Ok(backbone)
}

/// Swin MACs at an `h × w` input: the patch embedding; per block the q/k/v and output projections
/// and the two window matmuls on the window-padded map, and the MLP; patch merging.
fn swin(c: &SwinConfig, h: usize, w: usize) -> f64 {
    let win = c.window_size;
    let (mut th, mut tw) = (h.div_ceil(c.patch_size), w.div_ceil(c.patch_size));
    let mut macs = conv(3, c.embed_dim, c.patch_size, th * tw);
    for (s, &depth) in c.depths.iter().enumerate() {
        let ch = (c.embed_dim << s) as f64;
        let tokens = (th * tw) as f64;
        let padded = (th.div_ceil(win) * win * tw.div_ceil(win) * win) as f64;
        let hidden = (c.mlp_ratio * ch).floor();
        let block = padded * (4.0 * ch * ch + 2.0 * (win * win) as f64 * ch) + tokens * 2.0 * ch * hidden;
        macs += block * depth as f64;
        if s + 1 < c.depths.len() {
            (th, tw) = (th.div_ceil(2), tw.div_ceil(2));
            macs += (th * tw) as f64 * 4.0 * ch * 2.0 * ch;
        }
    }
    macs
}

/// Estimates inference FLOPs for one image of `height × width` (padded up to a multiple of 32).
pub fn estimate(cfg: &Mask2FormerConfig, height: usize, width: usize) -> Result<FlopsEstimate, ModelError> {
    cfg.validate()?;
    let (h, w) = (height.div_ceil(32) * 32, width.div_ceil(32) * 32);
    let hw = |s: usize| (h / s) * (w / s);

    // Backbone.
    let bb = &cfg.backbone;
    let backbone = match bb.kind {
        BackboneKind::Resnet => resnet(&bb.resnet(), hw)?,
        BackboneKind::Swin => swin(&bb.swin, h, w),
    };

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
        let cfg = Mask2FormerConfig::new().with_backbone(ResNetConfig::new().into());
        let f = estimate(&cfg, 224, 224).unwrap();
        let g = f.backbone / 1e9;
        assert!((g - (4.089 - 0.002)).abs() < 0.02, "{g}");
    }

    #[test]
    fn swin_t_and_s_match_the_published_imagenet_flops() {
        // Liu et al. 2021, Table 1: Swin-T 4.5G, Swin-S 8.7G FLOPs at 224×224 (window 7); the
        // classifier (768·1000 MACs) is not part of the backbone.
        for (cfg, published) in [(SwinConfig::tiny(), 4.5), (SwinConfig::small(), 8.7)] {
            let g = swin(&cfg, 224, 224) / 1e9;
            assert!((g - published).abs() < 0.1, "{g} vs {published}");
        }
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
