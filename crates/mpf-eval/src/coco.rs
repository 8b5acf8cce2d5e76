//! COCO mask AP. Predictions become COCO results rows (compressed RLE, as detectron2's
//! `instances_to_coco_json` writes them) and are scored by hotcoco's `COCOeval` with
//! `iouType = "segm"`, which follows pycocotools' evaluate / accumulate / summarize.
//!
//! The ground truth is either a COCO instances JSON (crowd regions included, so crowd-matching
//! detections are ignored as pycocotools does) or built from any [`mpf_data::Dataset`] (every
//! object a non-crowd annotation at the image's size, category id = the class's `source_id`).

use std::collections::BTreeMap;
use std::path::Path;

use hotcoco::types::{Annotation, Category, Dataset as CocoDataset, Image, Segmentation};
use hotcoco::{COCO, COCOeval, params::IouType};
use mpf_data::Dataset;
use mpf_model::mask::BinaryMask;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// The 12 numbers of pycocotools' `summarize()`, in its order.
pub const METRIC_NAMES: [&str; 12] =
    ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// One instance prediction of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePrediction {
    /// COCO image id.
    pub image_id: u64,
    /// Contiguous class id in `0..K`.
    pub label: usize,
    /// Confidence.
    pub score: f32,
    /// Binary mask at the image's original size.
    pub mask: BinaryMask,
}

/// A compressed RLE as it appears in COCO JSON: `{"size": [h, w], "counts": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RleJson {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// LEB128-like COCO string of column-major runs.
    pub counts: String,
}

/// One row of a COCO results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// COCO image id.
    pub image_id: u64,
    /// COCO category id.
    pub category_id: u64,
    /// The mask.
    pub segmentation: RleJson,
    /// Confidence.
    pub score: f64,
}

/// Encodes a row-major mask as COCO's compressed RLE (column-major runs).
pub fn encode(mask: &BinaryMask) -> RleJson {
    let (h, w) = (mask.height, mask.width);
    let mut fortran = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            fortran[y + h * x] = mask.data[y * w + x] as u8;
        }
    }
    // Only fails when the buffer does not match h·w, which the loop above rules out.
    let rle = hotcoco::mask::encode(&fortran, h as u32, w as u32).expect("buffer matches its size");
    RleJson { size: [h as u32, w as u32], counts: hotcoco::mask::rle_to_string(&rle) }
}

/// Decodes a compressed RLE back into a row-major mask.
pub fn decode(rle: &RleJson) -> Result<BinaryMask, EvalError> {
    let [h, w] = rle.size;
    let r = hotcoco::mask::rle_from_string(&rle.counts, h, w)
        .map_err(|e| EvalError::Invalid(format!("bad RLE of size {h}×{w}: {e}")))?;
    let fortran = hotcoco::mask::decode(&r);
    let (h, w) = (h as usize, w as usize);
    let mut data = vec![false; h * w];
    for y in 0..h {
        for x in 0..w {
            data[y * w + x] = fortran[y + h * x] != 0;
        }
    }
    Ok(BinaryMask { height: h, width: w, data })
}

/// COCO results rows for `predictions`; `category_ids[k]` is the COCO id of class `k`.
pub fn result_rows(predictions: &[InstancePrediction], category_ids: &[u64]) -> Result<Vec<ResultRow>, EvalError> {
    predictions
        .iter()
        .map(|p| {
            let category_id = *category_ids.get(p.label).ok_or_else(|| {
                EvalError::Invalid(format!(
                    "image {}: class {} has no COCO category ({} classes)",
                    p.image_id,
                    p.label,
                    category_ids.len()
                ))
            })?;
            Ok(ResultRow { image_id: p.image_id, category_id, segmentation: encode(&p.mask), score: p.score as f64 })
        })
        .collect()
}

