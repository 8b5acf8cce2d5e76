//! Numerical parity with Hugging Face transformers' Mask2Former on a tiny random model whose
//! weights, input and outputs were written by `scripts/parity/make_fixture.py` (fixture in
//! `tests/fixtures/hf_tiny/`). Every intermediate output must match within 1e-4 (max abs).

mod common;

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use common::*;
use mpformer::import::{Source, TensorStore, import};
use mpformer::model::Mask2Former;
use mpformer::model::postprocess::{ImageGeometry, select_instances, semantic_inference};
use mpformer::train::config::{self, ExperimentConfig};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny").join(name)
}

fn reference() -> Reference {
    Reference::load(&fixture("reference.safetensors"), TOL)
}

fn imported<B: Backend>(device: &B::Device) -> (ExperimentConfig, Mask2Former<B>) {
    let cfg = config::load(Some(&fixture("mpf.toml")), &[]).unwrap();
    B::seed(device, 0);
    let model = cfg.model.init::<B>(device).unwrap();
    let (model, report) = import(model, &fixture("model.safetensors"), Source::HuggingFace, device).unwrap();
    assert!(report.loaded > 100);
    assert!(report.ignored.iter().all(|k| k.ends_with("num_batches_tracked") || k == "criterion.empty_weight"));
    (cfg, model)
}

#[test]
fn every_intermediate_output_matches_on_flex() {
    let device = Default::default();
    let (cfg, model) = imported::<Flex>(&device);
    let r = reference();
    let (mut worst, out) = r.check_model(&model, &device);

    // Post-processing of the last prediction at twice the input size.
    let last = out.last_matching();
    let cls = last.class_logits.reshape([10, 6]);
    let masks = last.mask_logits.reshape([10, 16, 24]);
    let geo = ImageGeometry { padded: [64, 96], image: [64, 96], output: [128, 192] };
    let sem = semantic_inference(cls.clone(), masks.clone(), geo);
    worst = worst.max(r.check("semantic.scores", sem.scores));
    let ref_labels = r.get("semantic.labels").1;
    let agree = sem.labels.iter().zip(ref_labels).filter(|(a, b)| **a as f32 == **b).count();
    // Argmax may flip only where two class scores tie within float noise.
    assert!(agree as f64 / ref_labels.len() as f64 > 0.999, "{agree}/{}", ref_labels.len());

    let probs = host(burn::tensor::activation::softmax(cls, 1));
    let up = host(mpformer::model::postprocess::resize_to_output(masks, geo));
    let inst = select_instances(&probs, cfg.model.num_classes, &up, 20, None);
    let (rq, rl, rs, ra) =
        (r.get("instance.query").1, r.get("instance.label").1, r.get("instance.score").1, r.get("instance.area").1);
    // The reference lists the top-20 (query, class) pairs by class probability; mpf sorts them by
    // final score. Compare as sets keyed by (query, class).
    for i in 0..20 {
        let m = inst.iter().find(|x| x.query as f32 == rq[i] && x.label as f32 == rl[i]).expect("same top-20 pairs");
        assert!((m.score - rs[i]).abs() < TOL, "instance score {} vs {}", m.score, rs[i]);
        let area = m.mask.iter().filter(|&&b| b).count() as f32;
        assert!((area - ra[i]).abs() <= 2.0, "instance area {area} vs {}", ra[i]);
    }
    eprintln!("worst max-abs difference over all intermediate outputs: {worst:e}");
}

#[cfg(feature = "wgpu")]
#[test]
fn final_logits_match_on_wgpu() {
    use burn::backend::Wgpu;
    let device = burn::backend::wgpu::WgpuDevice::default();
    let (_, model) = imported::<Wgpu>(&device);
    let r = reference();
    let out = model.forward(r.tensor("pixel_values", &device));
    let last = out.predictions.last().unwrap();
    let dc = r.check("prediction.9.class_logits", last.class_logits.clone());
    let dm = r.check("prediction.9.mask_logits", last.mask_logits.clone());
    eprintln!("wgpu final logits: class Δ {dc:e}, mask Δ {dm:e}");
}

