//! The set criterion: Hungarian-matched class / BCE / dice losses on
//! the matching part of every prediction, direct-assignment losses on the MP part, and the
//! appendix's two naive baselines as switches.
//!
//! # How it is computed
//! Every term of every prediction is computed in one pass rather than prediction by prediction
//! (the training step is bound by the number of operations, not by arithmetic):
//!
//! - **Matching** ([`Criterion::match_predictions`]): the cost matrices of all predictions and
//!   images come from one batched computation on the inner (non-autodiff) backend
//!   ([`crate::matcher::cost_matrices`]), then `lsap` solves each on the host.
//! - **Class terms**: the class logits of all supervised predictions are stacked, one
//!   log-softmax and one gather give every query's log-probability of its target, and a fixed
//!   `[terms, rows]` matrix of weights (PyTorch's weighted mean per term) reduces them to the
//!   `ce_i` / `mp_ce_i` values.
//! - **Mask terms**: the mask rows of every (prediction, query) pair that is supervised — matched
//!   queries, MP slots, appendix C's consistency pairs — are selected into one `[R, h·w]` tensor.
//!   Their importance-sampled points and GT labels at those points are computed on the host from
//!   the rows' detached values and the GT masks (named random streams, drawn in a fixed order), and
//!   the rows are sampled by one gather of bilinear corners ([`crate::points::gather_points`]).
//!   BCE and dice per row, then one weight matrix, give every `mask_i` / `dice_i` / `mp_…` term.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mpf_model::rng::{ImageRng, ImageStreams, Stream};
use mpf_pilot::config::PilotConfig;
use mpf_pilot::forward::{GtObjects, PilotedOutput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::CriterionError;
use crate::losses::{bce_rows, dice_rows, target_log_probs};
use crate::matcher::{Assignment, MatchStats, MatchTarget, MatcherWeights, match_predictions, matcher_points};
use crate::points::{
    Corners, ImportanceDraw, fill_corners, gather_points, importance_points, sample_mask, sample_plane,
};

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

/// The `[loss]` config table; defaults are Mask2Former's.
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

/// The random streams of the criterion at one step, one generator per image, so an image's
/// points do not depend on the other images of its batch or on how a batch is split across
/// replicas.
#[derive(Debug, Clone)]
pub struct CriterionStreams {
    /// The matcher's shared points.
    pub matcher: ImageStreams,
    /// The losses' importance-sampled points.
    pub points: ImageStreams,
}

impl CriterionStreams {
    /// The streams of training step `step` of a run seeded `seed` (one device).
    pub fn for_step(seed: u64, step: u64) -> Self {
        Self::for_images(seed, step, 0)
    }

    /// The streams of a replica whose batch starts at image `first_image` of the step's global batch.
    pub fn for_images(seed: u64, step: u64, first_image: u64) -> Self {
        Self {
            matcher: ImageStreams::new(seed, Stream::MatcherPoints, step, first_image),
            points: ImageStreams::new(seed, Stream::LossPoints, step, first_image),
        }
    }
}

/// Averages the loss normalisers across data-parallel replicas (PyTorch's `all_reduce` then
/// `/ world_size`, as Mask2Former's criterion does for the number of masks).
///
/// Each replica divides its own sums by the average normaliser, so the mean of the replicas'
/// gradients is the gradient of one device holding the whole batch.
pub trait ReplicaMean {
    /// The element-wise mean of `local` over all replicas; every replica calls it with a slice of
    /// the same length, in the same order.
    fn mean(&self, local: &[f64]) -> Result<Vec<f64>, String>;
}

/// One device: the mean over replicas is the local value.
#[derive(Debug, Clone, Copy, Default)]
pub struct OneReplica;

impl ReplicaMean for OneReplica {
    fn mean(&self, local: &[f64]) -> Result<Vec<f64>, String> {
        Ok(local.to_vec())
    }
}

/// One term of the total loss.
#[derive(Debug, Clone, PartialEq)]
pub struct LossTerm {
    /// `ce`, `mask`, `dice` (matching part), `mp_ce`, `mp_mask`, `mp_dice` (MP part),
    /// `consistency_mask`, `consistency_dice` (appendix C auxiliary loss).
    pub name: &'static str,
    /// Prediction index `0..=L` (0 = before the first decoder layer).
    pub prediction: usize,
    /// Its weight in the total.
    pub weight: f64,
}

/// Everything the criterion computed for one batch.
#[derive(Debug, Clone)]
pub struct Losses<B: Backend> {
    /// Every term, in the order of `values`.
    pub terms: Vec<LossTerm>,
    /// The unweighted value of every term, `[terms]`.
    pub values: Tensor<B, 1>,
    /// The matching part's assignment per prediction and image.
    pub assignments: Vec<Vec<Assignment>>,
    /// Matcher diagnostics.
    pub stats: MatchStats,
}

impl<B: Backend> Losses<B> {
    /// `Σ weight · value`, `[1]`.
    pub fn total(&self) -> Tensor<B, 1> {
        let w: Vec<f32> = self.terms.iter().map(|t| t.weight as f32).collect();
        let n = w.len();
        let w = Tensor::<B, 1>::from_data(TensorData::new(w, [n]), &self.values.device());
        (self.values.clone() * w).sum()
    }

    /// Weighted terms by name, `"{name}_{prediction}"` (as detectron2 logs them), plus `total`;
    /// one device read.
    pub fn report(&self) -> BTreeMap<String, f64> {
        let host: Vec<f32> = self.values.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut total = 0.0;
        for (t, v) in self.terms.iter().zip(host) {
            let v = v as f64 * t.weight;
            out.insert(format!("{}_{}", t.name, t.prediction), v);
            total += v;
        }
        out.insert("total".into(), total);
        out
    }
}

/// The matching part's assignments: per prediction, per image (empty for predictions that are
/// not supervised).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matching {
    /// `assignments[prediction][image]`.
    pub assignments: Vec<Vec<Assignment>>,
    /// Matcher diagnostics.
    pub stats: MatchStats,
}

