//! The MP-Former training forward: MP queries prepended to the matching queries, their
//! cross-attention rows replaced by (noised) GT masks on the piloted layers, and the self-attention
//! mask of [`crate::masks::self_attention_mask`]. Inference never builds any of this: it is
//! `Mask2Former::forward`.

use std::collections::HashMap;

use burn::module::{Initializer, Param};
use burn::prelude::*;
use mpf_model::Mask2Former;
use mpf_model::decoder::{DecoderOutput, ExtraQueries, Prediction};
use mpf_model::pixel_decoder::PixelDecoderOutput;
use mpf_model::rng::{ImageRng, ImageStreams, Stream};

use crate::config::PilotConfig;
use crate::layout::{MpLayout, build_layout};
use crate::masks::{BinaryMask, self_attention_mask};
use crate::noise::MaskNoise;

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

/// GT targets of one image as the MP part needs them: class ids and binary masks at the padded
/// input size, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GtObjects {
    /// Class id of each object (`< K`).
    pub labels: Vec<usize>,
    /// Mask of each object, `[H, W]` of the padded batch.
    pub masks: Vec<BinaryMask>,
}

/// The random streams of the MP part at one training step: per image
/// ([`mpf_model::rng::ImageStreams`]) for label and mask noise, so an image's noise does not
/// depend on the other images of its batch or on how a batch is split across replicas.
#[derive(Debug, Clone)]
pub struct PilotStreams {
    /// Label noise.
    pub label: ImageStreams,
    /// Mask noise (point flips, shifts, scales).
    pub mask: ImageStreams,
}

impl PilotStreams {
    /// The streams of training step `step` of a run seeded `seed` (one device).
    pub fn for_step(seed: u64, step: u64) -> Self {
        Self::for_images(seed, step, 0)
    }

    /// The streams of a replica whose batch starts at image `first_image` of the step's global batch.
    pub fn for_images(seed: u64, step: u64, first_image: u64) -> Self {
        Self {
            label: ImageStreams::new(seed, Stream::LabelNoise, step, first_image),
            mask: ImageStreams::new(seed, Stream::MaskNoise, step, first_image),
        }
    }
}

/// Builds the MP cross-attention rows of one batch, level by level.
///
/// The GT masks are max-pooled to each level's size once and cached; point noise is drawn fresh
/// on every call (every layer), independently per slot (so per group) and per head when asked.
/// Shift and scale noise are drawn once, when the builder is made, on the 1/8 masks (one draw
/// per slot, so groups differ), and the coarser levels are pooled from the noised 1/8 masks.
pub struct GtRowBuilder<'a> {
    layout: &'a MpLayout,
    noise: MaskNoise,
    heads: usize,
    /// Per image, the masks rows are pooled from: one per object (points / none) or one per slot
    /// (shift / scale, already noised at 1/8).
    base: Vec<Vec<BinaryMask>>,
    /// Per image and slot, the index into `base` (`None` for padding).
    slot_base: Vec<Vec<Option<usize>>>,
    cache: HashMap<[usize; 2], Vec<Vec<BinaryMask>>>,
}

