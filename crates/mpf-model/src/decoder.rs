//! `MultiScaleMaskedTransformerDecoder`: masked cross-attention → self-attention → FFN,
//! post-norm, levels visited round-robin (1/32, 1/16, 1/8, …), and a prediction before the first
//! layer and after each layer (10 for 9 layers).
//!
//! # Extra queries
//! Callers may prepend `P` extra queries (MP-Former's mask-piloted part, built in `mpf-pilot`) with
//! [`ExtraQueries`]: their content, a self-attention mask over all `P + Q` queries, and a
//! [`CrossAttentionRows`] source that may replace their cross-attention mask rows for any layer.
//! Extra queries have no positional embedding. Nothing here knows what the extra queries mean.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};

use crate::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use crate::conv::conv_forward;
use crate::heads::{PredictionHeads, PredictionHeadsConfig};
use crate::init::{LinearInit, c2_xavier, embedding, linear, zero_conv_bias};
use crate::position::sine_encoding;
use crate::resize::bilinear;

/// Number of memory levels the decoder cycles through.
pub const NUM_LEVELS: usize = 3;

/// Configuration of [`TransformerDecoder`]; defaults are Mask2Former's.
#[derive(Config, Debug)]
pub struct TransformerDecoderConfig {
    /// Query width `d` (`HIDDEN_DIM`).
    #[config(default = 256)]
    pub hidden_dim: usize,
    /// Matching queries `Q` (`NUM_OBJECT_QUERIES`).
    #[config(default = 100)]
    pub num_queries: usize,
    /// Attention heads (`NHEADS`).
    #[config(default = 8)]
    pub num_heads: usize,
    /// FFN width (`DIM_FEEDFORWARD`).
    #[config(default = 2048)]
    pub ffn_dim: usize,
    /// Decoder layers (`DEC_LAYERS − 1` = 9); the decoder makes `num_layers + 1` predictions.
    #[config(default = 9)]
    pub num_layers: usize,
    /// Learnable query positional embedding (`query_embed`) added in cross- and self-attention.
    /// Mask2Former has it; MP-Former's released code removes it.
    #[config(default = true)]
    pub use_query_pos_embed: bool,
}

/// One decoder layer: masked cross-attention, self-attention and FFN, each residual + LayerNorm.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Queries attend to one memory level under the mask.
    pub cross_attn: MultiHeadAttention<B>,
    /// Norm after cross-attention.
    pub cross_norm: LayerNorm<B>,
    /// Queries attend to each other.
    pub self_attn: MultiHeadAttention<B>,
    /// Norm after self-attention.
    pub self_norm: LayerNorm<B>,
    /// FFN `d → ffn`.
    pub linear1: Linear<B>,
    /// FFN `ffn → d`.
    pub linear2: Linear<B>,
    /// Norm after FFN.
    pub ffn_norm: LayerNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// # Shapes
    /// - `tgt`: `[B, T, d]`; `query_pos`: `[B, T, d]` or none
    /// - `memory`, `pos`: `[B, hw, d]`
    /// - `cross_mask`: `[B, 1 | heads, T, hw]`; `self_mask`: `[1, 1, T, T]` (true = blocked)
    /// - output: `[B, T, d]`
    pub fn forward(
        &self,
        tgt: Tensor<B, 3>,
        query_pos: Option<Tensor<B, 3>>,
        memory: Tensor<B, 3>,
        pos: Tensor<B, 3>,
        cross_mask: Tensor<B, 4, Bool>,
        self_mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let with_pos = |x: Tensor<B, 3>| match &query_pos {
            Some(p) => x + p.clone(),
            None => x,
        };
        let a = self.cross_attn.forward(with_pos(tgt.clone()), memory.clone() + pos, memory, Some(cross_mask));
        let tgt = self.cross_norm.forward(tgt + a);
        let q = with_pos(tgt.clone());
        let a = self.self_attn.forward(q.clone(), q, tgt.clone(), self_mask);
        let tgt = self.self_norm.forward(tgt + a);
        let f = self.linear2.forward(relu(self.linear1.forward(tgt.clone())));
        self.ffn_norm.forward(tgt + f)
    }
}

/// One of the decoder's predictions.
#[derive(Debug, Clone)]
pub struct Prediction<B: Backend> {
    /// `[B, T, K+1]`, the last column is "no object".
    pub class_logits: Tensor<B, 3>,
    /// `[B, T, H/4, W/4]`.
    pub mask_logits: Tensor<B, 4>,
}

