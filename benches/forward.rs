//! Forward-pass timing of the tiny test model and the COCO R50 model on every compiled-in backend.
//!
//! `cargo bench --bench forward [--features wgpu]` (or `cargo xtask bench`) prints one JSON object
//! per (model, backend) with the median of several timed runs after warm-up, plus the ratio of
//! each backend's median to flex's measured in the same run.

use std::time::Instant;

use burn::prelude::*;
use mpformer::model::Mask2Former;
use mpformer::train::config::{self, ExperimentConfig};
use serde_json::json;

fn load(rel: &str) -> ExperimentConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(rel);
    config::load(Some(&path), &[]).expect("shipped config")
}

/// Median milliseconds of `runs` synchronised forward passes after `warmup` untimed ones.
fn time_forward<B: Backend>(
    cfg: &ExperimentConfig,
    size: [usize; 2],
    warmup: usize,
    runs: usize,
    device: &B::Device,
) -> f64 {
    B::seed(device, 0);
    let model: Mask2Former<B> = cfg.model.init(device).expect("valid config");
    let x = Tensor::<B, 4>::random([1, 3, size[0], size[1]], burn::tensor::Distribution::Normal(0.0, 1.0), device);
    let once = || {
        let t = Instant::now();
        let out = model.forward(x.clone());
        let _ = out.last_matching().mask_logits.into_data();
        t.elapsed().as_secs_f64() * 1e3
    };
    for _ in 0..warmup {
        once();
    }
    let mut ms: Vec<f64> = (0..runs).map(|_| once()).collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn main() {
    let cases = [
        ("tiny", "synthetic/tiny_mask2former.toml", [128, 128], 2, 9),
        ("coco_r50", "coco/instance/mask2former_r50.toml", [256, 320], 1, 3),
    ];
    for (name, rel, size, warmup, runs) in cases {
        let cfg = load(rel);
        let flex = time_forward::<burn::backend::Flex>(&cfg, size, warmup, runs, &Default::default());
        println!(
            "{}",
            json!({"model": name, "size": size, "backend": "flex", "median_ms": flex, "ratio_to_flex": 1.0})
        );
        #[cfg(feature = "wgpu")]
        {
            let dev = burn::backend::wgpu::WgpuDevice::default();
            let w = time_forward::<burn::backend::Wgpu>(&cfg, size, warmup, runs, &dev);
            println!(
                "{}",
                json!({"model": name, "size": size, "backend": "wgpu", "median_ms": w, "ratio_to_flex": w / flex})
            );
        }
        #[cfg(feature = "cuda")]
        {
            let dev = burn::backend::cuda::CudaDevice::new(0);
            let c = time_forward::<burn::backend::Cuda>(&cfg, size, warmup, runs, &dev);
            println!(
                "{}",
                json!({"model": name, "size": size, "backend": "cuda", "median_ms": c, "ratio_to_flex": c / flex})
            );
        }
    }
}
