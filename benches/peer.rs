//! mpf's half of the side-by-side benchmark against PyTorch (`cargo xtask bench --peer`, which runs
//! this and `benches/peer/torch_peer.py` in alternating rounds and writes `benches/results.md`).
//!
//! One process measures one case in one mode, so its peak resident memory belongs to that case:
//!
//! ```text
//! cargo bench --bench peer -- --case tiny --mode train --steps 20 [--batch-out DIR] [--threads N]
//! ```
//!
//! - `train`: a whole training step (MP-Former training forward or plain Mask2Former, criterion,
//!   backward, global clipping and the AdamW groups, exactly as `mpf-train train` does), timed per
//!   phase: backbone, pixel decoder, decoder, matcher, losses, backward, optimiser.
//! - `infer`: the inference forward (model only, last prediction read back).
//! - `modules`: forward and backward of the backbone, the pixel decoder and the decoder, each on
//!   detached inputs with a plain sum as the loss (where the backward pass spends its time).
//!
//! Every step trains on the same batch of synthetic shapes (LSJ-augmented at the case's size);
//! `--batch-out DIR` writes it as `DIR/CASE.safetensors` (normalised images, padded masks, labels)
//! for the PyTorch side. Output: one JSON object on stdout with the median of every phase over
//! the timed steps (after two warm-up steps), the trainable parameter count and the peak resident
//! set size (`VmHWM`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use mpformer::criterion::{Criterion, CriterionStreams};
use mpformer::data::Dataset;
use mpformer::data::batch::Batch;
use mpformer::data::config::AugmentKind;
use mpformer::data::loader::{Loader, plan};
use mpformer::data::synth::SynthDataset;
use mpformer::model::model::trainable_params;
use mpformer::pilot::forward::{GtObjects, MpFormer, PilotStreams};
use mpformer::train::config::{self, ExperimentConfig};
use mpformer::train::solver::{clip_global, param_groups, split_grads};
use mpformer::train::train::optimizers;
use serde_json::json;

/// A benchmark case: config, overrides, image size and batch.
struct Case {
    name: &'static str,
    config: &'static str,
    overrides: &'static [&'static str],
    size: usize,
    batch: usize,
}

const CASES: &[Case] = &[
    Case { name: "tiny", config: "synthetic/tiny_mask2former.toml", overrides: &[], size: 128, batch: 4 },
    Case {
        name: "tiny_mpformer_off",
        config: "synthetic/tiny_mpformer.toml",
        overrides: &["pilot.enabled=false"],
        size: 128,
        batch: 4,
    },
    Case { name: "tiny_mpformer", config: "synthetic/tiny_mpformer.toml", overrides: &[], size: 128, batch: 4 },
    Case {
        name: "tiny_q100_mpformer_off",
        config: "synthetic/tiny_mpformer.toml",
        overrides: &["pilot.enabled=false", "model.decoder.num_queries=100"],
        size: 128,
        batch: 4,
    },
    Case {
        name: "tiny_q100_mpformer",
        config: "synthetic/tiny_mpformer.toml",
        overrides: &["model.decoder.num_queries=100"],
        size: 128,
        batch: 4,
    },
    // ResNet-50 Mask2Former at the paper's widths (256 / 2048 FFN, 6 encoder layers, 100 queries,
    // 12544 points), on the synthetic shapes at 384 px.
    Case { name: "r50", config: "coco/instance/mask2former_r50.toml", overrides: &[], size: 384, batch: 2 },
    Case {
        name: "r50_mpformer_off",
        config: "coco/instance/mpformer_r50_12ep.toml",
        overrides: &["pilot.enabled=false"],
        size: 384,
        batch: 2,
    },
    Case { name: "r50_mpformer", config: "coco/instance/mpformer_r50_12ep.toml", overrides: &[], size: 384, batch: 2 },
];

type B = burn::backend::Flex;
type AD = Autodiff<B>;

