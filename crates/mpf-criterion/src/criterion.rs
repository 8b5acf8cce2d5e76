//! The set criterion (spec §2.6, §3.8, appendix C): Hungarian-matched class / BCE / dice losses on
//! the matching part of every prediction, direct-assignment losses on the MP part, and the
//! appendix's two naive baselines as switches.

use std::collections::BTreeMap;

use burn::prelude::*;
use mpf_model::decoder::Prediction;
use mpf_model::rng::{Stream, stream};
use mpf_pilot::config::PilotConfig;
use mpf_pilot::forward::PilotedOutput;
use mpf_pilot::layout::MpLayout;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::CriterionError;
use crate::losses::{dice, sigmoid_bce, weighted_cross_entropy};
use crate::matcher::{Assignment, MatchStats, MatcherWeights, match_prediction, matcher_points};
use crate::points::{point_sample, uncertain_points};

/// How the matching part is assigned to GT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchingMode {
    /// A Hungarian matching per prediction (Mask2Former, MP-Former).
    PerPrediction,
    /// Appendix C's "fixed matching scheme": match the last prediction only and reuse that
    /// assignment for every earlier one (Table 10: 36.0 AP vs 38.7, it does not work).
    FixedLast,
}

/// The `[loss]` config table; defaults are Mask2Former's (spec §2.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Weight of the class loss and class cost (2.0).
    pub class_weight: f64,
    /// Weight of the BCE mask loss and cost (5.0).
    pub mask_weight: f64,
    /// Weight of the dice loss and cost (5.0).
    pub dice_weight: f64,
    /// Class weight of "no object" in the cross-entropy (0.1).
    pub no_object_weight: f64,
    /// Points per mask for the losses and per image for the matcher (12544 = 112²).
    pub num_points: usize,
    /// Candidate oversampling of importance sampling (3.0).
    pub oversample_ratio: f64,
    /// Share of the points chosen by uncertainty (0.75).
    pub importance_sample_ratio: f64,
    /// Supervise all `L + 1` predictions (true) or only the last.
    pub deep_supervision: bool,
    /// Matching scheme of the matching part.
    pub matching: MatchingMode,
    /// Appendix C's layer-consistency auxiliary loss `Σᵢ L_mask(Mᵢ, Mᵢ₋₁)`, `Mᵢ₋₁` detached and
    /// binarised as the label, on the queries matched at the last prediction; this multiplies the
    /// mask and dice weights for it. 0 = off (Table 10: 38.2 AP vs 38.7, it does not work).
    pub layer_consistency_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            class_weight: 2.0,
            mask_weight: 5.0,
            dice_weight: 5.0,
            no_object_weight: 0.1,
            num_points: 12544,
            oversample_ratio: 3.0,
            importance_sample_ratio: 0.75,
            deep_supervision: true,
            matching: MatchingMode::PerPrediction,
            layer_consistency_weight: 0.0,
        }
    }
}

impl LossConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<(), CriterionError> {
        let bad =
            |key: &str, v: f64| CriterionError::Config(format!("loss.{key} must be a finite number ≥ 0, got {v}"));
        for (key, v) in [
            ("class_weight", self.class_weight),
            ("mask_weight", self.mask_weight),
            ("dice_weight", self.dice_weight),
            ("no_object_weight", self.no_object_weight),
            ("layer_consistency_weight", self.layer_consistency_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(key, v));
            }
        }
        if self.num_points == 0 {
            return Err(CriterionError::Config("loss.num_points must be at least 1".into()));
        }
        if !(self.oversample_ratio >= 1.0 && self.oversample_ratio.is_finite()) {
            return Err(CriterionError::Config(format!(
                "loss.oversample_ratio must be ≥ 1, got {}",
                self.oversample_ratio
            )));
        }
        if !(0.0..=1.0).contains(&self.importance_sample_ratio) {
            return Err(CriterionError::Config(format!(
                "loss.importance_sample_ratio must lie in [0, 1], got {}",
                self.importance_sample_ratio
            )));
        }
        Ok(())
    }

    /// The matcher's cost weights and point count.
    pub fn matcher_weights(&self) -> MatcherWeights {
        MatcherWeights {
            class: self.class_weight,
            mask: self.mask_weight,
            dice: self.dice_weight,
            num_points: self.num_points,
        }
    }
}

