//! MP-Former's layer-consistency metrics (MP-Former paper, Section 3), pooled over a data set.
//!
//! The decoder makes `L + 1` predictions (0 = before the first layer, `L` = the output). Each is
//! matched to the ground truth with the training matcher; `σ_i(g)` is the query prediction `i`
//! assigns to object `g`.
//! - **Util^i against the last layer** = `Σ_g 𝟙[σ_i(g) = σ_L(g)] / N_gt`: how much of the final
//!   query ↔ object assignment layer `i` already has.
//! - **Util^i against the previous layer** = `Σ_g 𝟙[σ_i(g) = σ_{i−1}(g)] / N_gt`.
//! - **mIoU-L^i** = the mean over the queries matched at the last layer of
//!   `IoU(σ(M_i^q) > 0.5, σ(M_{i−1}^q) > 0.5)` at the mask resolution (1/4): how much a query's
//!   mask changes from one layer to the next. Two empty masks count as IoU 1 (identical).
//!
//! Counts are pooled over all objects (queries) of the data set, not averaged per image; `i`
//! runs over `1..=L`.

use serde::Serialize;

use crate::EvalError;

/// Running counts of the layer metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerCounts {
    /// Hits per `i ∈ 1..=L` against the last prediction.
    same_as_last: Vec<u64>,
    /// Hits per `i ∈ 1..=L` against the previous prediction.
    same_as_prev: Vec<u64>,
    /// IoU sums per `i ∈ 1..=L`.
    iou_sum: Vec<f64>,
    objects: u64,
    queries: u64,
    images: u64,
}

/// The metrics, index `k` holding layer `i = k + 1`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerMetrics {
    /// Util^i against the last prediction, `i = 1..=L` (the last entry is 1 by definition).
    pub util_last: Vec<f64>,
    /// Util^i against the previous prediction, `i = 1..=L`.
    pub util_prev: Vec<f64>,
    /// mIoU-L^i, `i = 1..=L`.
    pub miou_l: Vec<f64>,
    /// Ground-truth objects counted.
    pub objects: u64,
    /// Matched queries counted for mIoU-L.
    pub queries: u64,
    /// Images counted.
    pub images: u64,
}

/// IoU of two binary masks; 1 when both are empty.
pub fn mask_iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        inter += (x && y) as u64;
        union += (x || y) as u64;
    }
    if union == 0 { 1.0 } else { inter as f64 / union as f64 }
}

impl LayerCounts {
    /// Adds one image. `assign[i][g]` is the query prediction `i` matched to object `g` (`None`
    /// when the matcher left it unmatched, i.e. fewer queries than objects); `masks[i][q]` is
    /// query `q`'s binarised mask at prediction `i`, all of one size.
    pub fn add_image(&mut self, assign: &[Vec<Option<usize>>], masks: &[Vec<Vec<bool>>]) -> Result<(), EvalError> {
        let n = assign.len();
        if n < 2 || masks.len() != n {
            return Err(EvalError::Invalid(format!(
                "layer metrics need the same number (≥ 2) of assignments and mask sets, got {} and {}",
                n,
                masks.len()
            )));
        }
        let l = n - 1;
        if self.same_as_last.is_empty() {
            self.same_as_last = vec![0; l];
            self.same_as_prev = vec![0; l];
            self.iou_sum = vec![0.0; l];
        } else if self.same_as_last.len() != l {
            return Err(EvalError::Invalid(format!(
                "{n} predictions after images with {}",
                self.same_as_last.len() + 1
            )));
        }
        let g = assign[l].len();
        if assign.iter().any(|a| a.len() != g) {
            return Err(EvalError::Invalid("every prediction must assign the same objects".into()));
        }
        self.images += 1;
        self.objects += g as u64;
        let same =
            |a: &[Option<usize>], b: &[Option<usize>]| a.iter().zip(b).filter(|(x, y)| x.is_some() && x == y).count();
        for i in 1..=l {
            self.same_as_last[i - 1] += same(&assign[i], &assign[l]) as u64;
            self.same_as_prev[i - 1] += same(&assign[i], &assign[i - 1]) as u64;
        }
        for q in assign[l].iter().flatten() {
            self.queries += 1;
            for i in 1..=l {
                let (a, b) = (masks[i].get(*q), masks[i - 1].get(*q));
                let (Some(a), Some(b)) = (a, b) else {
                    return Err(EvalError::Invalid(format!("query {q} has no mask at prediction {i}")));
                };
                self.iou_sum[i - 1] += mask_iou(a, b);
            }
        }
        Ok(())
    }

