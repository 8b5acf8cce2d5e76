//! Semantic segmentation metrics as detectron2's `SemSegEvaluator` computes them: a `K × K`
//! confusion matrix over every non-ignored ground-truth pixel, per-class IoU
//! `tp / (gt + pred − tp)`, mIoU over the classes that occur in the ground truth or the
//! predictions, pixel accuracy and mean class accuracy over the classes present in the ground
//! truth.

use serde::Serialize;

use crate::EvalError;

/// Accumulates `(ground truth, prediction)` pixel pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    k: usize,
    ignore: u32,
    /// `counts[gt · K + pred]`.
    counts: Vec<u64>,
}

/// The metrics of a [`ConfusionMatrix`], percentages as detectron2 reports them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SemanticMetrics {
    /// Mean IoU (%) over classes with ground-truth or predicted pixels.
    #[serde(rename = "mIoU")]
    pub miou: f64,
    /// Frequency-weighted IoU (%).
    #[serde(rename = "fwIoU")]
    pub fwiou: f64,
    /// Mean class accuracy (%) over classes with ground-truth pixels.
    #[serde(rename = "mACC")]
    pub macc: f64,
    /// Pixel accuracy (%).
    #[serde(rename = "pACC")]
    pub pacc: f64,
    /// IoU (%) per class; `None` for a class absent from both.
    pub per_class_iou: Vec<Option<f64>>,
    /// Ground-truth pixels counted.
    pub pixels: u64,
}

impl ConfusionMatrix {
    /// An empty matrix for `k` classes; ground-truth pixels equal to `ignore` are skipped.
    pub fn new(k: usize, ignore: u32) -> Self {
        Self { k, ignore, counts: vec![0; k * k] }
    }

    /// Adds one image's label maps (row-major, same length). A ground-truth value that is neither
    /// a class nor `ignore` is an error naming `item`.
    pub fn add(&mut self, gt: &[u32], pred: &[u32], item: &str) -> Result<(), EvalError> {
        if gt.len() != pred.len() {
            return Err(EvalError::Invalid(format!(
                "{item}: prediction has {} pixels, ground truth {}",
                pred.len(),
                gt.len()
            )));
        }
        for (&g, &p) in gt.iter().zip(pred) {
            if g == self.ignore {
                continue;
            }
            let (g, p) = (g as usize, p as usize);
            if g >= self.k || p >= self.k {
                return Err(EvalError::Invalid(format!(
                    "{item}: label {} is not one of the {} classes",
                    g.max(p),
                    self.k
                )));
            }
            self.counts[g * self.k + p] += 1;
        }
        Ok(())
    }

    /// Adds another matrix (e.g. from a worker).
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The metrics so far.
    pub fn metrics(&self) -> SemanticMetrics {
        let k = self.k;
        let tp: Vec<f64> = (0..k).map(|c| self.counts[c * k + c] as f64).collect();
        let gt: Vec<f64> = (0..k).map(|c| (0..k).map(|p| self.counts[c * k + p]).sum::<u64>() as f64).collect();
        let pred: Vec<f64> = (0..k).map(|c| (0..k).map(|g| self.counts[g * k + c]).sum::<u64>() as f64).collect();
        let total: f64 = gt.iter().sum();
        let per_class_iou: Vec<Option<f64>> = (0..k)
            .map(|c| {
                let union = gt[c] + pred[c] - tp[c];
                (gt[c] + pred[c] > 0.0).then(|| 100.0 * tp[c] / union)
            })
            .collect();
        let valid: Vec<f64> = per_class_iou.iter().flatten().copied().collect();
        let miou = if valid.is_empty() { 0.0 } else { valid.iter().sum::<f64>() / valid.len() as f64 };
        let accs: Vec<f64> = (0..k).filter(|&c| gt[c] > 0.0).map(|c| 100.0 * tp[c] / gt[c]).collect();
        let macc = if accs.is_empty() { 0.0 } else { accs.iter().sum::<f64>() / accs.len() as f64 };
        let pacc = if total > 0.0 { 100.0 * tp.iter().sum::<f64>() / total } else { 0.0 };
        let fwiou = if total > 0.0 {
            (0..k).filter_map(|c| per_class_iou[c].map(|iou| iou * gt[c] / total)).sum()
        } else {
            0.0
        };
        SemanticMetrics { miou, fwiou, macc, pacc, per_class_iou, pixels: total as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_two_class_example() {
        // gt:   0 0 1 1 255      pred: 0 1 1 1 0
        // class 0: tp 1, gt 2, pred 1 → IoU 1/2; class 1: tp 2, gt 2, pred 3 → IoU 2/3.
        let mut m = ConfusionMatrix::new(3, 255);
        m.add(&[0, 0, 1, 1, 255], &[0, 1, 1, 1, 0], "img").unwrap();
        let r = m.metrics();
        assert!((r.per_class_iou[0].unwrap() - 50.0).abs() < 1e-9);
        assert!((r.per_class_iou[1].unwrap() - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.per_class_iou[2], None, "absent class is left out of the mean");
        assert!((r.miou - (50.0 + 200.0 / 3.0) / 2.0).abs() < 1e-9);
        assert!((r.pacc - 75.0).abs() < 1e-9);
        assert!((r.macc - 75.0).abs() < 1e-9);
        assert_eq!(r.pixels, 4);
    }

    #[test]
    fn a_class_predicted_but_absent_scores_zero() {
        let mut m = ConfusionMatrix::new(2, 255);
        m.add(&[0, 0], &[0, 1], "img").unwrap();
        let r = m.metrics();
        assert_eq!(r.per_class_iou[1], Some(0.0));
        assert!((r.miou - 25.0).abs() < 1e-9);
    }

    #[test]
    fn bad_inputs_name_the_item() {
        let mut m = ConfusionMatrix::new(2, 255);
        assert!(m.add(&[0], &[0, 1], "a.png").unwrap_err().to_string().contains("a.png"));
        assert!(m.add(&[5], &[0], "b.png").unwrap_err().to_string().contains("b.png"));
    }
}
