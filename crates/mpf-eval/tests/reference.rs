//! The evaluators against the reference implementations' numbers on committed fixtures
//! (`scripts/fixtures/make_eval_fixtures.sh`): pycocotools 2.0.10 for mask and box AP,
//! torchmetrics 1.9.0 for PQ, detectron2's mIoU definitions in numpy.

use std::path::PathBuf;

use mpf_eval::coco::{self, IouKind, METRIC_NAMES};
use mpf_eval::panoptic;
use mpf_eval::semantic::ConfusionMatrix;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eval").join(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

#[test]
fn mask_and_box_ap_equal_pycocotools() {
    let expected = json("instances_expected.json");
    for (kind, key) in [(IouKind::Segm, "segm"), (IouKind::Bbox, "bbox")] {
        let m = coco::evaluate_files(&fixture("instances_gt.json"), &fixture("instances_results.json"), kind).unwrap();
        let want: Vec<f64> = expected[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (name, w) in METRIC_NAMES.iter().zip(&want) {
            let got = m.stats[*name];
            assert!((got - w).abs() < 1e-6, "{key} {name}: {got} vs pycocotools {w}");
        }
        assert_eq!(m.detections, 10);
    }
}

#[test]
fn results_written_by_mpf_score_like_the_file() {
    // Decode the fixture's results, re-encode them through mpf's writer and score again.
    let rows: Vec<coco::ResultRow> =
        serde_json::from_str(&std::fs::read_to_string(fixture("instances_results.json")).unwrap()).unwrap();
    let again: Vec<coco::ResultRow> = rows
        .iter()
        .map(|r| coco::ResultRow { segmentation: coco::encode(&coco::decode(&r.segmentation).unwrap()), ..r.clone() })
        .collect();
    assert_eq!(again, rows, "mpf's RLE strings equal pycocotools'");
    let gt = coco::load_ground_truth(&fixture("instances_gt.json")).unwrap();
    let m = coco::evaluate_segm(gt, &again, &[]).unwrap();
    let want = json("instances_expected.json")["segm"][0].as_f64().unwrap();
    assert!((m.ap() - want).abs() < 1e-6);
    // No detection at all: 0 AP and recall where there is ground truth.
    let gt = coco::load_ground_truth(&fixture("instances_gt.json")).unwrap();
    let m = coco::evaluate_segm(gt, &[], &[]).unwrap();
    assert!(m.ap() <= 0.0 && m.stats["AR100"] <= 0.0, "{:?}", m.stats);
}

#[test]
fn pq_equals_torchmetrics() {
    let expected = json("panoptic_expected.json");
    let gt = panoptic::load(&fixture("panoptic_gt.json"), None).unwrap();
    let pred = panoptic::load(&fixture("panoptic_pred.json"), None).unwrap();
    let m = panoptic::evaluate(gt, pred).unwrap();
    let all: Vec<f64> = expected["all"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let got = [m.all.pq.unwrap(), m.all.sq.unwrap(), m.all.rq.unwrap()];
    for (g, w) in got.iter().zip(&all) {
        assert!((g / 100.0 - w).abs() < 1e-6, "{got:?} vs torchmetrics {all:?}");
    }
    // Per class (category ids 1, 2, 10, 11 in torchmetrics' sorted order), and the splits as
    // means over their classes.
    let per: Vec<Vec<f64>> = expected["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    for (id, want) in [1u64, 2, 10, 11].iter().zip(&per) {
        let g = m.per_category[id];
        for (a, b) in g.iter().zip(want) {
            assert!((a / 100.0 - b).abs() < 1e-6, "category {id}: {g:?} vs {want:?}");
        }
    }
    assert!((m.things.pq.unwrap() / 100.0 - (per[0][0] + per[1][0]) / 2.0).abs() < 1e-6);
    assert!((m.stuff.pq.unwrap() / 100.0 - (per[2][0] + per[3][0]) / 2.0).abs() < 1e-6);
    assert_eq!(m.images, 2);
}

#[test]
fn miou_equals_the_detectron2_definitions() {
    let expected = json("semantic_expected.json");
    let mut cm = ConfusionMatrix::new(4, 255);
    for i in 0..3 {
        let read = |n: &str| -> Vec<u32> {
            image::open(fixture(&format!("semantic_{n}_{i}.png")))
                .unwrap()
                .to_luma8()
                .into_raw()
                .into_iter()
                .map(u32::from)
                .collect()
        };
        cm.add(&read("gt"), &read("pred"), &format!("image {i}")).unwrap();
    }
    let m = cm.metrics();
    for (got, key) in [(m.miou, "mIoU"), (m.fwiou, "fwIoU"), (m.macc, "mACC"), (m.pacc, "pACC")] {
        assert!((got - expected[key].as_f64().unwrap()).abs() < 1e-6, "{key}: {got} vs {}", expected[key]);
    }
    for (g, w) in m.per_class_iou.iter().zip(expected["per_class_iou"].as_array().unwrap()) {
        assert!((g.unwrap() - w.as_f64().unwrap()).abs() < 1e-6);
    }
}