impl<B: Backend> Prediction<B> {
    /// Splits the query axis at `p`: (`[.., 0..p, ..]`, `[.., p.., ..]`), i.e. (extra, matching).
    /// The first part is `None` when `p == 0`.
    pub fn split_at(&self, p: usize) -> (Option<Prediction<B>>, Prediction<B>) {
        if p == 0 {
            return (None, self.clone());
        }
        let t = self.class_logits.dims()[1];
        let part = |start: usize, len: usize| Prediction {
            class_logits: self.class_logits.clone().narrow(1, start, len),
            mask_logits: self.mask_logits.clone().narrow(1, start, len),
        };
        (Some(part(0, p)), part(p, t - p))
    }
}

/// Everything the decoder predicts.
#[derive(Debug, Clone)]
pub struct DecoderOutput<B: Backend> {
    /// `num_layers + 1` predictions: index 0 from the initial queries, index `l + 1` after layer `l`.
    /// Each covers all `P + Q` queries, extra ones first.
    pub predictions: Vec<Prediction<B>>,
    /// Number of extra queries `P` at the front of every prediction (0 without extras).
    pub num_extra: usize,
}

impl<B: Backend> DecoderOutput<B> {
    /// The final prediction of the matching queries only (what inference uses).
    pub fn last_matching(&self) -> Prediction<B> {
        let last = self.predictions.last().expect("decoder makes at least one prediction");
        last.split_at(self.num_extra).1
    }
}

/// A source of cross-attention mask rows for the extra queries.
pub trait CrossAttentionRows<B: Backend> {
    /// Rows of the cross-attention mask for the `P` extra queries in decoder layer `layer`
    /// (0-based), whose memory level has size `size = [h, w]`; `true` = blocked. Return `None` to
    /// keep the rows derived from the extra queries' own predicted masks. The decoder applies the
    /// fully-masked-row fix afterwards, so an all-`true` row attends everywhere.
    ///
    /// # Shapes
    /// - output: `[B, 1 | heads, P, h·w]`
    fn rows(&mut self, layer: usize, size: [usize; 2]) -> Option<Tensor<B, 4, Bool>>;
}

impl<B: Backend, F> CrossAttentionRows<B> for F
where
    F: FnMut(usize, [usize; 2]) -> Option<Tensor<B, 4, Bool>>,
{
    fn rows(&mut self, layer: usize, size: [usize; 2]) -> Option<Tensor<B, 4, Bool>> {
        self(layer, size)
    }
}

/// Extra queries prepended to the matching queries (training-time only in MP-Former).
pub struct ExtraQueries<'a, B: Backend> {
    /// Content of the `P` extra queries, `[B, P, d]`.
    pub content: Tensor<B, 3>,
    /// Self-attention mask over all `P + Q` queries, `[P + Q, P + Q]`, `true` = blocked; shared by
    /// images and heads. `None` lets every query see every other.
    pub self_attn_mask: Option<Tensor<B, 2, Bool>>,
    /// Per-layer overrides of the extra queries' cross-attention rows.
    pub cross_attn_rows: Option<&'a mut dyn CrossAttentionRows<B>>,
}

/// The masked-attention transformer decoder with its prediction heads.
#[derive(Module, Debug)]
pub struct TransformerDecoder<B: Backend> {
    /// Learnable query content `[Q, d]` (`query_feat`).
    pub query_feat: Param<Tensor<B, 2>>,
    /// Learnable query positional embedding `[Q, d]` (`query_embed`), if enabled.
    pub query_embed: Option<Param<Tensor<B, 2>>>,
    /// Learned per-level embedding `[3, d]` added to the memory.
    pub level_embed: Param<Tensor<B, 2>>,
    /// 1×1 input projections per level, only when the pixel decoder width differs from `d`.
    pub input_proj: Option<Vec<Conv2d<B>>>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Class and mask heads.
    pub heads: PredictionHeads<B>,
    /// Attention heads.
    pub num_heads: usize,
}

