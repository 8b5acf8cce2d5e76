//! The criterion on a real (tiny) model under autodiff: gradients reach the heads (and the MP
//! class embedding), the matcher assigns every object, and a tiny model overfits two synthetic images
//! with and without mask piloting.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use common::*;
use mpformer::criterion::{Criterion, CriterionStreams, LossConfig};
use mpformer::pilot::forward::{GtObjects, MpFormer, PilotStreams};
use mpformer::pilot::masks::BinaryMask;
use mpformer::train::config::ExperimentConfig;

type AD = Autodiff<Flex>;

/// Two 64×64 images: a few coloured shapes of the tiny config's classes on a textured background.
/// Returns normalised pixels `[2, 3, 64, 64]` and per image (label, mask) pairs.
fn synthetic() -> (Vec<f32>, Vec<Vec<(usize, BinaryMask)>>) {
    let s = 64;
    let shapes: [&[(usize, [usize; 4])]; 2] =
        [&[(0, [8, 8, 28, 30]), (1, [36, 30, 60, 58])], &[(2, [4, 36, 30, 60]), (1, [40, 4, 60, 26])]];
    let colours = [[1.0, -0.8, -0.8], [-0.8, 1.0, -0.8], [-0.8, -0.8, 1.0]];
    let mut pixels = vec![0f32; 2 * 3 * s * s];
    let mut objects = Vec::new();
    for (b, image) in shapes.iter().enumerate() {
        for c in 0..3 {
            for i in 0..s * s {
                pixels[(b * 3 + c) * s * s + i] = ((i * 37 + c * 11 + b * 5) % 17) as f32 / 17.0 - 0.5;
            }
        }
        let mut objs = Vec::new();
        for &(label, [y0, x0, y1, x1]) in image.iter() {
            let data: Vec<bool> =
                (0..s * s).map(|i| (y0..y1).contains(&(i / s)) && (x0..x1).contains(&(i % s))).collect();
            for (i, &on) in data.iter().enumerate() {
                if on {
                    for c in 0..3 {
                        pixels[(b * 3 + c) * s * s + i] = colours[label][c];
                    }
                }
            }
            objs.push((label, BinaryMask { height: s, width: s, data }));
        }
        objects.push(objs);
    }
    (pixels, objects)
}

fn targets(objects: &[Vec<(usize, BinaryMask)>]) -> Vec<GtObjects> {
    objects
        .iter()
        .map(|objs| GtObjects {
            labels: objs.iter().map(|o| o.0).collect(),
            masks: objs.iter().map(|o| o.1.clone()).collect(),
        })
        .collect()
}

fn net(cfg: &ExperimentConfig, device: &burn::backend::flex::FlexDevice) -> MpFormer<AD> {
    AD::seed(device, cfg.seed);
    MpFormer::new(cfg.model.init::<AD>(device).unwrap(), &cfg.pilot, device)
}

fn images(pixels: &[f32], device: &burn::backend::flex::FlexDevice) -> Tensor<AD, 4> {
    Tensor::<AD, 1>::from_data(TensorData::new(pixels.to_vec(), [pixels.len()]), device).reshape([2, 3, 64, 64])
}