impl<'a> GtRowBuilder<'a> {
    /// Prepares the rows of `layout` from `gt` (padded input size `[H, W]`). `heads` is the
    /// decoder's head count (used when `per_head`); `rng` holds the mask-noise streams (image `b`
    /// draws from `rng.image(b)`).
    pub fn new(
        layout: &'a MpLayout,
        gt: &[GtObjects],
        noise: MaskNoise,
        per_head: bool,
        heads: usize,
        rng: &mut impl ImageRng,
    ) -> Self {
        let per_head = per_head && matches!(noise, MaskNoise::Points { .. });
        let heads = if per_head { heads } else { 1 };
        let mut base = Vec::with_capacity(layout.slots.len());
        let mut slot_base = Vec::with_capacity(layout.slots.len());
        for (b, (slots, objects)) in layout.slots.iter().zip(gt).enumerate() {
            if noise.once_per_batch() {
                let mut masks = Vec::new();
                let idx = slots
                    .iter()
                    .map(|slot| {
                        slot.object.map(|j| {
                            let m = &objects.masks[j];
                            let eighth = m.downsample_to(m.height.div_ceil(8), m.width.div_ceil(8));
                            masks.push(noise.apply_per_batch(&eighth, rng.image(b)));
                            masks.len() - 1
                        })
                    })
                    .collect();
                base.push(masks);
                slot_base.push(idx);
            } else {
                base.push(objects.masks.clone());
                slot_base.push(slots.iter().map(|s| s.object).collect());
            }
        }
        Self { layout, noise, heads, base, slot_base, cache: HashMap::new() }
    }

    /// Heads the rows are drawn for: the decoder's count with per-head point noise, else 1.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The rows of one layer at level size `[h, w]`, `true` = blocked (background after noise);
    /// padding slots fully `true`. Row-major `[B, heads, P, h·w]`.
    pub fn rows(&mut self, size: [usize; 2], rng: &mut impl ImageRng) -> Vec<bool> {
        let [h, w] = size;
        let hw = h * w;
        let p = self.layout.num_slots();
        let pooled = self.cache.entry(size).or_insert_with(|| {
            self.base.iter().map(|masks| masks.iter().map(|m| m.downsample_to(h, w)).collect()).collect()
        });
        let mut rows = vec![true; self.layout.slots.len() * self.heads * p * hw];
        for (b, slots) in self.slot_base.iter().enumerate() {
            for (s, k) in slots.iter().enumerate() {
                let Some(k) = *k else { continue };
                for head in 0..self.heads {
                    let noised = self.noise.apply_per_layer(&pooled[b][k], rng.image(b));
                    let start = ((b * self.heads + head) * p + s) * hw;
                    for (dst, &fg) in rows[start..start + hw].iter_mut().zip(&noised.data) {
                        *dst = !fg;
                    }
                }
            }
        }
        rows
    }
}

/// MP-Former: Mask2Former plus the MP part's class embedding. With `label_enc = None` it is plain
/// Mask2Former (the baseline, or a model loaded for inference only). Inference ([`Self::forward`])
/// never touches the MP part.
#[derive(Module, Debug)]
pub struct MpFormer<B: Backend> {
    /// The segmenter used at inference.
    pub model: Mask2Former<B>,
    /// `[K, d]` MP class embedding, present when the pilot is enabled.
    pub label_enc: Option<LabelEmbedding<B>>,
}

/// A training forward's output: the decoder's 10 predictions over `P + Q` queries and the MP
/// layout (`None` when the MP part was skipped: pilot off, no object in the batch, or `n_g = 0`).
#[derive(Debug, Clone)]
pub struct PilotedOutput<B: Backend> {
    /// All predictions, the `P` MP slots first.
    pub output: DecoderOutput<B>,
    /// The MP layout, with the per-slot targets the criterion assigns directly.
    pub layout: Option<MpLayout>,
}

impl<B: Backend> PilotedOutput<B> {
    /// Every prediction split into (MP part, matching part).
    pub fn split(&self) -> Vec<(Option<Prediction<B>>, Prediction<B>)> {
        self.output.predictions.iter().map(|p| p.split_at(self.output.num_extra)).collect()
    }
}

impl<B: Backend> MpFormer<B> {
    /// Wraps `model`; adds a class embedding when `pilot.enabled`.
    pub fn new(model: Mask2Former<B>, pilot: &PilotConfig, device: &B::Device) -> Self {
        let label_enc =
            pilot.enabled.then(|| LabelEmbedding::new(model.num_classes, model.decoder.hidden_dim(), device));
        let out = Self { model, label_enc };
        mpf_model::model::materialize(&out);
        out
    }