impl TransformerDecoderConfig {
    /// Initialises the decoder for memory of `in_channels` channels, `mask_dim`-channel mask
    /// features and `num_classes` classes.
    pub fn init<B: Backend>(
        &self,
        in_channels: usize,
        mask_dim: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> TransformerDecoder<B> {
        let d = self.hidden_dim;
        let mha = MultiHeadAttentionConfig::new(d, self.num_heads);
        let layers = (0..self.num_layers)
            .map(|_| DecoderLayer {
                cross_attn: mha.init(device),
                cross_norm: LayerNormConfig::new(d).init(device),
                self_attn: mha.init(device),
                self_norm: LayerNormConfig::new(d).init(device),
                linear1: linear(d, self.ffn_dim, LinearInit::XavierTorchBias, device),
                linear2: linear(self.ffn_dim, d, LinearInit::XavierTorchBias, device),
                ffn_norm: LayerNormConfig::new(d).init(device),
            })
            .collect();
        let input_proj = (in_channels != d).then(|| {
            (0..NUM_LEVELS)
                .map(|_| {
                    zero_conv_bias(
                        Conv2dConfig::new([in_channels, d], [1, 1]).with_initializer(c2_xavier()).init(device),
                    )
                })
                .collect()
        });
        TransformerDecoder {
            query_feat: embedding(self.num_queries, d, device),
            query_embed: self.use_query_pos_embed.then(|| embedding(self.num_queries, d, device)),
            level_embed: embedding(NUM_LEVELS, d, device),
            input_proj,
            layers,
            heads: PredictionHeadsConfig::new(d, mask_dim, num_classes).init(device),
            num_heads: self.num_heads,
        }
    }
}

/// The fully-masked-row fix: a row of the mask that blocks every key is cleared so that query
/// attends everywhere.
///
/// # Shapes
/// - `mask`: `[B, H, T, S]` → same
pub fn unmask_full_rows<B: Backend>(mask: Tensor<B, 4, Bool>) -> Tensor<B, 4, Bool> {
    let dims = mask.dims();
    // "Every key blocked" as a float minimum: the CPU backend's boolean `all_dim` goes through an
    // integer sum that is a hundred times slower.
    let full = mask.clone().float().min_dim(3).greater_elem(0.5).expand(dims);
    mask.bool_and(full.bool_not())
}

/// Cross-attention mask rows from predicted mask logits: resize bilinearly to `size`, then block
/// where `sigmoid < 0.5`. Computed without gradient.
///
/// # Shapes
/// - `mask_logits`: `[B, T, H4, W4]` → `[B, 1, T, h·w]`
pub fn attention_mask_from_logits<B: Backend>(mask_logits: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4, Bool> {
    let [b, t, _, _] = mask_logits.dims();
    let resized = bilinear(mask_logits.detach(), size);
    sigmoid(resized).lower_elem(0.5).reshape([b, 1, t, size[0] * size[1]])
}

impl<B: Backend> TransformerDecoder<B> {
    /// Number of matching queries `Q`.
    pub fn num_queries(&self) -> usize {
        self.query_feat.dims()[0]
    }

    /// Query width `d`.
    pub fn hidden_dim(&self) -> usize {
        self.query_feat.dims()[1]
    }

    /// Runs the decoder.
    ///
    /// # Shapes
    /// - `multi_scale_features`: 3 maps `[B, C, h_l, w_l]` in the order 1/32, 1/16, 1/8
    /// - `mask_features`: `[B, mask_dim, H/4, W/4]`
    /// - output: `num_layers + 1` predictions over `P + Q` queries
    pub fn forward(
        &self,
        multi_scale_features: &[Tensor<B, 4>],
        mask_features: Tensor<B, 4>,
        extra: Option<ExtraQueries<'_, B>>,
    ) -> DecoderOutput<B> {
        assert_eq!(multi_scale_features.len(), NUM_LEVELS, "decoder expects {NUM_LEVELS} memory levels");
        let device = mask_features.device();
        let b = mask_features.dims()[0];
        let d = self.query_feat.dims()[1];
        let q = self.num_queries();

        let mut memory = Vec::with_capacity(NUM_LEVELS);
        let mut sizes = Vec::with_capacity(NUM_LEVELS);
        for (l, x) in multi_scale_features.iter().enumerate() {
            let [_, _, h, w] = x.dims();
            sizes.push([h, w]);
            let pos = sine_encoding::<B>(b, d, h, w, &device).flatten::<3>(2, 3).swap_dims(1, 2);
            let x = match &self.input_proj {
                Some(p) => conv_forward(&p[l], x.clone()),
                None => x.clone(),
            };
            let level = self.level_embed.val().narrow(0, l, 1).reshape([1, 1, d]);
            memory.push((x.flatten::<3>(2, 3).swap_dims(1, 2) + level, pos));
        }

        let mut tgt = self.query_feat.val().unsqueeze_dim::<3>(0).expand([b, q, d]);
        let mut query_pos = self.query_embed.as_ref().map(|e| e.val().unsqueeze_dim::<3>(0).expand([b, q, d]));
        let (num_extra, self_mask, mut rows) = match extra {
            Some(extra) => {
                let p = extra.content.dims()[1];
                tgt = Tensor::cat(vec![extra.content, tgt], 1);
                query_pos = query_pos.map(|qp| Tensor::cat(vec![Tensor::zeros([b, p, d], &device), qp], 1));
                let t = p + q;
                let self_mask = extra.self_attn_mask.map(|m| {
                    assert_eq!(m.dims(), [t, t], "self-attention mask must be [P+Q, P+Q]");
                    m.reshape([1, 1, t, t])
                });
                (p, self_mask, extra.cross_attn_rows)
            }
            None => (0, None, None),
        };

        let mut predictions = Vec::with_capacity(self.layers.len() + 1);
        let (class_logits, mask_logits) = self.heads.forward(tgt.clone(), mask_features.clone());
        let mut attn_mask = self.layer_mask(0, &mask_logits, &sizes, num_extra, rows.as_deref_mut());
        predictions.push(Prediction { class_logits, mask_logits });

        for (l, layer) in self.layers.iter().enumerate() {
            let (mem, pos) = &memory[l % NUM_LEVELS];
            let mask = unmask_full_rows(attn_mask.take().expect("mask prepared for every layer"));
            tgt = layer.forward(tgt, query_pos.clone(), mem.clone(), pos.clone(), mask, self_mask.clone());
            let (class_logits, mask_logits) = self.heads.forward(tgt.clone(), mask_features.clone());
            if l + 1 < self.layers.len() {
                attn_mask = self.layer_mask(l + 1, &mask_logits, &sizes, num_extra, rows.as_deref_mut());
            }
            predictions.push(Prediction { class_logits, mask_logits });
        }
        DecoderOutput { predictions, num_extra }
    }

    /// The cross-attention mask for `layer`: rows from predicted masks, with the extra queries'
    /// rows replaced where the caller provides them.
    fn layer_mask(
        &self,
        layer: usize,
        mask_logits: &Tensor<B, 4>,
        sizes: &[[usize; 2]],
        num_extra: usize,
        rows: Option<&mut (dyn CrossAttentionRows<B> + '_)>,
    ) -> Option<Tensor<B, 4, Bool>> {
        let size = sizes[layer % NUM_LEVELS];
        let predicted = attention_mask_from_logits(mask_logits.clone(), size);
        let Some(override_rows) = rows.and_then(|r| r.rows(layer, size)) else {
            return Some(predicted);
        };
        let [b, _, t, s] = predicted.dims();
        let heads = override_rows.dims()[1];
        assert_eq!(override_rows.dims()[2], num_extra, "override must cover exactly the P extra queries");
        let matching = predicted.narrow(2, num_extra, t - num_extra).expand([b, heads, t - num_extra, s]);
        Some(Tensor::cat(vec![override_rows, matching], 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestBackend;
    use burn::tensor::Distribution;

    fn tiny(device: &crate::test_util::TestDevice, pos: bool) -> TransformerDecoder<TestBackend> {
        TestBackend::seed(device, 11);
        TransformerDecoderConfig::new()
            .with_hidden_dim(16)
            .with_num_queries(5)
            .with_num_heads(2)
            .with_ffn_dim(32)
            .with_num_layers(4)
            .with_use_query_pos_embed(pos)
            .init(16, 16, 3, device)
    }

    fn inputs(device: &crate::test_util::TestDevice) -> (Vec<Tensor<TestBackend, 4>>, Tensor<TestBackend, 4>) {
        let ms = [[1, 2], [2, 4], [4, 8]]
            .iter()
            .map(|&[h, w]| Tensor::random([2, 16, h, w], Distribution::Normal(0.0, 1.0), device))
            .collect();
        (ms, Tensor::random([2, 16, 8, 16], Distribution::Normal(0.0, 1.0), device))
    }

    #[test]
    fn makes_num_layers_plus_one_predictions() {
        let device = Default::default();
        for pos in [true, false] {
            let dec = tiny(&device, pos);
            assert_eq!(dec.query_embed.is_some(), pos);
            let (ms, mf) = inputs(&device);
            let out = dec.forward(&ms, mf, None);
            assert_eq!(out.predictions.len(), 5);
            for p in &out.predictions {
                assert_eq!(p.class_logits.dims(), [2, 5, 4]);
                assert_eq!(p.mask_logits.dims(), [2, 5, 8, 16]);
            }
        }
    }

    #[test]
    fn fully_masked_rows_are_cleared_others_kept() {
        let device = Default::default();
        let m = Tensor::<TestBackend, 1, Bool>::from_data([true, true, true, true, false, true].as_slice(), &device)
            .reshape([1, 1, 2, 3]);
        let fixed = unmask_full_rows(m).into_data().to_vec::<bool>().unwrap();
        assert_eq!(fixed, vec![false, false, false, true, false, true]);
    }

    #[test]
    fn fully_masked_row_attends_everywhere_after_the_fix() {
        let device = Default::default();
        TestBackend::seed(&device, 2);
        let attn = MultiHeadAttentionConfig::new(8, 2).init::<TestBackend>(&device);
        let q = Tensor::<TestBackend, 3>::random([1, 2, 8], Distribution::Normal(0.0, 1.0), &device);
        let kv = Tensor::<TestBackend, 3>::random([1, 4, 8], Distribution::Normal(0.0, 1.0), &device);
        // Row 0 blocks every key; row 1 blocks none.
        let mask = Tensor::<TestBackend, 1, Bool>::from_data(
            [true, true, true, true, false, false, false, false].as_slice(),
            &device,
        )
        .reshape([1, 1, 2, 4]);
        let fixed = attn.forward(q.clone(), kv.clone(), kv.clone(), Some(unmask_full_rows(mask)));
        let open = attn.forward(q, kv.clone(), kv, None);
        let (a, b) = (fixed.into_data().to_vec::<f32>().unwrap(), open.into_data().to_vec::<f32>().unwrap());
        assert!(crate::test_util::max_abs_diff(&a, &b) < 1e-6);
    }

    #[test]
    fn attention_mask_threshold_and_resize() {
        let device = Default::default();
        // 1×1 logits map [[-1, 1], [1, -1]] at 2×2 resized to 1×1: mean 0 → sigmoid 0.5 → not blocked.
        let logits = Tensor::<TestBackend, 4>::from_floats([[[[-1.0, 1.0], [1.0, -1.0]]]], &device);
        let m = attention_mask_from_logits(logits.clone(), [1, 1]).into_data().to_vec::<bool>().unwrap();
        assert_eq!(m, vec![false]);
        let m = attention_mask_from_logits(logits, [2, 2]).into_data().to_vec::<bool>().unwrap();
        assert_eq!(m, vec![true, false, false, true]);
    }

    #[test]
    fn extra_queries_get_their_override_and_self_mask() {
        let device = Default::default();
        let dec = tiny(&device, true);
        let (ms, mf) = inputs(&device);
        let p = 2;
        let content = Tensor::<TestBackend, 3>::random([2, p, 16], Distribution::Normal(0.0, 1.0), &device);
        let mut seen = Vec::new();
        let mut rows = |layer: usize, size: [usize; 2]| {
            seen.push((layer, size));
            Some(Tensor::<TestBackend, 4, Bool>::full([2, 1, p, size[0] * size[1]], true, &Default::default()))
        };
        // Matching queries cannot see extra queries.
        let t = p + 5;
        let mut sm = vec![false; t * t];
        for r in p..t {
            for c in 0..p {
                sm[r * t + c] = true;
            }
        }
        let self_attn_mask = Tensor::<TestBackend, 1, Bool>::from_data(sm.as_slice(), &device).reshape([t, t]);
        let extra = ExtraQueries { content, self_attn_mask: Some(self_attn_mask), cross_attn_rows: Some(&mut rows) };
        let out = dec.forward(&ms, mf.clone(), Some(extra));
        assert_eq!(out.num_extra, p);
        assert_eq!(out.predictions[0].class_logits.dims(), [2, t, 4]);
        assert_eq!(seen, vec![(0, [1, 2]), (1, [2, 4]), (2, [4, 8]), (3, [1, 2])]);
        // With matching queries blind to the extras, their outputs equal a plain run's.
        let plain = dec.forward(&ms, mf, None);
        let a = out.last_matching().mask_logits.into_data().to_vec::<f32>().unwrap();
        let b = plain.last_matching().mask_logits.into_data().to_vec::<f32>().unwrap();
        assert!(crate::test_util::max_abs_diff(&a, &b) < 1e-4);
    }
}
