//! The MP-Former training forward (spec §3.7): MP queries prepended to the matching queries, their
//! cross-attention rows replaced by (noised) GT masks on the piloted layers, and the self-attention
//! mask of [`crate::masks::self_attention_mask`]. Inference never builds any of this: it is
//! `Mask2Former::forward`.

use burn::module::{Initializer, Param};
use burn::prelude::*;
use mpf_model::Mask2Former;
use mpf_model::decoder::{DecoderOutput, ExtraQueries};
use rand::Rng;

use crate::layout::MpLayout;
use crate::masks::{BinaryMask, self_attention_mask};
use crate::noise::point_noise;

/// The MP part's only parameters: a class embedding `[K, d]` (`label_enc`, N(0, 1), no row for
/// "no object"; padding slots get zero content).
#[derive(Module, Debug)]
pub struct LabelEmbedding<B: Backend> {
    /// `[K, d]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> LabelEmbedding<B> {
    /// `K` classes of width `d`.
    pub fn new(num_classes: usize, d: usize, device: &B::Device) -> Self {
        Self { weight: Initializer::Normal { mean: 0.0, std: 1.0 }.init([num_classes, d], device) }
    }

    /// Content of every MP slot.
    ///
    /// # Shapes
    /// - output: `[B, P, d]`
    pub fn content(&self, layout: &MpLayout, device: &B::Device) -> Tensor<B, 3> {
        let [_, d] = self.weight.dims();
        let (b, p) = (layout.slots.len(), layout.num_slots());
        let idx: Vec<i64> = layout.slots.iter().flatten().map(|s| s.input_label.unwrap_or(0) as i64).collect();
        let valid: Vec<f32> = layout.slots.iter().flatten().map(|s| s.input_label.is_some() as u8 as f32).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [b * p]), device);
        let valid = Tensor::<B, 1>::from_data(TensorData::new(valid, [b * p]), device).reshape([b * p, 1]);
        (self.weight.val().select(0, idx) * valid).reshape([b, p, d])
    }
}

/// Knobs of the piloted forward.
#[derive(Debug, Clone, PartialEq)]
pub struct PilotSettings {
    /// Decoder layers whose MP rows come from GT (the others use the MP queries' own predictions).
    pub piloted_layers: Vec<usize>,
    /// Point-noise ratio (0 = clean GT, the released recipe).
    pub point_noise: f64,
    /// Draw point noise independently for each attention head.
    pub per_head: bool,
}

/// Cross-attention rows of all MP slots for one layer at level size `[h, w]` of a padded input
/// `[H, W]`: the slot's GT mask max-pooled by `H / h`, point-noised with a fresh draw, `true`
/// where the noised mask is background; padding slots fully `true` (the decoder's fix then lets
/// them attend everywhere). Returned row-major as `[B, heads, P, h·w]` with `heads` = 1 unless
/// `per_head`.
pub fn gt_rows(
    layout: &MpLayout,
    gt: &[Vec<BinaryMask>],
    size: [usize; 2],
    heads: usize,
    settings: &PilotSettings,
    rng: &mut impl Rng,
) -> (Vec<bool>, usize) {
    let n_heads = if settings.per_head { heads } else { 1 };
    let p = layout.num_slots();
    let hw = size[0] * size[1];
    let mut rows = vec![true; layout.slots.len() * n_heads * p * hw];
    for (b, slots) in layout.slots.iter().enumerate() {
        for (s, slot) in slots.iter().enumerate() {
            let Some(j) = slot.object else { continue };
            let m = &gt[b][j];
            let factor = (m.height / size[0]).max(1);
            let pooled = m.downsample_any(factor);
            for h in 0..n_heads {
                let (noised, _) = point_noise(&pooled, settings.point_noise, rng);
                let start = ((b * n_heads + h) * p + s) * hw;
                for (dst, &fg) in rows[start..start + hw].iter_mut().zip(&noised.data) {
                    *dst = !fg;
                }
            }
        }
    }
    (rows, n_heads)
}

