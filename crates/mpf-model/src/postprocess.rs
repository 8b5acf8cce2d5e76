//! Inference post-processing for semantic, instance and panoptic segmentation.
//!
//! Mask logits are first upsampled bilinearly to the padded input size, cropped to the image's
//! unpadded size and resized to the requested output size (instance and panoptic resize before
//! inference; semantic builds the class map at padded size and resizes it afterwards, as the
//! reference does). The per-query decisions then run on the host over plain slices, so they can be
//! checked on hand-built inputs.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};

use crate::resize::bilinear;

/// Inference thresholds (`MODEL.MASK_FORMER.TEST.*`, detectron2 `TEST.DETECTIONS_PER_IMAGE`).
#[derive(Config, Debug)]
pub struct PostProcessConfig {
    /// Panoptic: keep a query only if its best non-void class probability exceeds this.
    #[config(default = 0.8)]
    pub object_mask_threshold: f32,
    /// Panoptic: drop a segment whose visible area / own mask area is below this.
    #[config(default = 0.8)]
    pub overlap_threshold: f32,
    /// Instance: top-k (query, class) pairs kept per image.
    #[config(default = 100)]
    pub detections_per_image: usize,
}

/// Where an image sits in the padded batch and the size its results should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    /// Padded batch size `[H, W]` (the model input).
    pub padded: [usize; 2],
    /// The image's unpadded size inside the batch `[h, w]`.
    pub image: [usize; 2],
    /// Output size `[height, width]` (usually the original file's size).
    pub output: [usize; 2],
}

/// Upsamples `[N, H/4, W/4]` maps to padded size, crops the image and resizes to the output size.
///
/// # Shapes
/// - `maps`: `[N, h4, w4]` → `[N, out_h, out_w]`
pub fn resize_to_output<B: Backend>(maps: Tensor<B, 3>, geo: ImageGeometry) -> Tensor<B, 3> {
    let up = bilinear(maps.unsqueeze_dim::<4>(0), geo.padded);
    let [_, n, _, _] = up.dims();
    let cropped = up.slice([0..1, 0..n, 0..geo.image[0], 0..geo.image[1]]);
    bilinear(cropped, geo.output).squeeze_dim::<3>(0)
}

/// Semantic segmentation of one image.
#[derive(Debug, Clone)]
pub struct SemanticResult<B: Backend> {
    /// Per-class scores `Σ_q softmax(cls_q)[c]·σ(mask_q)`, `[K, out_h, out_w]`.
    pub scores: Tensor<B, 3>,
    /// Argmax class per pixel, row-major `out_h·out_w`.
    pub labels: Vec<u32>,
}

/// Semantic inference for one image.
///
/// # Shapes
/// - `class_logits`: `[Q, K+1]`; `mask_logits`: `[Q, H/4, W/4]`
pub fn semantic_inference<B: Backend>(
    class_logits: Tensor<B, 2>,
    mask_logits: Tensor<B, 3>,
    geo: ImageGeometry,
) -> SemanticResult<B> {
    let [q, k1] = class_logits.dims();
    let k = k1 - 1;
    let probs = softmax(class_logits, 1).narrow(1, 0, k); // [Q, K]
    let masks =
        sigmoid(bilinear(mask_logits.unsqueeze_dim::<4>(0), geo.padded)).reshape([q, geo.padded[0] * geo.padded[1]]);
    let semseg = probs.transpose().matmul(masks).reshape([k, geo.padded[0], geo.padded[1]]);
    let scores = resize_to_output(semseg.slice([0..k, 0..geo.padded[0], 0..geo.padded[1]]), geo);
    let labels = argmax_channels(&scores);
    SemanticResult { scores, labels }
}

fn argmax_channels<B: Backend>(scores: &Tensor<B, 3>) -> Vec<u32> {
    let [_, h, w] = scores.dims();
    scores.clone().argmax(0).reshape([h * w]).into_data().iter::<i64>().map(|v| v as u32).collect()
}

/// One detected instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Class id in `0..K`.
    pub label: usize,
    /// Class probability × mean mask probability inside the binary mask.
    pub score: f32,
    /// Which query produced it.
    pub query: usize,
    /// Binary mask (`logit > 0`), row-major.
    pub mask: Vec<bool>,
}