    /// The pooled metrics (zeros before any object).
    pub fn metrics(&self) -> LayerMetrics {
        let per = |v: &[u64], d: u64| v.iter().map(|&x| if d == 0 { 0.0 } else { x as f64 / d as f64 }).collect();
        LayerMetrics {
            util_last: per(&self.same_as_last, self.objects),
            util_prev: per(&self.same_as_prev, self.objects),
            miou_l: self
                .iou_sum
                .iter()
                .map(|&s| if self.queries == 0 { 0.0 } else { s / self.queries as f64 })
                .collect(),
            objects: self.objects,
            queries: self.queries,
            images: self.images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_layers_give_one() {
        let mut c = LayerCounts::default();
        let a = vec![vec![Some(2), Some(0)]; 4];
        let m = vec![vec![vec![true, false], vec![false, false], vec![true, true]]; 4];
        c.add_image(&a, &m).unwrap();
        let r = c.metrics();
        assert_eq!(r.util_last, vec![1.0; 3]);
        assert_eq!(r.util_prev, vec![1.0; 3]);
        assert_eq!(r.miou_l, vec![1.0; 3]);
        assert_eq!((r.objects, r.queries, r.images), (2, 2, 1));
    }

    #[test]
    fn disjoint_layers_give_zero() {
        // Prediction i assigns object 0 to query i, and query masks never overlap between layers.
        let mut c = LayerCounts::default();
        let a: Vec<Vec<Option<usize>>> = (0..3).map(|i| vec![Some(i)]).collect();
        let m: Vec<Vec<Vec<bool>>> =
            (0..3).map(|i| (0..3).map(|_| (0..3).map(|p| p == i).collect()).collect()).collect();
        c.add_image(&a, &m).unwrap();
        let r = c.metrics();
        assert_eq!(r.util_last, vec![0.0, 1.0], "layer 1 differs from the last; the last equals itself");
        assert_eq!(r.util_prev, vec![0.0, 0.0]);
        assert_eq!(r.miou_l, vec![0.0, 0.0]);
    }

    #[test]
    fn pooled_by_hand() {
        // Image A: 2 objects over 3 predictions: object 0 → q1, q1, q1; object 1 → q0, q2, q2.
        // Image B: 1 object: q0, q3, q0.
        let mut c = LayerCounts::default();
        let a = vec![vec![Some(1), Some(0)], vec![Some(1), Some(2)], vec![Some(1), Some(2)]];
        // Masks of 4 pixels; q1: [1100] → [1110] → [1110]; q2: [0001] → [0011] → [0111].
        let q = |v: [u8; 4]| v.iter().map(|&x| x == 1).collect::<Vec<bool>>();
        let set = |q1: [u8; 4], q2: [u8; 4]| vec![q([0; 4]), q(q1), q(q2), q([0; 4])];
        let m = vec![set([1, 1, 0, 0], [0, 0, 0, 1]), set([1, 1, 1, 0], [0, 0, 1, 1]), set([1, 1, 1, 0], [0, 1, 1, 1])];
        c.add_image(&a, &m).unwrap();
        let b = vec![vec![Some(0)], vec![Some(3)], vec![Some(0)]];
        // q0 empty at 0, [1000] at 1, [1000] at 2 → IoU(1,0) = 0, IoU(2,1) = 1.
        let mb = vec![vec![q([0; 4]); 4], vec![q([1, 0, 0, 0]); 4], vec![q([1, 0, 0, 0]); 4]];
        c.add_image(&b, &mb).unwrap();
        let r = c.metrics();
        // Against the last: i = 1: A 2 of 2 (q1 = q1, q2 = q2), B q3 ≠ q0 → 2/3; i = 2: 3/3.
        assert_eq!(r.util_last, vec![2.0 / 3.0, 1.0]);
        // Against the previous: i = 1: A object 0 yes, object 1 no (q2 vs q0), B no → 1/3;
        // i = 2: A both, B no (q0 vs q3) → 2/3.
        assert_eq!(r.util_prev, vec![1.0 / 3.0, 2.0 / 3.0]);
        // mIoU-L over the 3 queries matched last (A: q1, q2; B: q0):
        // i = 1: q1 2/3, q2 1/2, q0 0 → 7/18; i = 2: q1 1, q2 2/3, q0 1 → 8/9.
        let want = [7.0 / 18.0, 8.0 / 9.0];
        for (g, w) in r.miou_l.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{:?}", r.miou_l);
        }
        assert!(c.add_image(&a[..1], &m[..1]).is_err());
    }
}