#[test]
fn gradients_reach_the_heads_and_the_mp_embedding() {
    let device = Default::default();
    let cfg = load("synthetic/tiny_mpformer.toml");
    let model = net(&cfg, &device);
    let (pixels, objects) = synthetic();
    let gt = targets(&objects);
    let out = model.forward_train(images(&pixels, &device), &gt, &cfg.pilot, &mut PilotStreams::for_step(0, 0));
    let crit = Criterion::new(LossConfig { num_points: 256, ..LossConfig::default() }).unwrap();
    let losses = crit.forward(&out, &gt, &cfg.pilot, &mut CriterionStreams::for_step(0, 0)).unwrap();
    let grads = losses.total().backward();
    let norm =
        |p: &burn::module::Param<Tensor<AD, 2>>| p.grad(&grads).map(|g| g.abs().sum().into_scalar()).unwrap_or(0.0);
    let heads = &model.model.decoder.heads;
    assert!(norm(&heads.class_embed.weight) > 0.0, "class head");
    assert!(heads.mask_embed.iter().all(|l| norm(&l.weight) > 0.0), "mask head");
    assert!(norm(&model.label_enc.as_ref().unwrap().weight) > 0.0, "MP class embedding");
    assert!(norm(&model.model.decoder.query_feat) > 0.0, "matching queries");

    // The matcher assigns every object of both images at every prediction.
    let matching = crit.match_predictions(&out, &gt, &mut CriterionStreams::for_step(0, 0)).unwrap();
    assert_eq!(matching.assignments.len(), 10);
    assert!(matching.assignments.iter().all(|a| a.len() == 2 && a.iter().all(|x| x.len() == 2)));
}

/// The loss must fall below this fraction of its start. The trajectory depends on the CPU's matrix
/// kernels (AVX2 and AVX-512 round differently): the tiny MP-Former ends at 0.101 of its start on
/// an AMD Zen 2 and below 0.1 on AVX-512 machines, while a model that does not learn stays near 1.
const OVERFIT_RATIO: f64 = 0.15;

/// Trains `steps` Adam steps on the two images; returns (first loss, mean of the last 10).
fn overfit(rel: &str, steps: usize) -> (f64, f64) {
    let device = Default::default();
    let cfg = load(rel);
    let mut model = net(&cfg, &device);
    let (pixels, objects) = synthetic();
    let gt = targets(&objects);
    let crit = Criterion::new(LossConfig { num_points: 512, ..LossConfig::default() }).unwrap();
    let mut optim = AdamConfig::new().init();
    let mut history = Vec::new();
    for step in 0..steps as u64 {
        let out = model.forward_train(images(&pixels, &device), &gt, &cfg.pilot, &mut PilotStreams::for_step(0, step));
        let losses = crit.forward(&out, &gt, &cfg.pilot, &mut CriterionStreams::for_step(0, step)).unwrap();
        // Only the matching part's losses are compared, so runs with and without MP are comparable.
        let report = losses.report();
        history
            .push(report.iter().filter(|(k, _)| !k.starts_with("mp_") && *k != "total").map(|(_, v)| v).sum::<f64>());
        let grads = GradientsParams::from_grads(losses.total().backward(), &model);
        model = optim.step(2e-3, model, grads);
    }
    let _ = model.valid();
    let tail = &history[history.len() - 10..];
    (history[0], tail.iter().sum::<f64>() / tail.len() as f64)
}

#[test]
fn tiny_mask2former_overfits_two_images() {
    let (first, last) = overfit("synthetic/tiny_mask2former.toml", 250);
    eprintln!("tiny Mask2Former: matching loss {first:.3} → {last:.3}");
    assert!(last < OVERFIT_RATIO * first, "loss fell from {first} to {last}, less than 85 %");
}

#[test]
fn tiny_mpformer_overfits_two_images() {
    let (first, last) = overfit("synthetic/tiny_mpformer.toml", 250);
    eprintln!("tiny MP-Former: matching loss {first:.3} → {last:.3}");
    assert!(last < OVERFIT_RATIO * first, "loss fell from {first} to {last}, less than 85 %");
}

#[test]
fn appendix_c_baseline_configs_set_their_switches() {
    use mpformer::criterion::MatchingMode;
    let fixed = load("synthetic/tiny_mask2former_fixed_matching.toml");
    assert_eq!((fixed.loss.matching, fixed.loss.layer_consistency_weight), (MatchingMode::FixedLast, 0.0));
    let aux = load("synthetic/tiny_mask2former_layer_consistency.toml");
    assert_eq!((aux.loss.matching, aux.loss.layer_consistency_weight), (MatchingMode::PerPrediction, 1.0));
    assert!(!fixed.pilot.enabled && !aux.pilot.enabled);
}
