//! The Hungarian matcher: for one prediction of one image, the cost of pairing query
//! `q` with GT object `g` is `w_class · (−p_q(label_g)) + w_mask · BCE + w_dice · dice` on one set
//! of random points shared by every query and object of the image; the assignment minimising the
//! total cost is solved by `lsap` (a port of SciPy's `linear_sum_assignment`). Costs are computed
//! in f32 without gradient, for all predictions of a batch at once; non-finite costs are replaced
//! before the solver sees them and counted.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax, softplus};
use burn::tensor::ops::GridSampleOptions;
use mpf_model::mask::BinaryMask;

use crate::CriterionError;
use crate::points::{Point, sample_mask, uniform_points};

/// Assignment of one image: `(query, gt)` pairs, sorted by query, `min(Q, G)` of them.
pub type Assignment = Vec<(usize, usize)>;

/// Weights and point count of the matching cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatcherWeights {
    /// Class cost weight (2.0).
    pub class: f64,
    /// BCE cost weight (5.0).
    pub mask: f64,
    /// Dice cost weight (5.0).
    pub dice: f64,
    /// Shared random points per image (12544).
    pub num_points: usize,
}

/// What went wrong while matching, for the loss report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchStats {
    /// Cost entries that were NaN or ±∞ and were replaced (NaN and +∞ by a cost above every
    /// finite one, −∞ by one below).
    pub non_finite_costs: usize,
}

/// Solves the rectangular assignment of a row-major `rows × cols` cost matrix (rows = queries).
/// Non-finite entries are replaced first and counted in `stats`.
pub fn assign(cost: &[f32], rows: usize, cols: usize, stats: &mut MatchStats) -> Result<Assignment, CriterionError> {
    if cost.len() != rows * cols {
        return Err(CriterionError::Shape(format!("cost matrix {rows}×{cols} has {} entries", cost.len())));
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    let finite = cost.iter().filter(|c| c.is_finite()).map(|&c| c as f64);
    let (lo, hi) = finite.fold((0f64, 0f64), |(lo, hi), c| (lo.min(c), hi.max(c)));
    let span = (hi - lo).max(1.0);
    let cost: Vec<f64> = cost
        .iter()
        .map(|&c| {
            if c.is_finite() {
                c as f64
            } else {
                stats.non_finite_costs += 1;
                if c == f32::NEG_INFINITY { lo - span * 1e3 } else { hi + span * 1e3 }
            }
        })
        .collect();
    let (r, c) = lsap::solve(rows, cols, &cost, false)
        .map_err(|e| CriterionError::Assignment(format!("{rows}×{cols} cost matrix: {e}")))?;
    Ok(r.into_iter().zip(c).collect())
}

/// The matcher's inputs for one image: its GT labels and masks (at the padded input size) and
/// its shared random points.
#[derive(Debug, Clone, Copy)]
pub struct MatchTarget<'a> {
    /// Class ids `< K`.
    pub labels: &'a [usize],
    /// One mask per label, `H × W` of the padded batch.
    pub masks: &'a [BinaryMask],
    /// The image's points, shared by every query, object and prediction.
    pub points: &'a [Point],
}

/// Elements of `[B, n·Q, P]` the cost computation may hold at once; predictions are processed in
/// chunks below it (the tiny model fits in one chunk; a COCO-sized batch takes a few).
const COST_BUDGET: usize = 1 << 24;