struct Args {
    case: String,
    mode: String,
    steps: usize,
    batch_out: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args { case: "tiny".into(), mode: "train".into(), steps: 20, batch_out: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--case" => args.case = value(),
            "--mode" => args.mode = value(),
            "--steps" => args.steps = value().parse().expect("--steps N"),
            "--batch-out" => args.batch_out = Some(PathBuf::from(value())),
            "--threads" => {
                let n: usize = value().parse().expect("--threads N");
                rayon::ThreadPoolBuilder::new().num_threads(n).build_global().expect("rayon pool set once");
            }
            "--list" => {
                for c in CASES {
                    println!("{}", c.name);
                }
                std::process::exit(0);
            }
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// The case's batch: the first batch of the synthetic training plan at the case's size.
fn batch_for(cfg: &ExperimentConfig, case: &Case) -> Batch {
    let data: Arc<dyn Dataset> = Arc::new(SynthDataset::new(cfg.seed, 0, 64, case.size));
    let mut data_cfg = cfg.data.clone();
    (data_cfg.augment, data_cfg.crop_size, data_cfg.min_scale, data_cfg.max_scale) =
        (AugmentKind::Lsj, [case.size, case.size], 0.5, 1.5);
    let augment = data_cfg.train_augment();
    let p = plan(&(0..64).collect::<Vec<_>>(), case.batch, cfg.seed, 0, 1);
    let mut loader = Loader::new(data, p, augment, cfg.input.size_divisibility, cfg.seed, 1, 1);
    loader.next().expect("one batch").expect("synthetic data loads")
}

/// Writes the batch for the PyTorch side: `pixel_values [B,3,H,W]`, and per image
/// `mask_labels_{b} [G,H,W]` (0/1 float) and `class_labels_{b} [G]` (int64).
fn write_batch(path: &std::path::Path, cfg: &ExperimentConfig, batch: &Batch) {
    use safetensors::tensor::{Dtype, TensorView};
    let images = batch.images_tensor::<B>(&cfg.input, &Default::default()).expect("valid images").images;
    let dims = images.dims();
    let pixels: Vec<f32> = images.into_data().to_vec().expect("f32");
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        vec![("pixel_values".into(), Dtype::F32, dims.to_vec(), pixels.iter().flat_map(|v| v.to_le_bytes()).collect())];
    let [h, w] = batch.padded;
    for (b, objs) in batch.objects.iter().enumerate() {
        let masks: Vec<u8> =
            objs.iter().flat_map(|o| o.mask.data.iter().flat_map(|&v| (v as u8 as f32).to_le_bytes())).collect();
        owned.push((format!("mask_labels_{b}"), Dtype::F32, vec![objs.len(), h, w], masks));
        let labels: Vec<u8> = objs.iter().flat_map(|o| (o.label as i64).to_le_bytes()).collect();
        owned.push((format!("class_labels_{b}"), Dtype::I64, vec![objs.len()], labels));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, bytes)| (n.clone(), TensorView::new(*d, s.clone(), bytes).expect("consistent tensor")))
        .collect();
    std::fs::create_dir_all(path.parent().expect("a file in a folder")).expect("create batch folder");
    safetensors::serialize_to_file(views, None, path).expect("write batch");
}

fn fwd_key(name: &str) -> &'static str {
    match name {
        "backbone" => "backbone_forward",
        "pixel_decoder" => "pixel_decoder_forward",
        _ => "decoder_forward",
    }
}

fn bwd_key(name: &str) -> &'static str {
    match name {
        "backbone" => "backbone_backward",
        "pixel_decoder" => "pixel_decoder_backward",
        _ => "decoder_backward",
    }
}

fn sync() {
    B::sync(&Default::default()).expect("device sync");
}