/// The criterion.
#[derive(Debug, Clone)]
pub struct Criterion {
    /// Its config.
    pub config: LossConfig,
}

/// What a supervised mask row is compared with.
#[derive(Debug, Clone, Copy)]
enum RowTarget {
    /// GT object `obj` of image `img`.
    Gt { img: usize, obj: usize },
    /// Row `row` of prediction `pred`, detached and binarised (appendix C's consistency loss).
    Previous { pred: usize, row: usize },
}

/// One supervised mask row: row `row` (of `B·T`) of prediction `pred`, in term `term` of the mask
/// (and dice) terms, scaled by `scale`: 1 (or `1 / n_g` on the MP part) while the rows are laid out,
/// then divided by the number of target masks.
#[derive(Debug, Clone, Copy)]
struct MaskRow {
    pred: usize,
    row: usize,
    target: RowTarget,
    term: usize,
    scale: f64,
}

impl Criterion {
    /// A criterion with `config` (validated).
    pub fn new(config: LossConfig) -> Result<Self, CriterionError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Losses of a training forward: [`Self::match_predictions`] then [`Self::losses`]. `pilot`
    /// says whether MP losses are expected (zero terms when the MP part was skipped) and whether
    /// they include the class loss.
    pub fn forward<B: AutodiffBackend>(
        &self,
        out: &PilotedOutput<B>,
        targets: &[GtObjects],
        pilot: &PilotConfig,
        streams: &mut CriterionStreams,
    ) -> Result<Losses<B>, CriterionError> {
        self.forward_replicated(out, targets, pilot, streams, &OneReplica)
    }

    /// [`Self::forward`] on one replica of a data-parallel run: the normalisers (number of target
    /// masks, the class terms' weight sums) are averaged over the replicas by `replicas`.
    pub fn forward_replicated<B: AutodiffBackend>(
        &self,
        out: &PilotedOutput<B>,
        targets: &[GtObjects],
        pilot: &PilotConfig,
        streams: &mut CriterionStreams,
        replicas: &dyn ReplicaMean,
    ) -> Result<Losses<B>, CriterionError> {
        let matching = self.match_predictions(out, targets, streams)?;
        self.losses_replicated(out, targets, pilot, matching, streams, replicas)
    }

