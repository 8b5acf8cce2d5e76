//! Numerical parity of the Swin backbone with transformers' `SwinBackbone` on a tiny random model
//! (`tests/fixtures/swin_tiny/`, written by `scripts/parity/make_swin_fixture.py`): weights loaded
//! through the checkpoint key table, the four normalised stage outputs within 1e-4 (max abs) on a
//! 70×54 input that exercises patch padding, window padding, shifted-window masks and odd-sized
//! patch merging.

mod common;

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use common::*;
use mpformer::import::{TensorStore, hf_swin_ignorable, hf_swin_key, load_into};
use mpformer::model::swin::SwinConfig;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swin_tiny").join(name)
}

fn parity<B: Backend>(device: &B::Device) -> f32 {
    let cfg = SwinConfig::new()
        .with_embed_dim(8)
        .with_depths(vec![2, 2, 2, 2])
        .with_num_heads(vec![1, 2, 2, 4])
        .with_window_size(4)
        .with_mlp_ratio(2.0)
        .with_drop_path_rate(0.0);
    let store = TensorStore::from_safetensors(&fixture("model.safetensors")).unwrap();
    let (model, report) = load_into(cfg.init::<B>(device), &store, hf_swin_key, hf_swin_ignorable, device).unwrap();
    assert_eq!(report.loaded, 157, "every tensor of the file but SwinModel's unused final norm");
    assert_eq!(report.ignored, ["swin.layernorm.bias", "swin.layernorm.weight"]);
    let reference = TensorStore::from_safetensors(&fixture("reference.safetensors")).unwrap();
    let get = |k: &str| &reference.tensors[k];
    let x = get("pixel_values");
    let images = Tensor::<B, 4>::from_data(TensorData::new(x.data.clone(), x.shape.clone()), device);
    let outputs = model.forward(images);
    let mut worst = 0f32;
    for (s, out) in outputs.into_iter().enumerate() {
        let r = get(&format!("stage{}", s + 1));
        assert_eq!(out.dims().to_vec(), r.shape, "stage {} shape", s + 1);
        let d = max_abs_diff(&host(out), &r.data);
        assert!(d < 1e-4, "stage {}: max abs diff {d}", s + 1);
        worst = worst.max(d);
    }
    worst
}

#[test]
fn swin_backbone_matches_transformers_on_flex() {
    let d = parity::<Flex>(&Default::default());
    println!("flex: worst max abs diff {d:e}");
}

#[cfg(feature = "wgpu")]
#[test]
fn swin_backbone_matches_transformers_on_wgpu() {
    let d = parity::<burn::backend::Wgpu>(&Default::default());
    println!("wgpu: worst max abs diff {d:e}");
}