/// Instance selection on host data: the top `detections` (query, class) pairs by class
/// probability (no-object excluded), optionally only thing classes, each rescored by its mask.
/// Results are sorted by final score, highest first.
///
/// - `probs`: softmax class probabilities, `Q × (K+1)` row-major
/// - `mask_logits`: `Q × N` row-major (N pixels at output resolution)
pub fn select_instances(
    probs: &[f32],
    num_classes: usize,
    mask_logits: &[f32],
    detections: usize,
    is_thing: Option<&[bool]>,
) -> Vec<Instance> {
    let k = num_classes;
    let q = probs.len() / (k + 1);
    let n = mask_logits.len() / q.max(1);
    let mut pairs: Vec<(f32, usize)> = (0..q * k).map(|i| (probs[(i / k) * (k + 1) + i % k], i)).collect();
    // Descending by probability; ties keep the lower flat index first (a stable, documented order).
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    pairs.truncate(detections);
    let mut out: Vec<Instance> = pairs
        .into_iter()
        .filter(|&(_, i)| is_thing.is_none_or(|t| t[i % k]))
        .map(|(p, i)| {
            let query = i / k;
            let logits = &mask_logits[query * n..(query + 1) * n];
            let mask: Vec<bool> = logits.iter().map(|&x| x > 0.0).collect();
            let (mut inside, mut area) = (0f32, 0f32);
            for (&x, &m) in logits.iter().zip(&mask) {
                if m {
                    inside += 1.0 / (1.0 + (-x).exp());
                    area += 1.0;
                }
            }
            Instance { label: i % k, score: p * inside / (area + 1e-6), query, mask }
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// Instance inference for one image (see [`select_instances`]).
///
/// # Shapes
/// - `class_logits`: `[Q, K+1]`; `mask_logits`: `[Q, H/4, W/4]`
pub fn instance_inference<B: Backend>(
    class_logits: Tensor<B, 2>,
    mask_logits: Tensor<B, 3>,
    geo: ImageGeometry,
    cfg: &PostProcessConfig,
    is_thing: Option<&[bool]>,
) -> Vec<Instance> {
    let k = class_logits.dims()[1] - 1;
    let probs = to_vec(softmax(class_logits, 1));
    let masks = to_vec(resize_to_output(mask_logits, geo));
    select_instances(&probs, k, &masks, cfg.detections_per_image, is_thing)
}

/// One panoptic segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Segment id in the id map (≥ 1; 0 is void).
    pub id: u32,
    /// Class id in `0..K`.
    pub category_id: usize,
    /// Thing (instance) or stuff class.
    pub is_thing: bool,
    /// Number of pixels carrying this id.
    pub area: usize,
}

/// A panoptic segmentation of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct PanopticResult {
    /// Segment id per pixel, row-major; 0 = void.
    pub ids: Vec<u32>,
    /// The segments, in id order.
    pub segments: Vec<Segment>,
}

impl PanopticResult {
    /// Each segment's class and mask (`ids == id`) on the `[height, width]` map, in id order.
    pub fn segment_masks(&self, [h, w]: [usize; 2]) -> Vec<(usize, crate::mask::BinaryMask)> {
        self.segments
            .iter()
            .map(|s| {
                let data = self.ids.iter().map(|&i| i == s.id).collect();
                (s.category_id, crate::mask::BinaryMask { height: h, width: w, data })
            })
            .collect()
    }
}

/// Panoptic merging on host data.
///
/// - `probs`: `Q × (K+1)` softmax probabilities; `mask_probs`: `Q × N` sigmoid mask probabilities
/// - `is_thing`: `K` flags
pub fn merge_panoptic(probs: &[f32], mask_probs: &[f32], is_thing: &[bool], cfg: &PostProcessConfig) -> PanopticResult {
    let k = is_thing.len();
    let q = probs.len() / (k + 1);
    let n = mask_probs.len() / q.max(1);
    // Kept queries: best class over K+1 is a real class and its probability beats the threshold.
    let kept: Vec<(usize, usize, f32)> = (0..q)
        .filter_map(|qi| {
            let row = &probs[qi * (k + 1)..(qi + 1) * (k + 1)];
            let (label, &score) = row
                .iter()
                .enumerate()
                .fold((0, &f32::NEG_INFINITY), |best, (i, v)| if *v > *best.1 { (i, v) } else { best });
            (label != k && score > cfg.object_mask_threshold).then_some((qi, label, score))
        })
        .collect();
    let mut ids = vec![0u32; n];
    let mut segments: Vec<Segment> = Vec::new();
    if kept.is_empty() {
        return PanopticResult { ids, segments };
    }
    // Per pixel: the kept query with the highest score·σ(mask) (first on ties, like argmax).
    let mut owner = vec![0usize; n];
    for (px, o) in owner.iter_mut().enumerate() {
        let mut best = f32::NEG_INFINITY;
        for (ki, &(qi, _, score)) in kept.iter().enumerate() {
            let v = score * mask_probs[qi * n + px];
            if v > best {
                best = v;
                *o = ki;
            }
        }
    }
    let mut stuff_ids: Vec<Option<u32>> = vec![None; k];
    let mut next_id = 0u32;
    for (ki, &(qi, label, _)) in kept.iter().enumerate() {
        let m = &mask_probs[qi * n..(qi + 1) * n];
        let area = owner.iter().filter(|&&o| o == ki).count();
        let original = m.iter().filter(|&&p| p >= 0.5).count();
        let seg: Vec<usize> = (0..n).filter(|&px| owner[px] == ki && m[px] >= 0.5).collect();
        if area == 0 || original == 0 || seg.is_empty() {
            continue;
        }
        if (area as f32) / (original as f32) < cfg.overlap_threshold {
            continue;
        }
        let id = if !is_thing[label] {
            if let Some(id) = stuff_ids[label] {
                // Merge into the existing segment of this stuff class.
                for &px in &seg {
                    ids[px] = id;
                }
                if let Some(s) = segments.iter_mut().find(|s| s.id == id) {
                    s.area = ids.iter().filter(|&&v| v == id).count();
                }
                continue;
            }
            next_id += 1;
            stuff_ids[label] = Some(next_id);
            next_id
        } else {
            next_id += 1;
            next_id
        };
        for &px in &seg {
            ids[px] = id;
        }
        segments.push(Segment { id, category_id: label, is_thing: is_thing[label], area: 0 });
    }
    for s in &mut segments {
        s.area = ids.iter().filter(|&&v| v == s.id).count();
    }
    PanopticResult { ids, segments }
}

/// Panoptic inference for one image (see [`merge_panoptic`]).
///
/// # Shapes
/// - `class_logits`: `[Q, K+1]`; `mask_logits`: `[Q, H/4, W/4]`
pub fn panoptic_inference<B: Backend>(
    class_logits: Tensor<B, 2>,
    mask_logits: Tensor<B, 3>,
    geo: ImageGeometry,
    cfg: &PostProcessConfig,
    is_thing: &[bool],
) -> PanopticResult {
    let probs = to_vec(softmax(class_logits, 1));
    let masks = to_vec(sigmoid(resize_to_output(mask_logits, geo)));
    merge_panoptic(&probs, &masks, is_thing, cfg)
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("float tensor data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};

    #[test]
    fn instance_topk_scoring_by_hand() {
        // Q=2, K=2. Query 0: p = [0.6, 0.3, 0.1]; query 1: [0.2, 0.7, 0.1]. Pixels N=2.
        let probs = [0.6, 0.3, 0.1, 0.2, 0.7, 0.1];
        let logits = [2.0, -1.0, 0.0, 3.0]; // q0 mask {px0}; q1 mask {px1} (0 is not > 0)
        let out = select_instances(&probs, 2, &logits, 3, None);
        // Top-3 pairs by prob: (q1,c1)=0.7, (q0,c0)=0.6, (q0,c1)=0.3.
        let s2 = 1.0 / (1.0 + (-2.0f32).exp());
        let s3 = 1.0 / (1.0 + (-3.0f32).exp());
        let expect = [
            (1usize, 1usize, 0.7 * s3 / (1.0 + 1e-6)),
            (0, 0, 0.6 * s2 / (1.0 + 1e-6)),
            (0, 1, 0.3 * s2 / (1.0 + 1e-6)),
        ];
        assert_eq!(out.len(), 3);
        for (inst, (q, c, s)) in out.iter().zip(expect) {
            assert_eq!((inst.query, inst.label), (q, c));
            assert!((inst.score - s).abs() < 1e-6);
        }
        assert_eq!(out[0].mask, vec![false, true]);
        // Thing filter applies after top-k: with class 1 as stuff only (q0, c0) survives.
        let out = select_instances(&probs, 2, &logits, 3, Some(&[true, false]));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].query, out[0].label), (0, 0));
    }

    #[test]
    fn empty_mask_scores_zero() {
        let out = select_instances(&[0.9, 0.1], 1, &[-1.0, -2.0], 1, None);
        assert_eq!(out[0].score, 0.0);
    }

    fn cfg() -> PostProcessConfig {
        PostProcessConfig::new()
    }

    #[test]
    fn panoptic_threshold_overlap_and_stuff_merge() {
        // K = 2: class 0 thing, class 1 stuff. 4 pixels. Q = 4.
        let is_thing = [true, false];
        let probs = [
            0.9, 0.05, 0.05, // q0 thing, kept
            0.05, 0.9, 0.05, // q1 stuff, kept
            0.05, 0.85, 0.10, // q2 stuff (same class), kept → merged into q1's id
            0.5, 0.3, 0.2, // q3 below threshold → dropped
        ];
        let mask_probs = [
            0.9, 0.8, 0.1, 0.1, // q0 owns px0, px1
            0.1, 0.1, 0.9, 0.1, // q1 owns px2
            0.1, 0.1, 0.1, 0.9, // q2 owns px3
            1.0, 1.0, 1.0, 1.0, // q3 ignored
        ];
        let r = merge_panoptic(&probs, &mask_probs, &is_thing, &cfg());
        assert_eq!(r.ids, vec![1, 1, 2, 2]);
        assert_eq!(
            r.segments,
            vec![
                Segment { id: 1, category_id: 0, is_thing: true, area: 2 },
                Segment { id: 2, category_id: 1, is_thing: false, area: 2 },
            ]
        );
    }

    #[test]
    fn panoptic_overlap_filter_drops_occluded_query() {
        // q0 (score .95) covers px0..px3 at 0.9; q1 (score .9) mask px2, px3 at 0.6 only → loses
        // both pixels to q0: area 0 → dropped. q2 covers px0..1 at .6 and px2..3 at .55, score .9:
        // also loses everywhere.
        let is_thing = [true];
        let probs = [0.95, 0.05, 0.9, 0.1];
        let mask_probs = [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.6, 0.6];
        let r = merge_panoptic(&probs, &mask_probs, &is_thing, &cfg());
        assert_eq!(r.ids, vec![1; 4]);
        assert_eq!(r.segments.len(), 1);
        // Now q1 wins px3 only (higher mask there) but its own mask covers px2 and px3: 1/2 < 0.8.
        let mask_probs = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.6, 0.9];
        let r = merge_panoptic(&probs, &mask_probs, &is_thing, &cfg());
        assert_eq!(r.ids, vec![1, 1, 1, 0], "px3 is void: its owner was filtered");
        assert_eq!(r.segments.len(), 1);
    }

    #[test]
    fn panoptic_with_nothing_kept_is_all_void() {
        let r = merge_panoptic(&[0.1, 0.9], &[1.0, 1.0], &[true], &cfg());
        assert_eq!(r.ids, vec![0, 0]);
        assert!(r.segments.is_empty());
    }

    #[test]
    fn semantic_combines_class_probs_and_masks() {
        let device = Default::default();
        // Q=1, K=2 with class logits [ln 3, ln 1, -inf-ish] → probs ≈ [0.75, 0.25, 0].
        let cls = Tensor::<TestBackend, 2>::from_floats([[3f32.ln(), 0.0, -1e9]], &device);
        let masks = Tensor::<TestBackend, 3>::zeros([1, 1, 1], &device); // σ = 0.5 everywhere
        let geo = ImageGeometry { padded: [4, 4], image: [2, 4], output: [1, 2] };
        let r = semantic_inference(cls, masks, geo);
        assert_eq!(r.scores.dims(), [2, 1, 2]);
        let v = r.scores.into_data().to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&v, &[0.375, 0.375, 0.125, 0.125]) < 1e-6, "{v:?}");
        assert_eq!(r.labels, vec![0, 0]);
    }

    #[test]
    fn resize_crops_before_resizing() {
        let device = Default::default();
        // Padded 1×4 = [0, 0, 10, 10] (already at output scale), image is the left half.
        let maps = Tensor::<TestBackend, 3>::from_floats([[[0.0, 0.0, 10.0, 10.0]]], &device);
        let geo = ImageGeometry { padded: [1, 4], image: [1, 2], output: [1, 2] };
        let v = resize_to_output(maps, geo).into_data().to_vec::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 0.0]);
    }
}