/// GT of one image.
#[derive(Debug, Clone)]
pub struct ImageTargets<B: Backend> {
    /// Class ids `< K`, one per object.
    pub labels: Vec<usize>,
    /// Masks `[G, H, W]` (0/1) at the padded input size, `None` when the image has no object.
    pub masks: Option<Tensor<B, 3>>,
}

/// The random streams of the criterion at one step (spec §9.8).
#[derive(Debug, Clone)]
pub struct CriterionStreams {
    /// The matcher's shared points.
    pub matcher: StdRng,
    /// The losses' importance-sampled points.
    pub points: StdRng,
}

impl CriterionStreams {
    /// The streams of training step `step` of a run seeded `seed`.
    pub fn for_step(seed: u64, step: u64) -> Self {
        Self { matcher: stream(seed, Stream::MatcherPoints, step), points: stream(seed, Stream::LossPoints, step) }
    }
}

/// One weighted term of the total loss.
#[derive(Debug, Clone)]
pub struct LossTerm<B: Backend> {
    /// `ce`, `mask`, `dice` (matching part), `mp_ce`, `mp_mask`, `mp_dice` (MP part),
    /// `consistency_mask`, `consistency_dice` (appendix C auxiliary loss).
    pub name: &'static str,
    /// Prediction index `0..=L` (0 = before the first decoder layer).
    pub prediction: usize,
    /// Its weight in the total.
    pub weight: f64,
    /// The unweighted value, `[1]`.
    pub value: Tensor<B, 1>,
}

/// Everything the criterion computed for one batch.
#[derive(Debug, Clone)]
pub struct Losses<B: Backend> {
    /// Every term.
    pub terms: Vec<LossTerm<B>>,
    /// The matching part's assignment per prediction and image.
    pub assignments: Vec<Vec<Assignment>>,
    /// Matcher diagnostics.
    pub stats: MatchStats,
}

impl<B: Backend> Losses<B> {
    /// `Σ weight · value`, `[1]`.
    pub fn total(&self) -> Tensor<B, 1> {
        let mut it = self.terms.iter().map(|t| t.value.clone() * t.weight);
        let first = it.next().expect("the criterion always produces terms");
        it.fold(first, |a, b| a + b)
    }

    /// Weighted terms by name, `"{name}_{prediction}"` (as detectron2 logs them), plus `total`;
    /// one device read.
    pub fn report(&self) -> BTreeMap<String, f64> {
        let values: Vec<Tensor<B, 1>> = self.terms.iter().map(|t| t.value.clone() * t.weight).collect();
        let host: Vec<f32> = Tensor::cat(values, 0).into_data().convert::<f32>().to_vec().unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut total = 0.0;
        for (t, v) in self.terms.iter().zip(host) {
            out.insert(format!("{}_{}", t.name, t.prediction), v as f64);
            total += v as f64;
        }
        out.insert("total".into(), total);
        out
    }
}

/// The criterion.
#[derive(Debug, Clone)]
pub struct Criterion {
    /// Its config.
    pub config: LossConfig,
}

/// Targets concatenated over the batch, with each image's offset.
struct Batch<B: Backend> {
    masks: Option<Tensor<B, 3>>,
    offsets: Vec<usize>,
    num_masks: f64,
}

