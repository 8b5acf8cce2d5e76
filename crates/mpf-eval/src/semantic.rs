//! Semantic segmentation metrics through hotcoco's `SemanticEval` (a port of mmsegmentation's
//! `IoUMetric`, checked by hotcoco against detectron2's `SemSegEvaluator`): one `K × K` confusion
//! matrix over every non-ignored ground-truth pixel, per-class IoU `tp / (gt + pred − tp)`, mIoU
//! over the classes present in the ground truth or the predictions, pixel accuracy and mean class
//! accuracy over the classes present in the ground truth. Reported in percent, as detectron2 does.

use hotcoco::semantic::SemanticEval;
use serde::Serialize;

use crate::EvalError;

/// Accumulates `(ground truth, prediction)` label maps.
#[derive(Debug)]
pub struct ConfusionMatrix {
    ev: SemanticEval,
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
    /// Images counted.
    pub images: usize,
}

fn percent(v: f64) -> f64 {
    if v >= 0.0 { 100.0 * v } else { 0.0 }
}

impl ConfusionMatrix {
    /// An empty matrix for `k` classes; ground-truth pixels equal to `ignore` are skipped.
    pub fn new(k: usize, ignore: u32) -> Self {
        Self { ev: SemanticEval::new(k).ignore_index(Some(ignore as u64)) }
    }

    /// Adds one image's label maps (row-major, same length). A length mismatch or a label that is
    /// neither a class nor `ignore` is an error naming `item`.
    pub fn add(&mut self, gt: &[u32], pred: &[u32], item: &str) -> Result<(), EvalError> {
        self.ev.update(gt, pred).map_err(|e| EvalError::Invalid(format!("{item}: {e}")))
    }

    /// The metrics so far (0 where nothing could be computed).
    pub fn metrics(&self) -> SemanticMetrics {
        let s = self.ev.scores();
        SemanticMetrics {
            miou: percent(s.miou),
            fwiou: percent(s.fwiou),
            macc: percent(s.macc),
            pacc: percent(s.aacc),
            per_class_iou: s.per_class.iter().map(|c| (c.iou >= 0.0).then_some(100.0 * c.iou)).collect(),
            images: self.ev.n_images(),
        }
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
        assert_eq!(r.images, 1);
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
