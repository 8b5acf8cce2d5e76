//! Panoptic quality through hotcoco's `PanopticEval` (a port of panopticapi's `pq_compute`): PQ,
//! SQ and RQ over all categories, over things and over stuff, and per category, in percent as
//! detectron2 reports them.
//!
//! Inputs are either COCO panoptic files (JSON + PNG folder, crowd segments included) or built in
//! memory: ground truth from any [`mpf_data::Dataset`] and predictions from post-processed
//! segments, each segment a compressed RLE.

use std::collections::BTreeMap;
use std::path::Path;

use hotcoco::panoptic::{PanopticDataset, PanopticEval};
use hotcoco::types::{Annotation, Category, Dataset as CocoDataset, Image, Segmentation};
use mpf_data::{ClassInfo, Sample};
use mpf_model::mask::BinaryMask;
use serde::Serialize;

use crate::EvalError;
use crate::coco::{bbox, encode};

/// PQ, SQ, RQ (%) over a set of categories.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PqSplit {
    /// Panoptic quality (%), `None` when no category of the split was seen.
    #[serde(rename = "PQ")]
    pub pq: Option<f64>,
    /// Segmentation quality (%).
    #[serde(rename = "SQ")]
    pub sq: Option<f64>,
    /// Recognition quality (%).
    #[serde(rename = "RQ")]
    pub rq: Option<f64>,
    /// Categories averaged.
    pub n: usize,
}

impl PqSplit {
    fn from(s: &hotcoco::panoptic::PqSplit) -> Self {
        let p = |v: f64| (v >= 0.0).then_some(100.0 * v);
        Self { pq: p(s.scores.pq), sq: p(s.scores.sq), rq: p(s.scores.rq), n: s.n }
    }
}

/// The result of a panoptic evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PanopticMetrics {
    /// Every category.
    pub all: PqSplit,
    /// Thing categories.
    pub things: PqSplit,
    /// Stuff categories.
    pub stuff: PqSplit,
    /// `[PQ, SQ, RQ]` (%) per category id seen on either side.
    pub per_category: BTreeMap<u64, [f64; 3]>,
    /// Images evaluated.
    pub images: usize,
    /// panopticapi's table.
    #[serde(skip)]
    pub lines: Vec<String>,
}