fn main() {
    mpformer::train::keep_freed_memory();
    let args = parse_args();
    let case = CASES.iter().find(|c| c.name == args.case).unwrap_or_else(|| panic!("no case {}", args.case));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(case.config);
    let overrides: Vec<String> = case.overrides.iter().map(|s| s.to_string()).collect();
    let mut cfg = config::load(Some(&path), &overrides).expect("shipped config");
    cfg.data.batch_size = case.batch;
    let batch = batch_for(&cfg, case);
    if let Some(dir) = &args.batch_out {
        write_batch(&dir.join(format!("{}.safetensors", case.name)), &cfg, &batch);
    }
    let device = Default::default();
    AD::seed(&device, cfg.seed);
    let mut model = MpFormer::<AD>::new(cfg.model.init::<AD>(&device).expect("valid config"), &cfg.pilot, &device);
    let params = trainable_params(&model.model);
    let objects: usize = batch.objects.iter().map(Vec::len).sum();
    let mut phases: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let warmup = 2;
    let threads = rayon::current_num_threads();

    match args.mode.as_str() {
        "train" => {
            let criterion = Criterion::new(cfg.loss.clone()).expect("valid loss config");
            let groups = param_groups(&model, &cfg.solver);
            let mut optims = optimizers::<B>(&cfg, &groups);
            let gt: Vec<GtObjects> = batch
                .objects
                .iter()
                .map(|o| GtObjects {
                    labels: o.iter().map(|o| o.label).collect(),
                    masks: o.iter().map(|o| o.mask.clone()).collect(),
                })
                .collect();
            for step in 0..warmup + args.steps {
                let mut t = Instant::now();
                let mut lap = |name: &'static str, phases: &mut BTreeMap<&str, Vec<f64>>| {
                    sync();
                    if step >= warmup {
                        phases.entry(name).or_default().push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    t = Instant::now();
                };
                let t_step = Instant::now();
                let images = batch.images_tensor::<AD>(&cfg.input, &device).expect("valid images").images;
                lap("input", &mut phases);
                // As MpFormer::forward_train does before the backbone.
                mpformer::model::model::join_parameter_graphs(&model);
                let features = model.model.backbone.forward(images);
                lap("backbone", &mut phases);
                let pixel = model.model.pixel_decoder.forward(&features);
                lap("pixel_decoder", &mut phases);
                let out =
                    model.decode_train(pixel, &gt, &cfg.pilot, &mut PilotStreams::for_step(cfg.seed, step as u64));
                lap("decoder", &mut phases);
                let mut streams = CriterionStreams::for_step(cfg.seed, step as u64);
                let matching = criterion.match_predictions(&out, &gt, &mut streams).expect("matching");
                lap("matcher", &mut phases);
                let losses = criterion.losses(&out, &gt, &cfg.pilot, matching, &mut streams).expect("losses");
                let total = losses.total();
                lap("losses", &mut phases);
                let grads = GradientsParams::from_grads(total.backward(), &model);
                lap("backward", &mut phases);
                let mut grads = grads;
                clip_global(&model, &mut grads, cfg.solver.clip_norm);
                for ((opt, g), grads) in optims.iter_mut().zip(&groups).zip(split_grads(&model, grads, &groups)) {
                    model = opt.step(cfg.solver.base_lr * g.lr_multiplier, model, grads);
                }
                lap("optimizer", &mut phases);
                if step >= warmup {
                    phases.entry("step").or_default().push(t_step.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        "infer" => {
            let inner = model.valid().model;
            let images = batch.images_tensor::<B>(&cfg.input, &device).expect("valid images").images;
            for step in 0..warmup + args.steps {
                let t_step = Instant::now();
                let mut t = Instant::now();
                let mut lap = |name: &'static str, phases: &mut BTreeMap<&str, Vec<f64>>| {
                    sync();
                    if step >= warmup {
                        phases.entry(name).or_default().push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    t = Instant::now();
                };
                let features = inner.backbone.forward(images.clone());
                lap("backbone", &mut phases);
                let pixel = inner.pixel_decoder.forward(&features);
                lap("pixel_decoder", &mut phases);
                let out = inner.decode(pixel, None);
                let _ = out.last_matching().mask_logits.into_data();
                lap("decoder", &mut phases);
                if step >= warmup {
                    phases.entry("step").or_default().push(t_step.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        "modules" => {
            // Forward and backward of each part alone, on detached inputs: where the backward
            // pass spends its time.
            let images = batch.images_tensor::<AD>(&cfg.input, &device).expect("valid images").images;
            let m = &model.model;
            let sum4 = |t: Tensor<AD, 4>| t.sum();
            let feats = m.backbone.forward(images.clone());
            let detach = |t: &Tensor<AD, 4>| t.clone().detach().require_grad();
            let feats = mpformer::model::backbone::BackboneFeatures {
                res2: detach(&feats.res2),
                res3: detach(&feats.res3),
                res4: detach(&feats.res4),
                res5: detach(&feats.res5),
            };
            let pixel = m.pixel_decoder.forward(&feats);
            let ms: Vec<_> = pixel.multi_scale_features.iter().map(detach).collect();
            let mf = detach(&pixel.mask_features);
            let parts: [(&str, &dyn Fn() -> Tensor<AD, 1>); 3] = [
                ("backbone", &|| {
                    let f = m.backbone.forward(images.clone());
                    sum4(f.res2) + sum4(f.res3) + sum4(f.res4) + sum4(f.res5)
                }),
                ("pixel_decoder", &|| {
                    let p = m.pixel_decoder.forward(&feats);
                    p.multi_scale_features.into_iter().fold(sum4(p.mask_features), |a, t| a + sum4(t))
                }),
                ("decoder", &|| {
                    let o = m.decoder.forward(&ms, mf.clone(), None);
                    o.predictions
                        .into_iter()
                        .fold(Tensor::zeros([1], &device), |a, p| a + p.class_logits.sum() + sum4(p.mask_logits))
                }),
            ];
            for step in 0..warmup + args.steps {
                for (name, f) in &parts {
                    let t = Instant::now();
                    let loss = f();
                    sync();
                    let t_fwd = t.elapsed().as_secs_f64() * 1e3;
                    let t = Instant::now();
                    let _grads = loss.backward();
                    sync();
                    if step >= warmup {
                        phases.entry(fwd_key(name)).or_default().push(t_fwd);
                        phases.entry(bwd_key(name)).or_default().push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
        }
        other => panic!("unknown mode {other} (train, infer or modules)"),
    }
    let medians: BTreeMap<&str, f64> = phases.iter_mut().map(|(k, v)| (*k, median(v))).collect();
    println!(
        "{}",
        json!({
            "side": "mpf", "backend": "flex", "case": case.name, "mode": args.mode, "threads": threads,
            "batch": case.batch, "size": case.size, "objects": objects, "steps": args.steps,
            "trainable_params": params, "median_ms": medians, "peak_rss_mib": peak_rss_mib(),
        })
    );
}
