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

/// Reference tensors of a parity fixture (`reference.safetensors`) and the tolerance they are
/// checked to (max abs difference).
pub struct Reference(pub mpformer::import::TensorStore, pub f32);

impl Reference {
    /// Reads `path`.
    pub fn load(path: &std::path::Path, tol: f32) -> Self {
        Self(mpformer::import::TensorStore::from_safetensors(path).unwrap(), tol)
    }
    /// Shape and values of `key`.
    pub fn get(&self, key: &str) -> (&[usize], &[f32]) {
        let t = &self.0.tensors[key];
        (&t.shape, &t.data)
    }
    /// `key` as a tensor on `device`.
    pub fn tensor<B: Backend, const D: usize>(&self, key: &str, device: &B::Device) -> Tensor<B, D> {
        let (shape, data) = self.get(key);
        Tensor::from_data(TensorData::new(data.to_vec(), shape.to_vec()), device)
    }
    /// Asserts that `actual` has `key`'s shape and values within the tolerance; returns the max
    /// abs difference.
    pub fn check<B: Backend, const D: usize>(&self, key: &str, actual: Tensor<B, D>) -> f32 {
        let (shape, data) = self.get(key);
        assert_eq!(actual.dims().to_vec(), shape, "{key}: shape");
        let d = max_abs_diff(&host(actual), data);
        assert!(d < self.1, "{key}: max abs diff {d}");
        d
    }
    /// Checks `model` on the fixture's `pixel_values`: the four backbone features, the
    /// pixel-decoder outputs and all 10 predictions. Returns the worst difference and the output.
    pub fn check_model<B: Backend>(
        &self,
        model: &Mask2Former<B>,
        device: &B::Device,
    ) -> (f32, mpformer::model::decoder::DecoderOutput<B>) {
        let x: Tensor<B, 4> = self.tensor("pixel_values", device);
        let f = model.backbone.forward(x.clone());
        let mut worst = 0f32;
        for (i, t) in [&f.res2, &f.res3, &f.res4, &f.res5].into_iter().enumerate() {
            worst = worst.max(self.check(&format!("backbone.res{}", i + 2), t.clone()));
        }
        let p = model.pixel_decoder.forward(&f);
        for (i, t) in p.multi_scale_features.iter().enumerate() {
            worst = worst.max(self.check(&format!("pixel_decoder.multi_scale.{i}"), t.clone()));
        }
        worst = worst.max(self.check("pixel_decoder.mask_features", p.mask_features.clone()));
        let out = model.forward(x);
        assert_eq!(out.predictions.len(), 10);
        for (i, pred) in out.predictions.iter().enumerate() {
            worst = worst.max(self.check(&format!("prediction.{i}.class_logits"), pred.class_logits.clone()));
            worst = worst.max(self.check(&format!("prediction.{i}.mask_logits"), pred.mask_logits.clone()));
        }
        (worst, out)
    }
}
