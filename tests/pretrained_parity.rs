//! Released-checkpoint formats against their references (`scripts/parity/make_swin_m2f_fixture.py`):
//!
//! - `tests/fixtures/hf_swin_tiny/`: a tiny random transformers Mask2Former with a Swin backbone,
//!   saved with `save_pretrained` (weights and `config.json`), and every intermediate output;
//! - the same weights under the original Mask2Former / MP-Former (detectron2) names, as a pickled
//!   model-zoo `.pkl` and as a `torch.save` `.pth`, with an MP-Former label embedding;
//! - `tests/fixtures/hf_tiny/detectron2.pth`: the ResNet fixture under detectron2 names.
//!
//! Every format must reproduce the transformers outputs within 1e-4 (max abs).

mod common;

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use common::*;
use mpformer::import::{ImportError, Source, detect_backbone, hf_config, import};
use mpformer::model::Mask2Former;
use mpformer::model::backbone::BackboneKind;
use mpformer::train::config;

const TOL: f32 = 1e-4;

fn swin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_swin_tiny").join(name)
}

fn resnet(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny").join(name)
}

/// The Swin model of the fixture, built from its `config.json`, with `file` imported.
fn swin_model<B: Backend>(file: &str, source: Source, device: &B::Device) -> (Mask2Former<B>, usize) {
    let arch = hf_config(&swin("config.json")).unwrap();
    B::seed(device, 0);
    let model = arch.model.init::<B>(device).unwrap();
    let (model, report) = import(model, &swin(file), source, device).unwrap();
    if source == Source::Detectron2 {
        let label = report.label_embedding.expect("the fixture carries MP-Former's label embedding");
        assert_eq!(label.shape, [5, 32]);
        assert!(report.ignored.iter().all(|k| k.ends_with("relative_position_index") || k == "criterion.empty_weight"));
        assert_eq!(report.ignored.len(), 9, "8 blocks' relative-position index and the criterion weights");
    }
    (model, report.loaded)
}

/// Checks backbone, pixel decoder and all predictions; returns the worst difference.
fn check_all<B: Backend>(model: &Mask2Former<B>, r: &Reference, device: &B::Device) -> f32 {
    r.check_model(model, device).0
}

#[test]
fn config_json_describes_the_fixture() {
    let arch = hf_config(&swin("config.json")).unwrap();
    let m = &arch.model;
    assert_eq!(m.backbone.kind, BackboneKind::Swin);
    let s = &m.backbone.swin;
    assert_eq!((s.embed_dim, s.window_size, s.patch_size), (8, 4, 4));
    assert_eq!((s.depths.as_slice(), s.num_heads.as_slice()), ([2, 2, 2, 2].as_slice(), [1, 2, 2, 4].as_slice()));
    assert_eq!((s.mlp_ratio, s.drop_path_rate), (2.0, 0.0));
    assert_eq!(m.num_classes, 5);
    assert_eq!(arch.class_names, ["circle", "square", "triangle", "ring", "star"]);
    assert_eq!((m.pixel_decoder.conv_dim, m.pixel_decoder.encoder_layers, m.pixel_decoder.ffn_dim), (32, 2, 64));
    assert_eq!((m.decoder.hidden_dim, m.decoder.num_queries, m.decoder.num_layers, m.decoder.ffn_dim), (32, 10, 9, 64));
}

#[test]
fn hf_swin_mask2former_matches_every_output_on_flex() {
    let device = Default::default();
    let (model, loaded) = swin_model::<Flex>("model.safetensors", Source::HuggingFace, &device);
    // 424 tensors in the file less SwinModel's unused final norm (2) and the criterion weights: 421,
    // of which the 9 decoder layers' packed cross-attention `in_proj_{weight,bias}` each feed three
    // mpf parameters (q, k, v): 421 + 9 × 4 = 457 parameter tensors.
    assert_eq!(loaded, 457);
    let worst = check_all(&model, &Reference::load(&swin("reference.safetensors"), TOL), &device);
    eprintln!("hf swin: worst max abs diff {worst:e}");
}

#[test]
fn detectron2_pkl_and_pth_match_their_transformers_twin() {
    let device = Default::default();
    let r = Reference::load(&swin("reference.safetensors"), TOL);
    for file in ["detectron2.pkl", "detectron2.pth"] {
        let (model, loaded) = swin_model::<Flex>(file, Source::Detectron2, &device);
        // 363 tensors less 8 relative-position indices, the criterion weights and MP-Former's label
        // embedding (the pilot is off): 353, with packed q/k/v in the 9 decoder self- and
        // cross-attentions and the 8 Swin blocks (+4 each): 353 + 4 × (9 + 9 + 8) = 457.
        assert_eq!(loaded, 457, "{file}");
        let worst = check_all(&model, &r, &device);
        eprintln!("{file}: worst max abs diff {worst:e}");
    }
}

#[test]
fn detectron2_resnet_checkpoint_matches_the_resnet_fixture() {
    let device = Default::default();
    let cfg = config::load(Some(&resnet("mpf.toml")), &[]).unwrap();
    Flex::seed(&device, 0);
    let model = cfg.model.init::<Flex>(&device).unwrap();
    let (model, report) = import(model, &resnet("detectron2.pth"), Source::Detectron2, &device).unwrap();
    assert!(report.label_embedding.is_none());
    let worst = check_all(&model, &Reference::load(&resnet("reference.safetensors"), TOL), &device);
    eprintln!("detectron2 resnet: worst max abs diff {worst:e}");
}

#[test]
fn the_backbone_is_told_by_the_tensors_and_a_mismatch_is_named() {
    let store = mpformer::import::TensorStore::from_safetensors(&swin("model.safetensors")).unwrap();
    assert_eq!(detect_backbone(&store, Source::HuggingFace), Some(BackboneKind::Swin));
    let store = mpformer::import::TensorStore::from_detectron2(&resnet("detectron2.pth")).unwrap();
    assert_eq!(detect_backbone(&store, Source::Detectron2), Some(BackboneKind::Resnet));

    let device = Default::default();
    let cfg = config::load(Some(&resnet("mpf.toml")), &[]).unwrap();
    let model = cfg.model.init::<Flex>(&device).unwrap();
    let err = import(model, &swin("detectron2.pkl"), Source::Detectron2, &device).unwrap_err();
    assert!(matches!(err, ImportError::Mismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("detectron2.pkl") && msg.contains("Swin backbone") && msg.contains("model.backbone.kind"),
        "{msg}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn hf_swin_mask2former_matches_on_wgpu() {
    let device = Default::default();
    let (model, _) = swin_model::<burn::backend::Wgpu>("model.safetensors", Source::HuggingFace, &device);
    let worst = check_all(&model, &Reference::load(&swin("reference.safetensors"), TOL), &device);
    eprintln!("wgpu hf swin: worst max abs diff {worst:e}");
}