/// The training forward with the MP part. `gt[b][j]` is object `j` of image `b` at the padded
/// input size. Returns the decoder output, whose every prediction holds the `P` MP slots first.
pub fn forward_train<B: Backend>(
    model: &Mask2Former<B>,
    labels: &LabelEmbedding<B>,
    images: Tensor<B, 4>,
    layout: &MpLayout,
    gt: &[Vec<BinaryMask>],
    settings: &PilotSettings,
    rng: &mut impl Rng,
) -> DecoderOutput<B> {
    let device = images.device();
    let b = layout.slots.len();
    let p = layout.num_slots();
    let q = model.decoder.num_queries();
    let heads = model.decoder.num_heads;
    let t = p + q;
    let sm = self_attention_mask(layout.num_groups, layout.group_size, q);
    let self_attn_mask = Tensor::<B, 1, Bool>::from_data(TensorData::new(sm, [t * t]), &device).reshape([t, t]);
    let mut rows = |layer: usize, size: [usize; 2]| -> Option<Tensor<B, 4, Bool>> {
        if !settings.piloted_layers.contains(&layer) {
            return None;
        }
        let (data, n_heads) = gt_rows(layout, gt, size, heads, settings, rng);
        let hw = size[0] * size[1];
        Some(
            Tensor::<B, 1, Bool>::from_data(TensorData::new(data, [b * n_heads * p * hw]), &device)
                .reshape([b, n_heads, p, hw]),
        )
    };
    let extra = ExtraQueries {
        content: labels.content(layout, &device),
        self_attn_mask: Some(self_attn_mask),
        cross_attn_rows: Some(&mut rows),
    };
    model.forward_with_extra(images, Some(extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GroupRule, build_layout};
    use burn::backend::Flex;
    use mpf_model::Mask2FormerConfig;
    use mpf_model::backbone::ResNetConfig;
    use mpf_model::decoder::TransformerDecoderConfig;
    use mpf_model::pixel_decoder::PixelDecoderConfig;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn tiny() -> Mask2Former<Flex> {
        let device = Default::default();
        Flex::seed(&device, 0);
        Mask2FormerConfig::new()
            .with_num_classes(3)
            .with_backbone(ResNetConfig::new().with_depth(18).with_width(4))
            .with_pixel_decoder(
                PixelDecoderConfig::new()
                    .with_conv_dim(16)
                    .with_mask_dim(16)
                    .with_num_heads(2)
                    .with_num_points(2)
                    .with_encoder_layers(1)
                    .with_ffn_dim(16)
                    .with_gn_groups(4),
            )
            .with_decoder(
                TransformerDecoderConfig::new()
                    .with_hidden_dim(16)
                    .with_num_queries(4)
                    .with_num_heads(2)
                    .with_ffn_dim(16)
                    .with_num_layers(4),
            )
            .init(&device)
            .unwrap()
    }

    fn rect(y0: usize, x0: usize, y1: usize, x1: usize) -> BinaryMask {
        let (h, w) = (64, 64);
        let data = (0..h * w).map(|i| (y0..y1).contains(&(i / w)) && (x0..x1).contains(&(i % w))).collect();
        BinaryMask { height: h, width: w, data }
    }

    fn input() -> Tensor<Flex, 4> {
        let n = 2 * 3 * 64 * 64;
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 997) as f32 / 500.0) - 1.0).collect();
        Tensor::<Flex, 1>::from_data(TensorData::new(v, [n]), &Default::default()).reshape([2, 3, 64, 64])
    }

    #[test]
    fn gt_rows_pool_mask_and_leave_padding_blocked() {
        let mut rng = StdRng::seed_from_u64(0);
        let layout = build_layout(&[vec![1], vec![]], 3, GroupRule::Fixed(1), 0.0, &mut rng).unwrap();
        let gt = vec![vec![rect(0, 0, 8, 8)], vec![]];
        let settings = PilotSettings { piloted_layers: vec![0], point_noise: 0.0, per_head: false };
        let (rows, heads) = gt_rows(&layout, &gt, [2, 2], 2, &settings, &mut rng);
        assert_eq!(heads, 1);
        // Image 0: the 8×8 corner at factor 32 covers cell (0,0) only; image 1: padding, all blocked.
        assert_eq!(rows, vec![false, true, true, true, true, true, true, true]);
        let (rows, heads) = gt_rows(&layout, &gt, [2, 2], 2, &PilotSettings { per_head: true, ..settings }, &mut rng);
        assert_eq!((heads, rows.len()), (2, 16));
    }

    #[test]
    fn matching_outputs_do_not_see_the_mp_part_and_inference_is_unchanged() {
        let model = tiny();
        let device = Default::default();
        let labels = LabelEmbedding::<Flex>::new(3, 16, &device);
        let settings = PilotSettings { piloted_layers: (0..4).collect(), point_noise: 0.2, per_head: false };
        let run = |lab: Vec<Vec<usize>>, gt: Vec<Vec<BinaryMask>>, seed: u64| {
            let mut rng = StdRng::seed_from_u64(seed);
            let layout = build_layout(&lab, 3, GroupRule::Fixed(2), 0.2, &mut rng).unwrap();
            forward_train(&model, &labels, input(), &layout, &gt, &settings, &mut rng)
        };
        let a = run(
            vec![vec![0, 2], vec![1]],
            vec![vec![rect(0, 0, 20, 20), rect(30, 30, 60, 50)], vec![rect(10, 40, 30, 64)]],
            1,
        );
        let b = run(
            vec![vec![1, 1], vec![2]],
            vec![vec![rect(40, 0, 64, 10), rect(0, 30, 10, 64)], vec![rect(5, 5, 60, 60)]],
            2,
        );
        assert_eq!(a.num_extra, 4);
        for (pa, pb) in a.predictions.iter().zip(&b.predictions) {
            let (ma, mb) = (pa.split_at(4).1, pb.split_at(4).1);
            assert_eq!(ma.class_logits.into_data(), mb.class_logits.into_data(), "matching class logits bit-identical");
            assert_eq!(ma.mask_logits.into_data(), mb.mask_logits.into_data(), "matching mask logits bit-identical");
            let (ea, eb) = (pa.split_at(4).0.unwrap(), pb.split_at(4).0.unwrap());
            assert_ne!(ea.mask_logits.into_data(), eb.mask_logits.into_data(), "the MP part does see its inputs");
        }
        // The matching part of a piloted run equals plain inference of the same weights.
        let plain = model.forward(input());
        let (x, y) = (a.last_matching().mask_logits.into_data(), plain.last_matching().mask_logits.into_data());
        x.assert_approx_eq::<f32>(&y, burn::tensor::Tolerance::absolute(1e-5));
    }
}