    /// The matching part's Hungarian assignment of every supervised prediction (or of the last
    /// one, reused, under [`MatchingMode::FixedLast`]); no gradient. Uses `streams.matcher`.
    pub fn match_predictions<B: AutodiffBackend>(
        &self,
        out: &PilotedOutput<B>,
        targets: &[GtObjects],
        streams: &mut CriterionStreams,
    ) -> Result<Matching, CriterionError> {
        let c = &self.config;
        let preds = &out.output.predictions;
        let (n_pred, extra) = (preds.len(), out.output.num_extra);
        let last = n_pred - 1;
        let first_supervised = if c.deep_supervision { 0 } else { last };
        let [b, t, k1] = preds[last].class_logits.dims();
        check_targets(targets, b, k1)?;
        let q = t - extra;

        // One shared point set per image, then every matched prediction at once.
        let points = matcher_points(b, c.num_points, &mut streams.matcher);
        let which: Vec<usize> = match c.matching {
            MatchingMode::PerPrediction => (first_supervised..n_pred).collect(),
            MatchingMode::FixedLast => vec![last],
        };
        let class: Vec<_> = which.iter().map(|&i| preds[i].class_logits.clone().inner().narrow(1, extra, q)).collect();
        let masks: Vec<_> = which.iter().map(|&i| preds[i].mask_logits.clone().inner().narrow(1, extra, q)).collect();
        let match_targets: Vec<MatchTarget> = targets
            .iter()
            .zip(&points)
            .map(|(g, p)| MatchTarget { labels: &g.labels, masks: &g.masks, points: p })
            .collect();
        let mut stats = MatchStats::default();
        let found = match_predictions(&class, &masks, &match_targets, &c.matcher_weights(), &mut stats)?;
        let mut assignments = vec![Vec::new(); n_pred];
        for (&i, a) in which.iter().zip(found) {
            assignments[i] = a;
        }
        if c.matching == MatchingMode::FixedLast {
            for i in first_supervised..last {
                assignments[i] = assignments[last].clone();
            }
        }
        Ok(Matching { assignments, stats })
    }

    /// Every loss term given the matching part's assignment (from [`Self::match_predictions`]).
    /// Uses `streams.points`.
    pub fn losses<B: AutodiffBackend>(
        &self,
        out: &PilotedOutput<B>,
        targets: &[GtObjects],
        pilot: &PilotConfig,
        matching: Matching,
        streams: &mut CriterionStreams,
    ) -> Result<Losses<B>, CriterionError> {
        self.losses_replicated(out, targets, pilot, matching, streams, &OneReplica)
    }