/// Writes a COCO results file (a JSON array of [`ResultRow`]).
pub fn write_results(path: &Path, rows: &[ResultRow]) -> Result<(), EvalError> {
    let text = serde_json::to_string(rows).map_err(|e| EvalError::Invalid(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| EvalError::Write { path: path.into(), message: e.to_string() })
}

/// COCO category ids of a data set's classes (their `source_id`).
pub fn category_ids(data: &dyn Dataset) -> Vec<u64> {
    data.classes().iter().map(|c| c.source_id).collect()
}

/// A COCO ground truth built from a data set: every image (with or without objects), every
/// object as a non-crowd RLE annotation, the thing classes as categories.
pub fn ground_truth(data: &dyn Dataset) -> Result<COCO, EvalError> {
    let mut b = GroundTruthBuilder::new(data.classes());
    for i in 0..data.len() {
        b.add(&data.get(i)?);
    }
    Ok(b.finish())
}

/// Builds a COCO ground truth one sample at a time (see [`ground_truth`]).
#[derive(Debug, Clone)]
pub struct GroundTruthBuilder {
    ds: CocoDataset,
    classes: Vec<mpf_data::ClassInfo>,
}

impl GroundTruthBuilder {
    /// An empty ground truth with the thing classes of `classes` as categories.
    pub fn new(classes: &[mpf_data::ClassInfo]) -> Self {
        let mut ds = CocoDataset::default();
        for c in classes.iter().filter(|c| c.is_thing) {
            ds.categories.push(Category { id: c.source_id, name: c.name.clone(), ..Default::default() });
        }
        Self { ds, classes: classes.to_vec() }
    }

    /// Adds an image and its thing objects.
    pub fn add(&mut self, s: &mpf_data::Sample) {
        self.ds.images.push(Image {
            id: s.id,
            file_name: s.file.clone(),
            height: s.image.height as u32,
            width: s.image.width as u32,
            ..Default::default()
        });
        for o in s.objects.iter().filter(|o| self.classes[o.label].is_thing) {
            let rle = encode(&o.mask);
            self.ds.annotations.push(Annotation {
                id: self.ds.annotations.len() as u64 + 1,
                image_id: s.id,
                category_id: self.classes[o.label].source_id,
                area: Some(o.mask.area() as f64),
                bbox: Some(bbox(&o.mask)),
                segmentation: Some(Segmentation::CompressedRle { size: rle.size, counts: rle.counts }),
                iscrowd: false,
                ..Default::default()
            });
        }
    }

    /// The indexed ground truth.
    pub fn finish(self) -> COCO {
        COCO::from_dataset(self.ds)
    }
}

/// `[x, y, w, h]` of a mask's foreground (zeros when empty), as pycocotools' `toBbox`.
pub fn bbox(mask: &BinaryMask) -> [f64; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..mask.height {
        for x in 0..mask.width {
            if mask.data[y * mask.width + x] {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
    }
    if x0 == usize::MAX { [0.0; 4] } else { [x0 as f64, y0 as f64, (x1 - x0) as f64, (y1 - y0) as f64] }
}

/// Reads a COCO instances JSON as ground truth.
pub fn load_ground_truth(path: &Path) -> Result<COCO, EvalError> {
    COCO::new(path).map_err(|e| EvalError::Coco { what: path.display().to_string(), message: e.to_string() })
}

/// Reads a COCO results file against `gt` (hotcoco's `loadRes`).
pub fn load_results(gt: &COCO, path: &Path) -> Result<COCO, EvalError> {
    gt.load_res(path).map_err(|e| EvalError::Coco { what: path.display().to_string(), message: e.to_string() })
}

/// COCO mask AP: the 12 summary numbers by name (fractions in 0..1; pycocotools' −1 means "no
/// ground truth or no detection in that area range") and pycocotools' printed lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CocoMetrics {
    /// `AP`, `AP50`, …, `ARl` (see [`METRIC_NAMES`]).
    pub stats: BTreeMap<String, f64>,
    /// Number of result rows scored.
    pub detections: usize,
    /// The summary as pycocotools prints it.
    #[serde(skip)]
    pub lines: Vec<String>,
}

impl CocoMetrics {
    /// `AP` (0.5:0.95, all areas, 100 detections), the headline number.
    pub fn ap(&self) -> f64 {
        self.stats["AP"]
    }

    /// The summary lines as one block.
    pub fn table(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// Scores `rows` against `gt` with `iouType = "segm"` over `img_ids` (empty = every image of
/// `gt`, pycocotools' `params.imgIds`). An empty result list scores 0 where there is ground truth
/// (pycocotools itself refuses an empty list).
pub fn evaluate_segm(gt: COCO, rows: &[ResultRow], img_ids: &[u64]) -> Result<CocoMetrics, EvalError> {
    let anns: Vec<Annotation> = rows
        .iter()
        .map(|r| Annotation {
            image_id: r.image_id,
            category_id: r.category_id,
            segmentation: Some(Segmentation::CompressedRle {
                size: r.segmentation.size,
                counts: r.segmentation.counts.clone(),
            }),
            score: Some(r.score),
            ..Default::default()
        })
        .collect();
    let dt = gt.load_res_anns(anns).map_err(|e| EvalError::Coco { what: "results".into(), message: e.to_string() })?;
    evaluate(gt, dt, IouKind::Segm, img_ids)
}

/// What a COCO evaluation overlaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IouKind {
    /// Masks (`iouType = "segm"`).
    Segm,
    /// Boxes (`iouType = "bbox"`).
    Bbox,
}

/// Scores a COCO results file against a COCO ground-truth file, as pycocotools'
/// `COCOeval(COCO(gt), COCO(gt).loadRes(dt), iou_type)` does.
pub fn evaluate_files(gt: &Path, dt: &Path, kind: IouKind) -> Result<CocoMetrics, EvalError> {
    let gt = load_ground_truth(gt)?;
    let results = load_results(&gt, dt)?;
    evaluate(gt, results, kind, &[])
}

/// Scores a loaded results set (see [`load_results`]) against `gt` over `img_ids` (empty = all).
pub fn evaluate(gt: COCO, dt: COCO, kind: IouKind, img_ids: &[u64]) -> Result<CocoMetrics, EvalError> {
    let detections = dt.dataset.annotations.len();
    let iou = match kind {
        IouKind::Segm => IouType::Segm,
        IouKind::Bbox => IouType::Bbox,
    };
    let mut ev = COCOeval::new(gt, dt, iou);
    ev.params.img_ids = img_ids.to_vec();
    ev.evaluate().map_err(|e| EvalError::Coco { what: "evaluation".into(), message: e.to_string() })?;
    ev.accumulate();
    let lines = ev.summarize_lines();
    let stats = ev.stats().unwrap_or(&[]);
    let stats = METRIC_NAMES.iter().zip(stats).map(|(n, v)| (n.to_string(), *v)).collect();
    Ok(CocoMetrics { stats, detections, lines })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpf_data::synth::SynthDataset;

    fn square(h: usize, w: usize, y0: usize, x0: usize, s: usize) -> BinaryMask {
        let mut data = vec![false; h * w];
        for y in y0..y0 + s {
            for x in x0..x0 + s {
                data[y * w + x] = true;
            }
        }
        BinaryMask { height: h, width: w, data }
    }

    #[test]
    fn rle_round_trips_and_matches_the_coco_string() {
        // A 4×3 mask with pixels (0,0), (1,0), (3,2): column-major 1,1,0,0 | 0,0,0,0 | 0,0,0,1, so
        // the runs are 0 background, 2 foreground, 9 background, 1 foreground.
        let mut m = BinaryMask { height: 4, width: 3, data: vec![false; 12] };
        m.data[0] = true;
        m.data[3] = true;
        m.data[3 * 3 + 2] = true;
        let rle = encode(&m);
        assert_eq!(rle.size, [4, 3]);
        let runs = hotcoco::mask::rle_from_string(&rle.counts, 4, 3).unwrap().counts;
        assert_eq!(runs, vec![0, 2, 9, 1]);
        assert_eq!(decode(&rle).unwrap(), m);
        assert_eq!(bbox(&m), [0.0, 0.0, 3.0, 4.0]);
    }

    #[test]
    fn perfect_predictions_score_one_and_missing_ones_lower() {
        let data = SynthDataset::new(3, 0, 4, 64);
        let gt = ground_truth(&data).unwrap();
        let ids = category_ids(&data);
        let mut preds = Vec::new();
        for i in 0..data.len() {
            let s = data.get(i).unwrap();
            for o in &s.objects {
                preds.push(InstancePrediction { image_id: s.id, label: o.label, score: 0.9, mask: o.mask.clone() });
            }
        }
        let m = evaluate_segm(gt, &result_rows(&preds, &ids).unwrap(), &[]).unwrap();
        assert!((m.ap() - 1.0).abs() < 1e-9, "{:?}", m.stats);
        assert!((m.stats["AR100"] - 1.0).abs() < 1e-9);
        assert_eq!(m.lines.len(), 12);
        // Half the objects found (the others missed): recall 0.5 overall.
        let kept: Vec<_> = preds.iter().step_by(2).cloned().collect();
        let m = evaluate_segm(ground_truth(&data).unwrap(), &result_rows(&kept, &ids).unwrap(), &[]).unwrap();
        assert!(m.ap() < 0.9 && m.ap() > 0.0, "{:?}", m.stats);
    }

    #[test]
    fn a_shifted_mask_counts_only_at_its_iou() {
        // One GT square 10×10, one prediction shifted by 2 rows: IoU = 80/120 = 0.667, a true
        // positive at thresholds 0.50..0.65 (4 of 10) and a false positive above → AP = 0.4.
        let gt_mask = square(32, 32, 4, 4, 10);
        let mut ds = CocoDataset::default();
        ds.categories.push(Category { id: 7, name: "sq".into(), ..Default::default() });
        ds.images.push(Image { id: 1, file_name: "a".into(), height: 32, width: 32, ..Default::default() });
        let rle = encode(&gt_mask);
        ds.annotations.push(Annotation {
            id: 1,
            image_id: 1,
            category_id: 7,
            area: Some(100.0),
            bbox: Some(bbox(&gt_mask)),
            segmentation: Some(Segmentation::CompressedRle { size: rle.size, counts: rle.counts }),
            ..Default::default()
        });
        let pred = InstancePrediction { image_id: 1, label: 0, score: 0.5, mask: square(32, 32, 6, 4, 10) };
        let m = evaluate_segm(COCO::from_dataset(ds), &result_rows(&[pred], &[7]).unwrap(), &[]).unwrap();
        assert!((m.ap() - 0.4).abs() < 1e-9, "{:?}", m.stats);
        assert!((m.stats["AP50"] - 1.0).abs() < 1e-9);
        assert!((m.stats["AP75"]).abs() < 1e-9);
        assert!(result_rows(&[InstancePrediction { image_id: 1, label: 3, score: 0.1, mask: gt_mask }], &[7]).is_err());
    }
}