    /// Inference: exactly `Mask2Former::forward` of the wrapped model.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    pub fn forward(&self, images: Tensor<B, 4>) -> DecoderOutput<B> {
        self.model.forward(images)
    }

    /// The training forward: lays out the MP slots for `gt` (label noise from
    /// `streams.label`), prepends their content, pilots their cross-attention on
    /// `pilot.piloted_layers` with GT rows (mask noise from `streams.mask`) and hides them from
    /// the matching queries. Falls back to the plain forward when the MP part is skipped.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`, `gt[b].masks[j]`: `H × W`
    /// - output predictions: class `[B, P + Q, K + 1]`, masks `[B, P + Q, H/4, W/4]`
    pub fn forward_train(
        &self,
        images: Tensor<B, 4>,
        gt: &[GtObjects],
        pilot: &PilotConfig,
        streams: &mut PilotStreams,
    ) -> PilotedOutput<B> {
        mpf_model::model::join_parameter_graphs(self);
        self.decode_train(self.model.encode(images), gt, pilot, streams)
    }

    /// The decoder part of [`Self::forward_train`], on the output of `self.model.encode` (so
    /// benchmarks can time backbone, pixel decoder and decoder apart).
    pub fn decode_train(
        &self,
        pixel: PixelDecoderOutput<B>,
        gt: &[GtObjects],
        pilot: &PilotConfig,
        streams: &mut PilotStreams,
    ) -> PilotedOutput<B> {
        let layout = match (&self.label_enc, pilot.enabled) {
            (Some(_), true) => {
                let labels: Vec<Vec<usize>> = gt.iter().map(|g| g.labels.clone()).collect();
                build_layout(
                    &labels,
                    self.model.num_classes,
                    pilot.group_rule(),
                    pilot.label_noise_ratio,
                    &mut streams.label,
                )
            }
            _ => None,
        };
        let (Some(layout), Some(label_enc)) = (layout, &self.label_enc) else {
            return PilotedOutput { output: self.model.decode(pixel, None), layout: None };
        };
        let output = forward_piloted(&self.model, label_enc, pixel, &layout, gt, pilot, &mut streams.mask);
        PilotedOutput { output, layout: Some(layout) }
    }
}