    /// [`Self::losses`] with the normalisers averaged over data-parallel replicas by `replicas`
    /// (every replica must call it once per batch).
    pub fn losses_replicated<B: AutodiffBackend>(
        &self,
        out: &PilotedOutput<B>,
        targets: &[GtObjects],
        pilot: &PilotConfig,
        matching: Matching,
        streams: &mut CriterionStreams,
        replicas: &dyn ReplicaMean,
    ) -> Result<Losses<B>, CriterionError> {
        let c = &self.config;
        let preds = &out.output.predictions;
        let (n_pred, extra) = (preds.len(), out.output.num_extra);
        let last = n_pred - 1;
        let first_supervised = if c.deep_supervision { 0 } else { last };
        let device = preds[last].class_logits.device();
        let [b, t, k1] = preds[last].class_logits.dims();
        let [_, _, h, w] = preds[last].mask_logits.dims();
        check_targets(targets, b, k1)?;
        let q = t - extra;
        let Matching { assignments, stats } = matching;
        if assignments.len() != n_pred {
            return Err(CriterionError::Shape(format!("{} assignments for {n_pred} predictions", assignments.len())));
        }
        let layout = out.layout.as_ref().filter(|_| pilot.enabled);
        if let Some(l) = layout
            && l.num_slots() != extra
        {
            return Err(CriterionError::Shape(format!(
                "MP layout of {} slots for {extra} extra queries",
                l.num_slots()
            )));
        }
        // Mask rows carry their scale relative to the number of target masks, which is only known
        // (averaged over the replicas) once every row is laid out.
        let local_masks = targets.iter().map(|g| g.labels.len()).sum::<usize>() as f64;
        let no_object = k1 - 1;
        let supervised: Vec<usize> = (first_supervised..n_pred).collect();

        // Class terms: one target and weight per query of every supervised prediction.
        let mut ce_terms = Vec::new();
        let mut ce_target = vec![no_object; supervised.len() * b * t];
        let mut ce_coef: Vec<(usize, usize, f32)> = Vec::new(); // (term, stacked row, weight)
        let weight_of = |label: usize| if label == no_object { c.no_object_weight as f32 } else { 1.0 };
        // Mask terms: the supervised rows.
        let mut mask_terms: Vec<(&'static str, &'static str, usize, f64, f64)> = Vec::new();
        let mut rows: Vec<MaskRow> = Vec::new();
        for (s, &i) in supervised.iter().enumerate() {
            let base = s * b * t;
            // Matching part: matched queries take their object's label, the rest "no object".
            let term = ce_terms.len();
            ce_terms.push(LossTerm { name: "ce", prediction: i, weight: c.class_weight });
            let mut labels = vec![no_object; b * q];
            for (img, a) in assignments[i].iter().enumerate() {
                for &(query, obj) in a {
                    labels[img * q + query] = targets[img].labels[obj];
                }
            }
            let mterm = mask_terms.len();
            mask_terms.push(("mask", "dice", i, c.mask_weight, c.dice_weight));
            for img in 0..b {
                for query in 0..q {
                    let row = img * t + extra + query;
                    ce_target[base + row] = labels[img * q + query];
                    ce_coef.push((term, base + row, weight_of(labels[img * q + query])));
                }
                for &(query, obj) in assignments[i].get(img).map(Vec::as_slice).unwrap_or_default() {
                    let row = img * t + extra + query;
                    let target = RowTarget::Gt { img, obj };
                    rows.push(MaskRow { pred: i, row, target, term: mterm, scale: 1.0 });
                }
            }
            // MP part: direct assignment; zero terms when the part was skipped.
            if pilot.enabled {
                if pilot.class_loss {
                    let term = ce_terms.len();
                    ce_terms.push(LossTerm { name: "mp_ce", prediction: i, weight: c.class_weight });
                    for (img, slots) in layout.map(|l| l.slots.as_slice()).unwrap_or_default().iter().enumerate() {
                        for (slot_idx, slot) in slots.iter().enumerate() {
                            let row = img * t + slot_idx;
                            ce_target[base + row] = slot.target_label;
                            ce_coef.push((term, base + row, weight_of(slot.target_label)));
                        }
                    }
                }
                let mterm = mask_terms.len();
                mask_terms.push(("mp_mask", "mp_dice", i, c.mask_weight, c.dice_weight));
                if let Some(l) = layout {
                    let scale = 1.0 / l.num_groups as f64;
                    for (img, slots) in l.slots.iter().enumerate() {
                        for (slot_idx, slot) in slots.iter().enumerate() {
                            if let Some(obj) = slot.object {
                                let target = RowTarget::Gt { img, obj };
                                rows.push(MaskRow { pred: i, row: img * t + slot_idx, target, term: mterm, scale });
                            }
                        }
                    }
                }
            }
        }
        // Appendix C's auxiliary loss: prediction i against prediction i − 1 (detached,
        // binarised), on the queries matched at the last prediction.
        if c.layer_consistency_weight > 0.0 {
            let lw = c.layer_consistency_weight;
            for i in 1..n_pred {
                let mterm = mask_terms.len();
                mask_terms.push(("consistency_mask", "consistency_dice", i, c.mask_weight * lw, c.dice_weight * lw));
                for (img, a) in assignments[last].iter().enumerate() {
                    for &(query, _) in a {
                        let row = img * t + extra + query;
                        let target = RowTarget::Previous { pred: i - 1, row };
                        rows.push(MaskRow { pred: i, row, target, term: mterm, scale: 1.0 });
                    }
                }
            }
        }

        // Class values: log-probabilities of the targets, reduced per term by weight matrices.
        let stacked: Vec<Tensor<B, 2>> =
            supervised.iter().map(|&i| preds[i].class_logits.clone().reshape([b * t, k1])).collect();
        let n_rows = supervised.len() * b * t;
        let logp = target_log_probs(Tensor::cat(stacked, 0), &ce_target); // [rows, 1]
        let mut totals = vec![0f32; ce_terms.len()];
        for &(term, _, wt) in &ce_coef {
            totals[term] += wt;
        }
        // The normalisers, averaged over the replicas: [number of masks, class weight sums…].
        let local: Vec<f64> = std::iter::once(local_masks).chain(totals.iter().map(|&t| t as f64)).collect();
        let mean = replicas.mean(&local).map_err(CriterionError::Replicas)?;
        if mean.len() != local.len() {
            return Err(CriterionError::Replicas(format!("{} means for {} values", mean.len(), local.len())));
        }
        let num_masks = mean[0].max(1.0);
        for (t, m) in totals.iter_mut().zip(&mean[1..]) {
            *t = *m as f32;
        }
        for r in &mut rows {
            r.scale /= num_masks;
        }
        let mut coef = vec![0f32; ce_terms.len() * n_rows];
        for &(term, row, wt) in &ce_coef {
            coef[term * n_rows + row] = -wt / totals[term].max(f32::MIN_POSITIVE);
        }
        let coef = Tensor::<B, 1>::from_data(TensorData::new(coef, [ce_terms.len() * n_rows]), &device)
            .reshape([ce_terms.len(), n_rows]);
        let ce_values = coef.matmul(logp).reshape([ce_terms.len()]);

        // Mask values.
        let (mask_values, dice_values) = if rows.is_empty() {
            (Tensor::zeros([mask_terms.len()], &device), Tensor::zeros([mask_terms.len()], &device))
        } else {
            self.mask_values(preds, &rows, targets, mask_terms.len(), [b, t, h, w], streams)
        };

        let mut terms = ce_terms;
        terms.extend(mask_terms.iter().map(|&(name, _, i, wt, _)| LossTerm { name, prediction: i, weight: wt }));
        terms.extend(mask_terms.iter().map(|&(_, name, i, _, wt)| LossTerm { name, prediction: i, weight: wt }));
        let values = Tensor::cat(vec![ce_values, mask_values, dice_values], 0);
        Ok(Losses { terms, values, assignments, stats })
    }