impl Criterion {
    /// A criterion with `config` (validated).
    pub fn new(config: LossConfig) -> Result<Self, CriterionError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Losses of a training forward. `pilot` says whether MP losses are expected (zero terms when
    /// the MP part was skipped) and whether they include the class loss.
    pub fn forward<B: Backend>(
        &self,
        out: &PilotedOutput<B>,
        targets: &[ImageTargets<B>],
        pilot: &PilotConfig,
        streams: &mut CriterionStreams,
    ) -> Result<Losses<B>, CriterionError> {
        let c = &self.config;
        let splits = out.split();
        let n_pred = splits.len();
        let last = n_pred - 1;
        let first_supervised = if c.deep_supervision { 0 } else { last };
        let device = splits[last].1.class_logits.device();
        let [b, q, k1] = splits[last].1.class_logits.dims();
        if targets.len() != b {
            return Err(CriterionError::Shape(format!("{} target sets for a batch of {b}", targets.len())));
        }
        if let Some(t) = targets.iter().flat_map(|t| &t.labels).find(|&&l| l >= k1 - 1) {
            return Err(CriterionError::Label { label: *t, num_classes: k1 - 1 });
        }
        let batch = concat_targets(targets);

        // Matching part: one shared point set per image, then per prediction (or the last only).
        let mut stats = MatchStats::default();
        let points = matcher_points::<B>(b, c.num_points, &mut streams.matcher, &device);
        let gt: Vec<(&[usize], Option<Tensor<B, 3>>)> =
            targets.iter().map(|t| (t.labels.as_slice(), t.masks.clone())).collect();
        let weights = c.matcher_weights();
        let mut assignments = vec![Vec::new(); n_pred];
        let match_one = |p: &Prediction<B>, stats: &mut MatchStats| {
            match_prediction(&p.class_logits, &p.mask_logits, &gt, &points, &weights, stats)
        };
        let last_assignment = match_one(&splits[last].1, &mut stats)?;
        for (i, (_, m)) in splits.iter().enumerate().take(last).skip(first_supervised) {
            assignments[i] = match c.matching {
                MatchingMode::PerPrediction => match_one(m, &mut stats)?,
                MatchingMode::FixedLast => last_assignment.clone(),
            };
        }
        assignments[last] = last_assignment;

        let mut terms = Vec::new();
        for (i, (mp, m)) in splits.iter().enumerate().skip(first_supervised) {
            // Class: matched queries take their object's label, the rest "no object".
            let mut cls = vec![k1 - 1; b * q];
            let mut pairs = Vec::new();
            for (img, a) in assignments[i].iter().enumerate() {
                for &(query, obj) in a {
                    cls[img * q + query] = targets[img].labels[obj];
                    pairs.push((img * q + query, batch.offsets[img] + obj));
                }
            }
            let ce = weighted_cross_entropy(m.class_logits.clone().reshape([b * q, k1]), &cls, c.no_object_weight);
            terms.push(LossTerm { name: "ce", prediction: i, weight: c.class_weight, value: ce });
            let (bce, dc) = self.mask_terms(&m.mask_logits, &batch, &pairs, batch.num_masks, streams, &device);
            terms.push(LossTerm { name: "mask", prediction: i, weight: c.mask_weight, value: bce });
            terms.push(LossTerm { name: "dice", prediction: i, weight: c.dice_weight, value: dc });

            if pilot.enabled {
                terms.extend(self.mp_terms(i, mp.as_ref(), out.layout.as_ref(), &batch, pilot, streams, &device));
            }
        }

        if c.layer_consistency_weight > 0.0 {
            terms.extend(self.consistency_terms(&splits, &assignments[last], q, streams, &device, batch.num_masks));
        }
        Ok(Losses { terms, assignments, stats })
    }

    /// BCE and dice on importance-sampled points for `(prediction row, GT row)` pairs; zero when
    /// there is no pair.
    fn mask_terms<B: Backend>(
        &self,
        mask_logits: &Tensor<B, 4>,
        batch: &Batch<B>,
        pairs: &[(usize, usize)],
        normaliser: f64,
        streams: &mut CriterionStreams,
        device: &B::Device,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let Some(gt) = batch.masks.as_ref().filter(|_| !pairs.is_empty()) else {
            return (Tensor::zeros([1], device), Tensor::zeros([1], device));
        };
        let [b, t, h, w] = mask_logits.dims();
        let [_, gh, gw] = gt.dims();
        let n = pairs.len();
        let pred_idx = index_tensor::<B>(pairs.iter().map(|p| p.0), device);
        let gt_idx = index_tensor::<B>(pairs.iter().map(|p| p.1), device);
        let pred = mask_logits.clone().reshape([b * t, h, w]).select(0, pred_idx).reshape([n, 1, h, w]);
        let target = gt.clone().select(0, gt_idx).reshape([n, 1, gh, gw]);
        let c = &self.config;
        let pts = uncertain_points(
            pred.clone(),
            c.num_points,
            c.oversample_ratio,
            c.importance_sample_ratio,
            &mut streams.points,
        );
        let x = point_sample(pred, pts.clone()).reshape([n, c.num_points]);
        let y = point_sample(target, pts).reshape([n, c.num_points]);
        (sigmoid_bce(x.clone(), y.clone(), normaliser), dice(x, y, normaliser))
    }

    /// MP losses of one prediction (spec §3.8): class over every slot (padding → no object),
    /// masks on the slots that hold an object, normalised by `num_masks · n_g`. Zero terms when
    /// the MP part was skipped (empty batch, `n_g = 0`).
    #[allow(clippy::too_many_arguments)]
    fn mp_terms<B: Backend>(
        &self,
        i: usize,
        mp: Option<&Prediction<B>>,
        layout: Option<&MpLayout>,
        batch: &Batch<B>,
        pilot: &PilotConfig,
        streams: &mut CriterionStreams,
        device: &B::Device,
    ) -> Vec<LossTerm<B>> {
        let c = &self.config;
        let zero = || Tensor::<B, 1>::zeros([1], device);
        let (ce, bce, dc) = match (mp, layout) {
            (Some(mp), Some(layout)) => {
                let [b, p, k1] = mp.class_logits.dims();
                let targets: Vec<usize> = layout.slots.iter().flatten().map(|s| s.target_label).collect();
                let ce =
                    weighted_cross_entropy(mp.class_logits.clone().reshape([b * p, k1]), &targets, c.no_object_weight);
                let pairs: Vec<(usize, usize)> = layout
                    .slots
                    .iter()
                    .enumerate()
                    .flat_map(|(img, slots)| {
                        slots.iter().enumerate().filter_map(move |(s, slot)| slot.object.map(|j| (img, s, j)))
                    })
                    .map(|(img, s, j)| (img * p + s, batch.offsets[img] + j))
                    .collect();
                let norm = batch.num_masks * layout.num_groups as f64;
                let (bce, dc) = self.mask_terms(&mp.mask_logits, batch, &pairs, norm, streams, device);
                (ce, bce, dc)
            }
            _ => (zero(), zero(), zero()),
        };
        let mut terms = Vec::with_capacity(3);
        if pilot.class_loss {
            terms.push(LossTerm { name: "mp_ce", prediction: i, weight: c.class_weight, value: ce });
        }
        terms.push(LossTerm { name: "mp_mask", prediction: i, weight: c.mask_weight, value: bce });
        terms.push(LossTerm { name: "mp_dice", prediction: i, weight: c.dice_weight, value: dc });
        terms
    }

    /// Appendix C's auxiliary loss: for `i = 1..=L`, BCE + dice of prediction `i`'s masks against
    /// prediction `i − 1`'s, detached and binarised (`σ > 0.5`), on the queries matched at the last
    /// prediction, normalised by `num_masks`.
    fn consistency_terms<B: Backend>(
        &self,
        splits: &[(Option<Prediction<B>>, Prediction<B>)],
        last: &[Assignment],
        q: usize,
        streams: &mut CriterionStreams,
        device: &B::Device,
        num_masks: f64,
    ) -> Vec<LossTerm<B>> {
        let c = &self.config;
        let rows: Vec<usize> =
            last.iter().enumerate().flat_map(|(img, a)| a.iter().map(move |&(qq, _)| img * q + qq)).collect();
        let mut terms = Vec::new();
        for i in 1..splits.len() {
            let (bce, dc) = if rows.is_empty() {
                (Tensor::zeros([1], device), Tensor::zeros([1], device))
            } else {
                let prev = splits[i - 1].1.mask_logits.clone().detach();
                let [b, t, h, w] = prev.dims();
                let idx = index_tensor::<B>(rows.iter().copied(), device);
                let label = prev.reshape([b * t, h, w]).select(0, idx).greater_elem(0.0).float();
                let batch = Batch { masks: Some(label), offsets: vec![0], num_masks };
                let pairs: Vec<(usize, usize)> = rows.iter().enumerate().map(|(k, &r)| (r, k)).collect();
                self.mask_terms(&splits[i].1.mask_logits, &batch, &pairs, num_masks, streams, device)
            };
            let lw = c.layer_consistency_weight;
            terms.push(LossTerm { name: "consistency_mask", prediction: i, weight: c.mask_weight * lw, value: bce });
            terms.push(LossTerm { name: "consistency_dice", prediction: i, weight: c.dice_weight * lw, value: dc });
        }
        terms
    }
}

fn index_tensor<B: Backend>(idx: impl Iterator<Item = usize>, device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = idx.map(|i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn concat_targets<B: Backend>(targets: &[ImageTargets<B>]) -> Batch<B> {
    let mut offsets = Vec::with_capacity(targets.len());
    let mut total = 0;
    for t in targets {
        offsets.push(total);
        total += t.labels.len();
    }
    let masks: Vec<Tensor<B, 3>> = targets.iter().filter_map(|t| t.masks.clone()).collect();
    let masks = (!masks.is_empty()).then(|| Tensor::cat(masks, 0));
    Batch { masks, offsets, num_masks: (total as f64).max(1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use mpf_model::decoder::DecoderOutput;
    use mpf_pilot::layout::{GroupRule, build_layout};
    use rand::SeedableRng;

    type B = Flex;
    const LN2: f64 = std::f64::consts::LN_2;

    fn small() -> LossConfig {
        LossConfig { num_points: 64, ..LossConfig::default() }
    }

    /// Class logits `[B, T, K+1]` from rows, zero mask logits `[B, T, 4, 4]`.
    fn prediction(class: Vec<Vec<Vec<f32>>>) -> Prediction<B> {
        let (b, t, k1) = (class.len(), class[0].len(), class[0][0].len());
        let flat: Vec<f32> = class.into_iter().flatten().flatten().collect();
        let device = Default::default();
        Prediction {
            class_logits: Tensor::<B, 1>::from_data(TensorData::new(flat, [b * t * k1]), &device).reshape([b, t, k1]),
            mask_logits: Tensor::zeros([b, t, 4, 4], &device),
        }
    }

    fn output(preds: Vec<Prediction<B>>, num_extra: usize, layout: Option<MpLayout>) -> PilotedOutput<B> {
        PilotedOutput { output: DecoderOutput { predictions: preds, num_extra }, layout }
    }

    fn targets(objects: &[&[usize]]) -> Vec<ImageTargets<B>> {
        let device = Default::default();
        objects
            .iter()
            .map(|labels| ImageTargets {
                labels: labels.to_vec(),
                masks: (!labels.is_empty()).then(|| Tensor::ones([labels.len(), 16, 16], &device)),
            })
            .collect()
    }

    fn value(report: &BTreeMap<String, f64>, key: &str) -> f64 {
        *report.get(key).unwrap_or_else(|| panic!("no {key} in {report:?}"))
    }

    #[test]
    fn matching_losses_by_hand() {
        // One image, 3 queries, K = 2; one object of class 1. Query 1 is confident in class 1,
        // so (masks being equal) the matcher picks it at every prediction.
        let rows = vec![vec![vec![0.0, 0.0, 0.0], vec![0.0, 5.0, 0.0], vec![0.0, 0.0, 0.0]]];
        let preds = vec![prediction(rows.clone()); 3];
        let crit = Criterion::new(small()).unwrap();
        let losses = crit
            .forward(
                &output(preds, 0, None),
                &targets(&[&[1]]),
                &PilotConfig::disabled(),
                &mut CriterionStreams::for_step(0, 0),
            )
            .unwrap();
        assert_eq!(losses.assignments, vec![vec![vec![(1, 0)]]; 3]);
        let r = losses.report();
        // CE: rows 0 and 2 target no-object (weight 0.1, p = 1/3), row 1 targets class 1.
        let p1 = (5f64).exp() / ((5f64).exp() + 2.0);
        let ce = (0.1 * 3f64.ln() * 2.0 - p1.ln()) / 1.2;
        for i in 0..3 {
            assert!((value(&r, &format!("ce_{i}")) - 2.0 * ce).abs() < 1e-5, "{r:?}");
            // Zero logits: BCE = ln 2 at every point whatever the target, one pair / one mask.
            assert!((value(&r, &format!("mask_{i}")) - 5.0 * LN2).abs() < 1e-5, "{r:?}");
        }
        let sum: f64 = r.iter().filter(|(k, _)| *k != "total").map(|(_, v)| v).sum();
        assert!((value(&r, "total") - sum).abs() < 1e-9);
        assert!((losses.total().into_scalar() as f64 - sum).abs() < 1e-4);
        assert_eq!(r.len(), 3 * 3 + 1, "ce, mask, dice for 3 predictions, and the total");
    }

    #[test]
    fn fixed_matching_reuses_the_last_assignment() {
        // Prediction 0 favours query 0 for class 1, the last favours query 2.
        let early = vec![vec![vec![0.0, 5.0, 0.0], vec![0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0]]];
        let late = vec![vec![vec![0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0], vec![0.0, 5.0, 0.0]]];
        let out = output(vec![prediction(early), prediction(late)], 0, None);
        let run = |matching| {
            Criterion::new(LossConfig { matching, ..small() })
                .unwrap()
                .forward(&out, &targets(&[&[1]]), &PilotConfig::disabled(), &mut CriterionStreams::for_step(0, 0))
                .unwrap()
                .assignments
        };
        assert_eq!(run(MatchingMode::PerPrediction), vec![vec![vec![(0, 0)]], vec![vec![(2, 0)]]]);
        assert_eq!(run(MatchingMode::FixedLast), vec![vec![vec![(2, 0)]], vec![vec![(2, 0)]]]);
    }

    #[test]
    fn mp_losses_use_the_direct_assignment_and_normalise_by_groups() {
        // Two images with 2 and 1 objects, 2 groups: P = 4 slots per image, 3 matching queries.
        let labels = vec![vec![0, 1], vec![1]];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let layout = build_layout(&labels, 2, GroupRule::Fixed(2), 0.0, &mut rng).unwrap();
        let t = 4 + 3;
        let pred = prediction(vec![vec![vec![0.0, 0.0, 0.0]; t]; 2]);
        let out = output(vec![pred], 4, Some(layout));
        let pilot = PilotConfig::default();
        let crit = Criterion::new(LossConfig { deep_supervision: false, ..small() }).unwrap();
        let r = crit
            .forward(&out, &targets(&[&[0, 1], &[1]]), &pilot, &mut CriterionStreams::for_step(0, 0))
            .unwrap()
            .report();
        // Uniform class logits: every slot has ce = ln 3; the weighted mean is ln 3 whatever the
        // weights. 6 assigned slots / (num_masks 3 · n_g 2) → BCE ln 2.
        assert!((value(&r, "mp_ce_0") - 2.0 * 3f64.ln()).abs() < 1e-5, "{r:?}");
        assert!((value(&r, "mp_mask_0") - 5.0 * LN2).abs() < 1e-5, "{r:?}");
        // Without the MP class loss the term is gone.
        let no_cls = PilotConfig { class_loss: false, ..pilot };
        let r = crit
            .forward(&out, &targets(&[&[0, 1], &[1]]), &no_cls, &mut CriterionStreams::for_step(0, 0))
            .unwrap()
            .report();
        assert!(!r.contains_key("mp_ce_0") && r.contains_key("mp_dice_0"));
    }

    #[test]
    fn mp_class_targets_mark_padding_as_no_object() {
        // Image 1 has one object of class 1 and one padding slot; make the logits certain about
        // the right answer for the object and wrong for the padding: only padding contributes.
        let labels = vec![vec![0, 1], vec![1]];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let layout = build_layout(&labels, 2, GroupRule::Fixed(1), 0.0, &mut rng).unwrap();
        let right = |c: usize| (0..3).map(|k| if k == c { 30.0 } else { 0.0 }).collect::<Vec<f32>>();
        let rows = vec![
            vec![right(0), right(1), right(2)],
            vec![right(1), vec![0.0, 0.0, 0.0], right(2)], // padding slot: uniform → ln 3
        ];
        let out = output(vec![prediction(rows)], 2, Some(layout));
        let crit = Criterion::new(LossConfig { deep_supervision: false, ..small() }).unwrap();
        let r = crit
            .forward(&out, &targets(&[&[0, 1], &[1]]), &PilotConfig::default(), &mut CriterionStreams::for_step(0, 0))
            .unwrap()
            .report();
        // Weights: 3 object slots 1, padding 0.1 → mean = 0.1·ln 3 / 3.1.
        let expect = 2.0 * 0.1 * 3f64.ln() / 3.1;
        assert!((value(&r, "mp_ce_0") - expect).abs() < 1e-5, "{r:?}");
    }

    #[test]
    fn empty_batch_gives_zero_mask_and_mp_losses() {
        let pred = prediction(vec![vec![vec![0.0, 0.0, 0.0]; 3]; 2]);
        let out = output(vec![pred.clone(), pred], 0, None);
        let crit = Criterion::new(small()).unwrap();
        let r = crit
            .forward(&out, &targets(&[&[], &[]]), &PilotConfig::default(), &mut CriterionStreams::for_step(0, 0))
            .unwrap()
            .report();
        for key in ["mask_0", "dice_1", "mp_ce_0", "mp_mask_1", "mp_dice_1"] {
            assert_eq!(value(&r, key), 0.0, "{key}");
        }
        assert!((value(&r, "ce_1") - 2.0 * 3f64.ln()).abs() < 1e-5, "all no-object");
    }

    #[test]
    fn layer_consistency_terms_and_bad_inputs() {
        let rows = vec![vec![vec![0.0, 5.0, 0.0], vec![0.0, 0.0, 0.0]]];
        let out = output(vec![prediction(rows.clone()); 3], 0, None);
        let crit = Criterion::new(LossConfig { layer_consistency_weight: 0.5, ..small() }).unwrap();
        let r = crit
            .forward(&out, &targets(&[&[1]]), &PilotConfig::disabled(), &mut CriterionStreams::for_step(0, 0))
            .unwrap()
            .report();
        assert!(!r.contains_key("consistency_mask_0"), "layer 0 has no predecessor");
        // Zero logits everywhere: BCE ln 2, weight 5 · 0.5.
        assert!((value(&r, "consistency_mask_2") - 2.5 * LN2).abs() < 1e-5, "{r:?}");
        let e = crit.forward(&out, &targets(&[&[2]]), &PilotConfig::disabled(), &mut CriterionStreams::for_step(0, 0));
        assert!(e.unwrap_err().to_string().contains("GT label 2"));
        assert!(Criterion::new(LossConfig { importance_sample_ratio: 2.0, ..small() }).is_err());
        assert!(Criterion::new(LossConfig { mask_weight: f64::NAN, ..small() }).is_err());
    }
}