/// The piloted forward for a given layout: MP content from `labels`, GT rows from `gt` on
/// `pilot.piloted_layers` (the others use the MP queries' own predicted masks), the MP
/// self-attention mask. Returns the decoder output, whose every prediction holds the `P` MP slots
/// first.
pub fn forward_piloted<B: Backend>(
    model: &Mask2Former<B>,
    labels: &LabelEmbedding<B>,
    pixel: PixelDecoderOutput<B>,
    layout: &MpLayout,
    gt: &[GtObjects],
    pilot: &PilotConfig,
    rng: &mut impl ImageRng,
) -> DecoderOutput<B> {
    let device = pixel.mask_features.device();
    let b = layout.slots.len();
    let p = layout.num_slots();
    let q = model.decoder.num_queries();
    let t = p + q;
    let sm = self_attention_mask(layout.num_groups, layout.group_size, q);
    let self_attn_mask = Tensor::<B, 1, Bool>::from_data(TensorData::new(sm, [t * t]), &device).reshape([t, t]);
    let mut builder =
        GtRowBuilder::new(layout, gt, pilot.mask_noise(), pilot.per_head, model.decoder.num_heads, &mut *rng);
    let n_heads = builder.heads();
    let mut rows = |layer: usize, size: [usize; 2]| -> Option<Tensor<B, 4, Bool>> {
        if !pilot.piloted_layers.contains(&layer) {
            return None;
        }
        let data = builder.rows(size, &mut *rng);
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
    model.decode(pixel, Some(extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupMode;
    use crate::layout::GroupRule;
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
            .with_backbone(ResNetConfig::new().with_depth(18).with_width(4).into())
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

    fn objects(items: &[(usize, BinaryMask)]) -> GtObjects {
        GtObjects { labels: items.iter().map(|x| x.0).collect(), masks: items.iter().map(|x| x.1.clone()).collect() }
    }

    #[test]
    fn gt_rows_pool_mask_and_leave_padding_blocked() {
        let mut rng = StdRng::seed_from_u64(0);
        let layout = build_layout(&[vec![1], vec![]], 3, GroupRule::Fixed(1), 0.0, &mut rng).unwrap();
        let gt = vec![objects(&[(1, rect(0, 0, 8, 8))]), GtObjects::default()];
        let mut builder = GtRowBuilder::new(&layout, &gt, MaskNoise::None, false, 2, &mut rng);
        assert_eq!(builder.heads(), 1);
        // Image 0: the 8×8 corner at factor 32 covers cell (0,0) only; image 1: padding, all blocked.
        assert_eq!(builder.rows([2, 2], &mut rng), vec![false, true, true, true, true, true, true, true]);
        // At 1/8 the corner covers exactly one cell of 8×8.
        let rows = builder.rows([8, 8], &mut rng);
        assert_eq!(rows[..64].iter().filter(|&&b| !b).count(), 1);
        let mut per_head = GtRowBuilder::new(&layout, &gt, MaskNoise::Points { ratio: 0.1 }, true, 2, &mut rng);
        assert_eq!((per_head.heads(), per_head.rows([2, 2], &mut rng).len()), (2, 16));
    }

    #[test]
    fn point_noise_is_fresh_per_layer_and_independent_per_group_and_head() {
        let mut rng = StdRng::seed_from_u64(3);
        let layout = build_layout(&[vec![0]], 3, GroupRule::Fixed(2), 0.0, &mut rng).unwrap();
        let gt = vec![objects(&[(0, rect(0, 0, 32, 32))])];
        let mut b = GtRowBuilder::new(&layout, &gt, MaskNoise::Points { ratio: 0.5 }, true, 2, &mut rng);
        let hw = 64;
        let (l0, l1) = (b.rows([8, 8], &mut rng), b.rows([8, 8], &mut rng));
        assert_ne!(l0, l1, "a new layer draws new noise");
        // Layout [B=1, heads=2, P=2, 64]: slot 0 is group 0, slot 1 is group 1, same object.
        let row =
            |r: &Vec<bool>, head: usize, slot: usize| r[(head * 2 + slot) * hw..(head * 2 + slot + 1) * hw].to_vec();
        assert_ne!(row(&l0, 0, 0), row(&l0, 0, 1), "groups draw independently");
        assert_ne!(row(&l0, 0, 0), row(&l0, 1, 0), "heads draw independently");
        // Without noise every group and layer sees the same pooled GT.
        let mut clean = GtRowBuilder::new(&layout, &gt, MaskNoise::None, true, 2, &mut rng);
        let c = clean.rows([8, 8], &mut rng);
        assert_eq!(clean.heads(), 1, "per-head only matters for point noise");
        assert_eq!(c[..hw], c[hw..]);
        assert_eq!(c.iter().filter(|&&x| !x).count(), 2 * 16, "a 32×32 square is 4×4 cells at 1/8");
    }

    #[test]
    fn shift_noise_is_drawn_once_per_batch_and_coarse_levels_pool_the_shifted_mask() {
        let mut rng = StdRng::seed_from_u64(4);
        let layout = build_layout(&[vec![0]], 3, GroupRule::Fixed(2), 0.0, &mut rng).unwrap();
        let gt = vec![objects(&[(0, rect(16, 16, 48, 48))])];
        let mut b = GtRowBuilder::new(&layout, &gt, MaskNoise::Shift { lambda: 1.0 }, false, 2, &mut rng);
        let fine = b.rows([8, 8], &mut rng);
        assert_eq!(fine, b.rows([8, 8], &mut rng), "no fresh draw per layer");
        assert_ne!(fine[..64], fine[64..], "groups shift independently");
        // The 2×2 level is the max-pool of the shifted 8×8 mask.
        let coarse = b.rows([2, 2], &mut rng);
        let shifted = BinaryMask { height: 8, width: 8, data: fine[..64].iter().map(|&x| !x).collect() };
        let expect: Vec<bool> = shifted.downsample_any(4).data.iter().map(|&x| !x).collect();
        assert_eq!(coarse[..4], expect[..]);
    }

    #[test]
    fn matching_outputs_do_not_see_the_mp_part_and_inference_is_unchanged() {
        let device = Default::default();
        let pilot = PilotConfig {
            groups: 2,
            mask_noise_ratio: 0.2,
            piloted_layers: (0..4).collect(),
            ..PilotConfig::default()
        };
        let net = MpFormer::new(tiny(), &pilot, &device);
        let run = |gt: Vec<GtObjects>, seed: u64| {
            net.forward_train(input(), &gt, &pilot, &mut PilotStreams::for_step(seed, 0))
        };
        let a = run(
            vec![objects(&[(0, rect(0, 0, 20, 20)), (2, rect(30, 30, 60, 50))]), objects(&[(1, rect(10, 40, 30, 64))])],
            1,
        );
        let b = run(
            vec![objects(&[(1, rect(40, 0, 64, 10)), (1, rect(0, 30, 10, 64))]), objects(&[(2, rect(5, 5, 60, 60))])],
            2,
        );
        assert_eq!(a.output.num_extra, 4);
        assert_eq!(a.layout.as_ref().unwrap().num_groups, 2);
        for ((ea, ma), (eb, mb)) in a.split().into_iter().zip(b.split()) {
            assert_eq!(ma.class_logits.into_data(), mb.class_logits.into_data(), "matching class logits bit-identical");
            assert_eq!(ma.mask_logits.into_data(), mb.mask_logits.into_data(), "matching mask logits bit-identical");
            let (ea, eb) = (ea.unwrap(), eb.unwrap());
            assert_eq!(ea.class_logits.dims(), [2, 4, 4]);
            assert_ne!(ea.mask_logits.into_data(), eb.mask_logits.into_data(), "the MP part does see its inputs");
        }
        // The matching part of a piloted run equals plain inference of the same weights.
        let plain = net.forward(input());
        let (x, y) = (a.output.last_matching().mask_logits.into_data(), plain.last_matching().mask_logits.into_data());
        x.assert_approx_eq::<f32>(&y, burn::tensor::Tolerance::absolute(1e-5));
    }

    #[test]
    fn empty_batch_and_disabled_pilot_skip_the_mp_part() {
        let device = Default::default();
        let pilot = PilotConfig::default();
        let net = MpFormer::new(tiny(), &pilot, &device);
        let plain = net.forward(input());
        for rule in [GroupMode::Fixed, GroupMode::Dynamic] {
            let pilot = PilotConfig { group_rule: rule, ..pilot.clone() };
            let out = net.forward_train(
                input(),
                &[GtObjects::default(), GtObjects::default()],
                &pilot,
                &mut PilotStreams::for_step(0, 0),
            );
            assert!(out.layout.is_none());
            assert_eq!(out.output.num_extra, 0);
            assert_eq!(
                out.output.last_matching().mask_logits.into_data(),
                plain.last_matching().mask_logits.into_data()
            );
        }
        let off = MpFormer::new(tiny(), &PilotConfig::disabled(), &device);
        assert!(off.label_enc.is_none());
        let gt = vec![objects(&[(0, rect(0, 0, 20, 20))]), GtObjects::default()];
        let out = off.forward_train(input(), &gt, &PilotConfig::disabled(), &mut PilotStreams::for_step(0, 0));
        assert!(out.layout.is_none() && out.output.num_extra == 0);
    }
}