/// Cost matrices of several predictions of a batch, computed together without gradient:
/// `w_class · (−p_q(label_g)) + w_mask · BCE + w_dice · dice` on each image's points.
/// The predicted masks are sampled on the device (`grid_sample`), the GT masks on the host, and
/// the costs of all predictions and images come back in one read per chunk.
///
/// Returns `costs[i][b]`: prediction `i`, image `b`, row-major `Q × G_b`.
///
/// # Shapes
/// - `class_logits[i]`: `[B, Q, K + 1]`; `mask_logits[i]`: `[B, Q, h, w]`
pub fn cost_matrices<B: Backend>(
    class_logits: &[Tensor<B, 3>],
    mask_logits: &[Tensor<B, 4>],
    targets: &[MatchTarget<'_>],
    w: &MatcherWeights,
) -> Result<Vec<Vec<Vec<f32>>>, CriterionError> {
    if class_logits.len() != mask_logits.len() {
        return Err(CriterionError::Shape(format!(
            "{} class predictions for {} mask predictions",
            class_logits.len(),
            mask_logits.len()
        )));
    }
    let Some(first) = class_logits.first() else { return Ok(Vec::new()) };
    let device = first.device();
    let [b, q, k1] = first.dims();
    if targets.len() != b {
        return Err(CriterionError::Shape(format!("{} match targets for a batch of {b}", targets.len())));
    }
    let p = targets.iter().map(|t| t.points.len()).max().unwrap_or(0);
    if p == 0 || targets.iter().any(|t| t.points.len() != p) {
        return Err(CriterionError::Shape("every image needs the same, non-zero number of points".into()));
    }
    let g_max = targets.iter().map(|t| t.labels.len()).max().unwrap_or(0);
    if g_max == 0 {
        return Ok(vec![vec![Vec::new(); b]; class_logits.len()]);
    }
    for (i, t) in targets.iter().enumerate() {
        if t.masks.len() != t.labels.len() {
            return Err(CriterionError::Shape(format!(
                "image {i}: {} masks for {} labels",
                t.masks.len(),
                t.labels.len()
            )));
        }
        if let Some(&l) = t.labels.iter().find(|&&l| l + 1 >= k1) {
            return Err(CriterionError::Label { label: l, num_classes: k1 - 1 });
        }
    }

    // GT side, on the host: labels at the points [B, P, G_max] (zero columns for padding) and a
    // one-hot class selector [B, K + 1, G_max].
    let mut gt_t = vec![0f32; b * p * g_max];
    let mut onehot = vec![0f32; b * k1 * g_max];
    for (bi, t) in targets.iter().enumerate() {
        for (g, (mask, &label)) in t.masks.iter().zip(t.labels).enumerate() {
            for (k, v) in sample_mask(mask, t.points).into_iter().enumerate() {
                gt_t[(bi * p + k) * g_max + g] = v;
            }
            onehot[(bi * k1 + label) * g_max + g] = 1.0;
        }
    }
    let gt_t = Tensor::<B, 1>::from_data(TensorData::new(gt_t, [b * p * g_max]), &device).reshape([b, p, g_max]);
    let gt_area = gt_t.clone().sum_dim(1); // [B, 1, G]
    let onehot = Tensor::<B, 1>::from_data(TensorData::new(onehot, [b * k1 * g_max]), &device).reshape([b, k1, g_max]);
    let coords: Vec<f32> =
        targets.iter().flat_map(|t| t.points.iter().flat_map(|&[x, y]| [x * 2.0 - 1.0, y * 2.0 - 1.0])).collect();
    let grid = Tensor::<B, 1>::from_data(TensorData::new(coords, [b * p * 2]), &device).reshape([b, 1, p, 2]);

    let chunk = (COST_BUDGET / (b * q * p).max(1)).clamp(1, class_logits.len());
    let mut costs = Vec::with_capacity(class_logits.len());
    for start in (0..class_logits.len()).step_by(chunk) {
        let end = (start + chunk).min(class_logits.len());
        let n = end - start;
        let sampled: Vec<Tensor<B, 3>> = mask_logits[start..end]
            .iter()
            .map(|m| m.clone().grid_sample_2d(grid.clone(), GridSampleOptions::default()).reshape([b, q, p]))
            .collect();
        let x = Tensor::cat(sampled, 1); // [B, n·Q, P]
        let probs: Vec<Tensor<B, 3>> = class_logits[start..end].iter().map(|c| softmax(c.clone(), 2)).collect();
        let cost_class = Tensor::cat(probs, 1).matmul(onehot.clone()).neg(); // [B, nQ, G]
        // BCE with logits summed over points: Σ softplus(−x)·t + softplus(x)·(1 − t)
        // = Σ (softplus(−x) − softplus(x))·t + Σ softplus(x) = Σ −x·t + Σ softplus(x).
        let soft = softplus(x.clone(), 1.0);
        let cost_mask = (x.clone().neg().matmul(gt_t.clone()) + soft.sum_dim(2)) / p as f64;
        let s = sigmoid(x);
        let numerator = s.clone().matmul(gt_t.clone()) * 2.0 + 1.0;
        let denominator = s.sum_dim(2) + gt_area.clone() + 1.0;
        let cost_dice = (numerator / denominator).neg() + 1.0;
        let cost = cost_class * w.class + cost_mask * w.mask + cost_dice * w.dice;
        let host: Vec<f32> =
            cost.into_data().convert::<f32>().to_vec().map_err(|e| CriterionError::Shape(format!("{e:?}")))?;
        for i in 0..n {
            costs.push(
                targets
                    .iter()
                    .enumerate()
                    .map(|(bi, t)| {
                        let g = t.labels.len();
                        (0..q)
                            .flat_map(|qi| {
                                let row = (bi * n * q + i * q + qi) * g_max;
                                host[row..row + g].iter().copied()
                            })
                            .collect()
                    })
                    .collect(),
            );
        }
    }
    Ok(costs)
}

/// Matches every image of several predictions: the cost matrices of [`cost_matrices`] solved by
/// [`assign`]. Returns `assignments[i][b]` (empty for an image without objects).
///
/// # Shapes
/// - `class_logits[i]`: `[B, Q, K + 1]`; `mask_logits[i]`: `[B, Q, h, w]`
pub fn match_predictions<B: Backend>(
    class_logits: &[Tensor<B, 3>],
    mask_logits: &[Tensor<B, 4>],
    targets: &[MatchTarget<'_>],
    w: &MatcherWeights,
    stats: &mut MatchStats,
) -> Result<Vec<Vec<Assignment>>, CriterionError> {
    let q = class_logits.first().map_or(0, |c| c.dims()[1]);
    let costs = cost_matrices(class_logits, mask_logits, targets, w)?;
    costs
        .iter()
        .map(|per_image| per_image.iter().zip(targets).map(|(c, t)| assign(c, q, t.labels.len(), stats)).collect())
        .collect()
}

/// The matcher's shared points: `num_points` uniform points per image.
pub fn matcher_points(images: usize, num_points: usize, rng: &mut impl mpf_model::rng::ImageRng) -> Vec<Vec<Point>> {
    (0..images).map(|b| uniform_points(num_points, rng.image(b))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn assignment_by_hand_square_and_rectangular() {
        let mut stats = MatchStats::default();
        // Classic 3×3: optimum 1 + 2 + 2 = 5 with rows → cols (0,1), (1,0), (2,2).
        let c = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        assert_eq!(assign(&c, 3, 3, &mut stats).unwrap(), vec![(0, 1), (1, 0), (2, 2)]);
        // 4 queries, 2 objects: the two cheapest compatible rows.
        let c = [9.0, 9.0, 1.0, 8.0, 7.0, 0.5, 9.0, 9.0];
        assert_eq!(assign(&c, 4, 2, &mut stats).unwrap(), vec![(1, 0), (2, 1)]);
        assert!(assign(&[], 0, 3, &mut stats).unwrap().is_empty());
        assert_eq!(stats.non_finite_costs, 0);
        assert!(assign(&c, 3, 2, &mut stats).is_err(), "size mismatch is an error, not a panic");
    }

    #[test]
    fn non_finite_costs_are_replaced_and_counted() {
        let mut stats = MatchStats::default();
        let c = [f32::NAN, 1.0, 2.0, f32::INFINITY];
        assert_eq!(assign(&c, 2, 2, &mut stats).unwrap(), vec![(0, 1), (1, 0)]);
        assert_eq!(stats.non_finite_costs, 2);
        let c = [f32::NEG_INFINITY, 0.0, 0.0, 5.0];
        assert_eq!(assign(&c, 2, 2, &mut stats).unwrap(), vec![(0, 0), (1, 1)]);
    }

    #[test]
    fn cost_matrix_by_hand() {
        let device = Default::default();
        // One query, one object, 2 classes + no-object. Uniform logits → p = 1/3.
        let class = Tensor::<Flex, 3>::zeros([1, 1, 3], &device);
        // Mask logit 0 everywhere → σ = 0.5, BCE = ln 2 at every point; GT all ones.
        let masks = Tensor::<Flex, 4>::zeros([1, 1, 4, 4], &device);
        let gt = [BinaryMask { height: 8, width: 8, data: vec![true; 64] }];
        // Points at pixel centres, away from the zero padding.
        let pts = [[0.3, 0.3], [0.6, 0.4], [0.5, 0.7]];
        let w = MatcherWeights { class: 2.0, mask: 5.0, dice: 5.0, num_points: 3 };
        let target = MatchTarget { labels: &[1], masks: &gt, points: &pts };
        let c = cost_matrices(&[class.clone(), class], &[masks.clone(), masks], &[target], &w).unwrap();
        // dice = 1 − (2·1.5 + 1)/(1.5 + 3 + 1) = 1 − 4/5.5.
        let expect = 2.0 * (-1.0 / 3.0) + 5.0 * std::f64::consts::LN_2 + 5.0 * (1.0 - 4.0 / 5.5);
        assert_eq!((c.len(), c[0].len(), c[0][0].len()), (2, 1, 1));
        for ci in [c[0][0][0], c[1][0][0]] {
            assert!((ci as f64 - expect).abs() < 1e-5, "{ci} vs {expect}");
        }
    }

    #[test]
    fn batched_costs_equal_one_image_at_a_time() {
        // Two images with 2 and 0 objects, three predictions, random logits: the batched costs
        // equal those of each image and prediction computed alone (padding columns ignored).
        use rand::{Rng, SeedableRng};
        let device = Default::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (b, q, k1, h, wd) = (2, 4, 4, 6, 8);
        let mut t = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() * 6.0 - 3.0).collect() };
        let classes: Vec<Tensor<Flex, 3>> = (0..3)
            .map(|_| {
                Tensor::<Flex, 1>::from_data(TensorData::new(t(b * q * k1), [b * q * k1]), &device).reshape([b, q, k1])
            })
            .collect();
        let masks: Vec<Tensor<Flex, 4>> = (0..3)
            .map(|_| {
                Tensor::<Flex, 1>::from_data(TensorData::new(t(b * q * h * wd), [b * q * h * wd]), &device)
                    .reshape([b, q, h, wd])
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let gt: Vec<BinaryMask> = (0..2)
            .map(|_| BinaryMask { height: 24, width: 32, data: (0..768).map(|_| rng.random::<bool>()).collect() })
            .collect();
        let points = matcher_points(2, 50, &mut rng);
        let w = MatcherWeights { class: 2.0, mask: 5.0, dice: 5.0, num_points: 50 };
        let targets = [
            MatchTarget { labels: &[2, 0], masks: &gt, points: &points[0] },
            MatchTarget { labels: &[], masks: &[], points: &points[1] },
        ];
        let all = cost_matrices(&classes, &masks, &targets, &w).unwrap();
        for i in 0..3 {
            assert!(all[i][1].is_empty());
            let one = cost_matrices(
                &[classes[i].clone().narrow(0, 0, 1)],
                &[masks[i].clone().narrow(0, 0, 1)],
                &targets[..1],
                &w,
            )
            .unwrap();
            let diff = mpf_model::testing::max_abs_diff(&all[i][0], &one[0][0]);
            assert_eq!(all[i][0].len(), q * 2);
            assert!(diff < 1e-5, "prediction {i}: {diff}");
        }
    }
}
