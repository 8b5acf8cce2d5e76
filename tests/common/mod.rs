//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use mpformer::model::Mask2Former;
use mpformer::train::config::{self, ExperimentConfig};

/// Path of a file under `configs/`.
pub fn config_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs").join(rel)
}

/// Loads a shipped config.
pub fn load(rel: &str) -> ExperimentConfig {
    config::load(Some(&config_path(rel)), &[]).expect("shipped config loads")
}

/// The tiny Mask2Former, seeded.
pub fn tiny_model<B: Backend>(device: &B::Device, seed: u64) -> (ExperimentConfig, Mask2Former<B>) {
    let cfg = load("synthetic/tiny_mask2former.toml");
    B::seed(device, seed);
    let model = cfg.model.init::<B>(device).expect("tiny config is valid");
    (cfg, model)
}

/// A deterministic input batch `[B, 3, H, W]` in roughly normalised range.
pub fn input<B: Backend>(b: usize, h: usize, w: usize, device: &B::Device) -> Tensor<B, 4> {
    let n = b * 3 * h * w;
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device).reshape([b, 3, h, w])
}

/// Flattens a float tensor to a host vector.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Largest absolute difference; panics on any non-finite value.
#[allow(unused_imports)]
pub use mpformer::model::testing::max_abs_diff;