    /// BCE and dice per mask term, `([terms], [terms])`, from the supervised rows.
    fn mask_values<B: AutodiffBackend>(
        &self,
        preds: &[mpf_model::decoder::Prediction<B>],
        rows: &[MaskRow],
        targets: &[GtObjects],
        n_terms: usize,
        [b, t, h, w]: [usize; 4],
        streams: &mut CriterionStreams,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let bt = b * t;
        let c = &self.config;
        let device = preds[0].mask_logits.device();
        let hw = h * w;
        let p = c.num_points;
        // The rows, grouped by prediction in `rows` order (rows are pushed prediction by
        // prediction), selected with gradient into one [R, h·w] tensor.
        let mut selected = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let pred = rows[start].pred;
            let end = start + rows[start..].iter().take_while(|r| r.pred == pred).count();
            let idx = index_tensor::<B>(rows[start..end].iter().map(|r| r.row), &device);
            selected.push(preds[pred].mask_logits.clone().reshape([bt, hw]).select(0, idx));
            start = end;
        }
        let x_rows = Tensor::cat(selected, 0);
        let n = rows.len();
        let host: Vec<f32> = x_rows.clone().inner().into_data().convert::<f32>().to_vec().unwrap_or_default();
        // Label rows of the consistency loss: the previous prediction's rows, binarised.
        let previous: Vec<(usize, usize)> = rows
            .iter()
            .filter_map(|r| match r.target {
                RowTarget::Previous { pred, row } => Some((pred, row)),
                RowTarget::Gt { .. } => None,
            })
            .collect();
        let prev_host: Vec<f32> = if previous.is_empty() {
            Vec::new()
        } else {
            let parts: Vec<_> = previous
                .iter()
                .map(|&(pred, row)| preds[pred].mask_logits.clone().inner().reshape([bt, hw]).narrow(0, row, 1))
                .collect();
            Tensor::cat(parts, 0).into_data().convert::<f32>().to_vec().unwrap_or_default()
        };

