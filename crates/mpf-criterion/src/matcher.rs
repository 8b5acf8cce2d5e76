//! The Hungarian matcher (spec §2.5): for one prediction of one image, the cost of pairing query
//! `q` with GT object `g` is `w_class · (−p_q(label_g)) + w_mask · BCE + w_dice · dice` on one set
//! of random points shared by every query and object of the image; the assignment minimising the
//! total cost is solved by `lsap` (a port of SciPy's `linear_sum_assignment`). Costs are computed
//! in f32 without gradient; non-finite costs are replaced before the solver sees them and counted.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax, softplus};

use crate::CriterionError;
use crate::points::{point_sample, uniform_points};

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

/// The cost matrix of one image.
///
/// # Shapes
/// - `class_logits`: `[Q, K + 1]`, `mask_logits`: `[Q, h, w]`
/// - `gt_masks`: `[G, H, W]` (0/1), `points`: `[1, P, 2]`
/// - output: `[Q, G]`
pub fn cost_matrix<B: Backend>(
    class_logits: Tensor<B, 2>,
    mask_logits: Tensor<B, 3>,
    labels: &[usize],
    gt_masks: Tensor<B, 3>,
    points: Tensor<B, 3>,
    w: &MatcherWeights,
) -> Tensor<B, 2> {
    let device = class_logits.device();
    let [q, h, wd] = mask_logits.dims();
    let [g, gh, gw] = gt_masks.dims();
    let p = points.dims()[1];
    let idx = Tensor::<B, 1, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [g]),
        &device,
    );
    let cost_class = softmax(class_logits.detach(), 1).select(1, idx).neg();
    let x = point_sample(mask_logits.detach().reshape([1, q, h, wd]), points.clone()).reshape([q, p]);
    let t = point_sample(gt_masks.reshape([1, g, gh, gw]), points).reshape([g, p]);
    // BCE with logits, summed over points for target 1 (softplus(−x)) and 0 (softplus(x)).
    let pos = softplus(x.clone().neg(), 1.0);
    let neg = softplus(x.clone(), 1.0);
    let t_t = t.clone().transpose();
    let cost_mask = (pos.matmul(t_t.clone()) + neg.matmul(t_t.clone().neg() + 1.0)) / p as f64;
    let s = sigmoid(x);
    let numerator = s.clone().matmul(t_t) * 2.0;
    let denominator = s.sum_dim(1) + t.sum_dim(1).transpose();
    let cost_dice = (numerator + 1.0) / (denominator + 1.0);
    let cost_dice = cost_dice.neg() + 1.0;
    cost_class * w.class + cost_mask * w.mask + cost_dice * w.dice
}

/// Matches every image of one prediction. `gt[b]` is `None` for an image without objects.
///
/// # Shapes
/// - `class_logits`: `[B, Q, K + 1]`, `mask_logits`: `[B, Q, h, w]`
/// - `gt[b]`: labels and masks `[G_b, H, W]`; `points[b]`: `[1, P, 2]`
pub fn match_prediction<B: Backend>(
    class_logits: &Tensor<B, 3>,
    mask_logits: &Tensor<B, 4>,
    gt: &[(&[usize], Option<Tensor<B, 3>>)],
    points: &[Tensor<B, 3>],
    w: &MatcherWeights,
    stats: &mut MatchStats,
) -> Result<Vec<Assignment>, CriterionError> {
    let [_, q, k1] = class_logits.dims();
    let [_, _, h, wd] = mask_logits.dims();
    let mut out = Vec::with_capacity(gt.len());
    for (b, (labels, masks)) in gt.iter().enumerate() {
        let Some(masks) = masks else {
            out.push(Vec::new());
            continue;
        };
        let cost = cost_matrix(
            class_logits.clone().narrow(0, b, 1).reshape([q, k1]),
            mask_logits.clone().narrow(0, b, 1).reshape([q, h, wd]),
            labels,
            masks.clone(),
            points[b].clone(),
            w,
        );
        let host: Vec<f32> =
            cost.into_data().convert::<f32>().to_vec().map_err(|e| CriterionError::Shape(format!("{e:?}")))?;
        out.push(assign(&host, q, labels.len(), stats)?);
    }
    Ok(out)
}

/// The matcher's shared points: one `[1, P, 2]` set per image.
pub fn matcher_points<B: Backend>(
    images: usize,
    num_points: usize,
    rng: &mut impl rand::Rng,
    device: &B::Device,
) -> Vec<Tensor<B, 3>> {
    (0..images).map(|_| uniform_points::<B>(1, num_points, rng, device)).collect()
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
        let class = Tensor::<Flex, 2>::zeros([1, 3], &device);
        // Mask logit 0 everywhere → σ = 0.5, BCE = ln 2 at every point; GT all ones.
        let masks = Tensor::<Flex, 3>::zeros([1, 4, 4], &device);
        let gt = Tensor::<Flex, 3>::ones([1, 8, 8], &device);
        // Points at pixel centres, away from the zero padding.
        let pts = Tensor::<Flex, 3>::from_floats([[[0.3, 0.3], [0.6, 0.4], [0.5, 0.7]]], &device);
        let w = MatcherWeights { class: 2.0, mask: 5.0, dice: 5.0, num_points: 3 };
        let c = cost_matrix(class, masks, &[1], gt, pts, &w).into_data().to_vec::<f32>().unwrap()[0];
        // dice = 1 − (2·1.5 + 1)/(1.5 + 3 + 1) = 1 − 4/5.5.
        let expect = 2.0 * (-1.0 / 3.0) + 5.0 * std::f64::consts::LN_2 + 5.0 * (1.0 - 4.0 / 5.5);
        assert!((c as f64 - expect).abs() < 1e-5, "{c} vs {expect}");
    }
}