#[test]
fn misshaped_and_missing_keys_are_named() {
    let device = Default::default();
    let cfg = config::load(Some(&fixture("mpf.toml")), &[]).unwrap();
    // A model with 11 queries: query_feat and query_embed no longer fit.
    let wrong = config::load(Some(&fixture("mpf.toml")), &["model.decoder.num_queries=11".into()]).unwrap();
    let model = wrong.model.init::<Flex>(&device).unwrap();
    let err = import(model, &fixture("model.safetensors"), Source::HuggingFace, &device).unwrap_err().to_string();
    assert!(
        err.contains("model.transformer_module.queries_features.weight")
            && err.contains("[10, 32]")
            && err.contains("[11, 32]"),
        "{err}"
    );

    // Drop a tensor from the file: the error names it as missing.
    let store = TensorStore::from_safetensors(&fixture("model.safetensors")).unwrap();
    let dir = tempfile_dir();
    let path = dir.join("partial.safetensors");
    let dropped = "model.transformer_module.decoder.layers.3.fc1.bias";
    let kept: Vec<(String, Vec<u8>, Vec<usize>)> = store
        .tensors
        .iter()
        .filter(|(k, _)| k.as_str() != dropped)
        .map(|(k, t)| (k.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(k, b, s)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let model = cfg.model.init::<Flex>(&device).unwrap();
    let err = import(model, &path, Source::HuggingFace, &device).unwrap_err().to_string();
    assert!(err.contains(&format!("missing: `{dropped}`")) && err.contains("decoder.layers.3.linear1.bias"), "{err}");
}

#[test]
fn non_finite_and_integer_weights_are_refused_naming_the_tensor() {
    let device = Default::default();
    let cfg = config::load(Some(&fixture("mpf.toml")), &[]).unwrap();
    let store = TensorStore::from_safetensors(&fixture("model.safetensors")).unwrap();
    let nan_key = "model.transformer_module.decoder.layers.3.fc1.bias";
    let int_key = "model.transformer_module.decoder.layers.2.fc2.bias";
    let mut entries: Vec<(String, safetensors::Dtype, Vec<u8>, Vec<usize>)> = Vec::new();
    for (k, t) in &store.tensors {
        let mut data = t.data.clone();
        if k == nan_key {
            data[1] = f32::NAN;
        }
        if k == int_key {
            let bytes = data.iter().flat_map(|v| (v.round() as i64).to_le_bytes()).collect();
            entries.push((k.clone(), safetensors::Dtype::I64, bytes, t.shape.clone()));
        } else {
            entries.push((
                k.clone(),
                safetensors::Dtype::F32,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = entries
        .iter()
        .map(|(k, d, b, s)| (k.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let dir = tempfile_dir();
    let path = dir.join("broken.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let model = cfg.model.init::<Flex>(&device).unwrap();
    let err = import(model, &path, Source::HuggingFace, &device).unwrap_err().to_string();
    assert!(err.contains(&format!("non-finite: `{nan_key}`")) && err.contains("flat index 1"), "{err}");
    assert!(err.contains(&format!("integer: `{int_key}`")), "{err}");
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mpf-hf-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn torchvision_backbone_import_matches() {
    let device = Default::default();
    let cfg = config::load(Some(&fixture("mpf.toml")), &[]).unwrap();
    let model = cfg.model.init::<Flex>(&device).unwrap();
    let before = host(model.decoder.query_feat.val());
    let (model, report) = import(model, &fixture("resnet_torchvision.pth"), Source::Torchvision, &device).unwrap();
    assert!(report.ignored.contains(&"fc.weight".to_string()));
    // Only the backbone changes.
    assert_eq!(host(model.decoder.query_feat.val()), before);
    let r = reference();
    let f = model.backbone.forward(r.tensor("pixel_values", &device));
    for (i, t) in [f.res2, f.res3, f.res4, f.res5].into_iter().enumerate() {
        r.check(&format!("backbone.res{}", i + 2), t);
    }
}

#[test]
fn trainable_batch_norm_backbone_imports_running_statistics() {
    let device = Default::default();
    let cfg = config::load(Some(&fixture("mpf.toml")), &["model.backbone.norm=\"bn\"".into()]).unwrap();
    let model = cfg.model.init::<Flex>(&device).unwrap();
    let (model, _) = import(model, &fixture("model.safetensors"), Source::HuggingFace, &device).unwrap();
    let r = reference();
    // Without autodiff, Burn's BatchNorm normalises with its running statistics, as eval mode does.
    let f = model.backbone.forward(r.tensor("pixel_values", &device));
    r.check("backbone.res5", f.res5);
}

#[test]
fn input_png_normalises_to_the_reference_pixel_values() {
    let device = Default::default();
    let img = mpformer::train::forward::read_image(&fixture("input.png")).unwrap();
    let cfg = config::load(Some(&fixture("mpf.toml")), &[]).unwrap();
    let batch = mpformer::model::model::ImageBatch::<Flex>::from_images(&[img], &cfg.input, &device).unwrap();
    reference().check("pixel_values", batch.images);
}