        // Host: one seed per row from its image's stream (in row order), then each row's random
        // points, importance sampling, corners and labels in parallel (so the points do not
        // depend on the number of threads).
        let seeds: Vec<u64> = rows.iter().map(|r| streams.points.image(r.row / t).random()).collect();
        let mut prev_index = 0;
        let prev_of: Vec<Option<usize>> = rows
            .iter()
            .map(|r| {
                matches!(r.target, RowTarget::Previous { .. }).then(|| {
                    prev_index += 1;
                    prev_index - 1
                })
            })
            .collect();
        let mut corners = Corners { index: vec![0; n * p * 4], weight: vec![0.0; n * p * 4] };
        let mut labels = vec![0f32; n * p];
        corners
            .index
            .par_chunks_mut(p * 4)
            .zip(corners.weight.par_chunks_mut(p * 4))
            .zip(labels.par_chunks_mut(p))
            .enumerate()
            .for_each(|(r, ((index, weight), label))| {
                let mut rng = SmallRng::seed_from_u64(seeds[r]);
                let draw = ImportanceDraw::new(p, c.oversample_ratio, c.importance_sample_ratio, &mut rng);
                let points = importance_points(&host[r * hw..(r + 1) * hw], h, w, &draw);
                fill_corners(h, w, &points, index, weight);
                match (rows[r].target, prev_of[r]) {
                    (RowTarget::Gt { img, obj }, _) => {
                        label.copy_from_slice(&sample_mask(&targets[img].masks[obj], &points));
                    }
                    (RowTarget::Previous { .. }, Some(k)) => {
                        let binary: Vec<f32> =
                            prev_host[k * hw..(k + 1) * hw].iter().map(|&v| (v > 0.0) as u8 as f32).collect();
                        for (l, &pt) in label.iter_mut().zip(&points) {
                            *l = sample_plane(&binary, h, w, pt);
                        }
                    }
                    (RowTarget::Previous { .. }, None) => unreachable!("every consistency row has a label row"),
                }
            });
        let x = gather_points(x_rows, &corners, p); // [R, P]
        let t = Tensor::<B, 1>::from_data(TensorData::new(labels, [n * p]), &device).reshape([n, p]);

        let (bce, dice) = (bce_rows(x.clone(), t.clone()), dice_rows(x, t)); // [R, 1] each
        let mut coef = vec![0f32; n_terms * n];
        for (r, row) in rows.iter().enumerate() {
            coef[row.term * n + r] = row.scale as f32;
        }
        let coef = Tensor::<B, 1>::from_data(TensorData::new(coef, [n_terms * n]), &device).reshape([n_terms, n]);
        (coef.clone().matmul(bce).reshape([n_terms]), coef.matmul(dice).reshape([n_terms]))
    }
}

/// One target set per image, a mask per label, and every label a real class (`< K`).
fn check_targets(targets: &[GtObjects], b: usize, k1: usize) -> Result<(), CriterionError> {
    if targets.len() != b {
        return Err(CriterionError::Shape(format!("{} target sets for a batch of {b}", targets.len())));
    }
    for (i, t) in targets.iter().enumerate() {
        if t.masks.len() != t.labels.len() {
            return Err(CriterionError::Shape(format!(
                "image {i}: {} masks for {} labels",
                t.masks.len(),
                t.labels.len()
            )));
        }
    }
    if let Some(t) = targets.iter().flat_map(|t| &t.labels).find(|&&l| l >= k1 - 1) {
        return Err(CriterionError::Label { label: *t, num_classes: k1 - 1 });
    }
    Ok(())
}

fn index_tensor<B: Backend>(idx: impl Iterator<Item = usize>, device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = idx.map(|i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use mpf_model::decoder::{DecoderOutput, Prediction};
    use mpf_model::mask::BinaryMask;
    use mpf_pilot::layout::{GroupRule, MpLayout, build_layout};
    use rand::SeedableRng;

    type B = Autodiff<Flex>;
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

    fn targets(objects: &[&[usize]]) -> Vec<GtObjects> {
        objects
            .iter()
            .map(|labels| GtObjects {
                labels: labels.to_vec(),
                masks: labels.iter().map(|_| BinaryMask { height: 16, width: 16, data: vec![true; 256] }).collect(),
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