impl PanopticMetrics {
    /// The table as one block.
    pub fn table(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// Scores `pred` against `gt`.
pub fn evaluate(gt: PanopticDataset, pred: PanopticDataset) -> Result<PanopticMetrics, EvalError> {
    let mut ev = PanopticEval::new(gt, pred);
    ev.run().map_err(|e| EvalError::Coco { what: "panoptic evaluation".into(), message: e.to_string() })?;
    let lines = ev.summarize_lines();
    let r = ev.result().ok_or_else(|| EvalError::Invalid("panoptic evaluation produced no result".into()))?;
    let per_category = r
        .per_category
        .iter()
        .filter_map(|(id, c)| c.scores().map(|s| (*id, [100.0 * s.pq, 100.0 * s.sq, 100.0 * s.rq])))
        .collect();
    Ok(PanopticMetrics {
        all: PqSplit::from(&r.all),
        things: PqSplit::from(&r.things),
        stuff: PqSplit::from(&r.stuff),
        per_category,
        images: r.n_images,
        lines,
    })
}

/// Reads a COCO panoptic JSON and its PNG folder (default: the JSON's path without `.json`).
pub fn load(json: &Path, folder: Option<&Path>) -> Result<PanopticDataset, EvalError> {
    let d = PanopticDataset::from_file(json)
        .map_err(|e| EvalError::Coco { what: json.display().to_string(), message: e.to_string() })?;
    Ok(match folder {
        Some(f) => d.with_folder(f),
        None => d,
    })
}

/// Builds ground truth and predictions in memory, image by image.
#[derive(Debug, Clone)]
pub struct PanopticBuilder {
    classes: Vec<ClassInfo>,
    gt: CocoDataset,
    pred: CocoDataset,
}

impl PanopticBuilder {
    /// An empty pair of data sets over `classes` (their `source_id`s are the category ids).
    pub fn new(classes: &[ClassInfo]) -> Self {
        let categories: Vec<Category> = classes
            .iter()
            .map(|c| Category {
                id: c.source_id,
                name: c.name.clone(),
                isthing: Some(c.is_thing),
                ..Default::default()
            })
            .collect();
        let gt = CocoDataset { categories: categories.clone(), ..Default::default() };
        let pred = CocoDataset { categories, ..Default::default() };
        Self { classes: classes.to_vec(), gt, pred }
    }

    fn push(ds: &mut CocoDataset, image_id: u64, category_id: u64, mask: &BinaryMask) {
        let rle = encode(mask);
        ds.annotations.push(Annotation {
            id: ds.annotations.len() as u64 + 1,
            image_id,
            category_id,
            area: Some(mask.area() as f64),
            bbox: Some(bbox(mask)),
            segmentation: Some(Segmentation::CompressedRle { size: rle.size, counts: rle.counts }),
            ..Default::default()
        });
    }

    /// Adds a ground-truth image: one segment per object (a panoptic reader's stuff objects are
    /// already one per class).
    pub fn add_ground_truth(&mut self, s: &Sample) {
        let image = Image {
            id: s.id,
            file_name: s.file.clone(),
            height: s.image.height as u32,
            width: s.image.width as u32,
            ..Default::default()
        };
        self.gt.images.push(image.clone());
        self.pred.images.push(image);
        for o in &s.objects {
            Self::push(&mut self.gt, s.id, self.classes[o.label].source_id, &o.mask);
        }
    }

    /// Adds the predicted segments `(class, mask)` of an image added with
    /// [`add_ground_truth`](Self::add_ground_truth).
    pub fn add_prediction(&mut self, image_id: u64, segments: &[(usize, BinaryMask)]) {
        for (label, m) in segments {
            Self::push(&mut self.pred, image_id, self.classes[*label].source_id, m);
        }
    }

    /// The two data sets (ground truth, predictions).
    pub fn finish(self) -> (PanopticDataset, PanopticDataset) {
        (PanopticDataset::from_dataset(&self.gt), PanopticDataset::from_dataset(&self.pred))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpf_data::Object;
    use mpf_model::model::RgbImage;

    fn rect(y0: usize, x0: usize, h: usize, w: usize) -> BinaryMask {
        let mut m = BinaryMask { height: 20, width: 20, data: vec![false; 400] };
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                m.data[y * 20 + x] = true;
            }
        }
        m
    }

    #[test]
    fn in_memory_ground_truth_and_predictions_by_hand() {
        let classes = vec![
            ClassInfo { name: "box".into(), is_thing: true, source_id: 1 },
            ClassInfo { name: "sky".into(), is_thing: false, source_id: 5 },
        ];
        let sample = Sample {
            id: 9,
            file: "a.png".into(),
            image: RgbImage { height: 20, width: 20, pixels: vec![0; 1200] },
            objects: vec![Object { label: 1, mask: rect(0, 0, 10, 20) }, Object { label: 0, mask: rect(12, 2, 5, 5) }],
        };
        let mut b = PanopticBuilder::new(&classes);
        b.add_ground_truth(&sample);
        // Sky exact (IoU 1); the box shifted by one column: 20 pixels shared, and the 5 predicted
        // pixels on unlabelled ground truth (void) leave the union, as in panopticapi: 20/25.
        b.add_prediction(9, &[(1, rect(0, 0, 10, 20)), (0, rect(12, 3, 5, 5))]);
        let (gt, pred) = b.finish();
        let m = evaluate(gt, pred).unwrap();
        assert_eq!(m.images, 1);
        let sky = m.per_category[&5];
        assert!((sky[0] - 100.0).abs() < 1e-9);
        let bx = m.per_category[&1];
        assert!((bx[1] - 80.0).abs() < 1e-9 && (bx[2] - 100.0).abs() < 1e-9, "{bx:?}");
        assert!((m.all.pq.unwrap() - 90.0).abs() < 1e-9);
        assert_eq!((m.things.n, m.stuff.n), (1, 1));
        assert!(!m.table().is_empty());
    }
}
