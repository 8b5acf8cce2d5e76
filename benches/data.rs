//! Data-loading throughput against the training step it feeds: the synthetic set at the tiny
//! config's size through the LSJ loader with 1 and 2 workers, next to one tiny MP-Former training
//! step (forward with MP, criterion, backward) on flex with the same batch size, measured in the
//! same run. `loader_ms_per_batch / train_step_ms` well below 1 means the model never waits.
//!
//! `cargo bench --bench data` (or `cargo xtask bench`) prints JSON lines.

use std::sync::Arc;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use mpformer::criterion::{Criterion, CriterionStreams};
use mpformer::data::loader::{Loader, plan};
use mpformer::data::synth::SynthDataset;
use mpformer::data::{BinaryMask, Dataset};
use mpformer::pilot::forward::{GtObjects, MpFormer, PilotStreams};
use mpformer::train::config;
use serde_json::json;

type AD = Autodiff<Flex>;

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synthetic/tiny_mpformer.toml");
    let cfg = config::load(Some(&path), &[]).expect("shipped config");
    let bs = cfg.data.batch_size;
    let data: Arc<dyn Dataset> = Arc::new(SynthDataset::new(0, 0, 64, cfg.data.synthetic_size));
    let steps = 24u64;
    let p = plan(&(0..64).collect::<Vec<_>>(), bs, 0, 0, steps);
    let mut loader_ms = Vec::new();
    for workers in [1, 2] {
        let t = Instant::now();
        let batches: Vec<_> = Loader::new(data.clone(), p.clone(), cfg.data.train_augment(), 32, 0, workers, 2)
            .map(|b| b.expect("synthetic data loads"))
            .collect();
        let ms = t.elapsed().as_secs_f64() * 1e3 / batches.len() as f64;
        loader_ms.push(ms);
        println!("{}", json!({"bench": "loader", "workers": workers, "batch_size": bs, "ms_per_batch": ms}));
    }

    // One batch, trained repeatedly.
    let device = Default::default();
    let batch = Loader::new(data, p[..1].to_vec(), cfg.data.train_augment(), 32, 0, 1, 1).next().unwrap().unwrap();
    AD::seed(&device, 0);
    let model = MpFormer::<AD>::new(cfg.model.init(&device).unwrap(), &cfg.pilot, &device);
    let crit = Criterion::new(cfg.loss.clone()).unwrap();
    let images = batch.images_tensor::<AD>(&cfg.input, &device).unwrap().images;
    let gt: Vec<GtObjects> = batch
        .objects
        .iter()
        .map(|objs| GtObjects {
            labels: objs.iter().map(|o| o.label).collect(),
            masks: objs.iter().map(|o| o.mask.clone()).collect::<Vec<BinaryMask>>(),
        })
        .collect();
    let mut ms = Vec::new();
    for step in 0..6u64 {
        let t = Instant::now();
        let out = model.forward_train(images.clone(), &gt, &cfg.pilot, &mut PilotStreams::for_step(0, step));
        let losses = crit.forward(&out, &gt, &cfg.pilot, &mut CriterionStreams::for_step(0, step)).unwrap();
        let _grads = losses.total().backward();
        if step > 0 {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    let step_ms = ms[ms.len() / 2];
    println!(
        "{}",
        json!({
            "bench": "train_step", "model": "tiny_mpformer", "backend": "flex", "batch_size": bs,
            "median_ms": step_ms,
            "loader_to_step_ratio_1_worker": loader_ms[0] / step_ms,
            "loader_to_step_ratio_2_workers": loader_ms[1] / step_ms,
        })
    );
}
