//! The tiny Mask2Former end to end on the CPU backend: shapes, determinism, post-processing.

mod common;

use burn::backend::Flex;
use common::*;
use mpformer::model::postprocess::{ImageGeometry, instance_inference, panoptic_inference, semantic_inference};

type B = Flex;

#[test]
fn forward_shapes_for_every_prediction() {
    let device = Default::default();
    let (cfg, model) = tiny_model::<B>(&device, 0);
    let out = model.forward(input::<B>(2, 96, 128, &device));
    assert_eq!(out.predictions.len(), cfg.model.decoder.num_layers + 1);
    assert_eq!(out.num_extra, 0);
    for p in &out.predictions {
        assert_eq!(p.class_logits.dims(), [2, 10, 6]);
        assert_eq!(p.mask_logits.dims(), [2, 10, 24, 32]);
        assert!(host(p.mask_logits.clone()).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn same_seed_same_outputs_different_seed_different() {
    let device = Default::default();
    let x = input::<B>(1, 64, 64, &device);
    let run = |seed| host(tiny_model::<B>(&device, seed).1.forward(x.clone()).last_matching().mask_logits);
    let (a, b, c) = (run(3), run(3), run(4));
    assert_eq!(a, b);
    assert!(max_abs_diff(&a, &c) > 1e-3);
}

#[test]
fn post_processing_runs_on_model_output() {
    let device = Default::default();
    let (cfg, model) = tiny_model::<B>(&device, 1);
    let out = model.forward(input::<B>(1, 64, 96, &device)).last_matching();
    let cls = out.class_logits.reshape([10, 6]);
    let masks = out.mask_logits.reshape([10, 16, 24]);
    let geo = ImageGeometry { padded: [64, 96], image: [60, 90], output: [120, 180] };
    let sem = semantic_inference(cls.clone(), masks.clone(), geo);
    assert_eq!(sem.scores.dims(), [5, 120, 180]);
    assert_eq!(sem.labels.len(), 120 * 180);
    let inst = instance_inference(cls.clone(), masks.clone(), geo, &cfg.test, None);
    assert_eq!(inst.len(), cfg.test.detections_per_image);
    assert!(inst.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(inst.iter().all(|i| i.mask.len() == 120 * 180 && i.label < 5 && i.query < 10));
    let pan = panoptic_inference(cls, masks, geo, &cfg.test, &[true, true, true, false, false]);
    assert_eq!(pan.ids.len(), 120 * 180);
    for s in &pan.segments {
        assert_eq!(s.area, pan.ids.iter().filter(|&&v| v == s.id).count());
    }
}

#[test]
fn coco_r50_parameter_count_is_the_papers_44m() {
    let cfg = load("coco/instance/mask2former_r50.toml");
    let info = mpformer::train::info::model_info::<B>(&cfg, [800, 1216], &Default::default()).unwrap();
    let m = info.trainable_params as f64 / 1e6;
    assert!((43.5..=44.5).contains(&m), "{m} M");
}
