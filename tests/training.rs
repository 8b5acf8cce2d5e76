//! End-to-end training on the CPU: a few steps of a very small MP-Former on 64-px synthetic
//! shapes, exact resume, evaluation, prediction, parameter groups, global clipping and the
//! non-finite-loss stop.

mod common;

use std::path::Path;

use burn::backend::Autodiff;
use burn::backend::flex::{Flex, FlexDevice};
use burn::module::Module;
use burn::prelude::*;
use mpformer::pilot::forward::MpFormer;
use mpformer::train::checkpoint;
use mpformer::train::config::{self, ExperimentConfig};
use mpformer::train::device::BackendTask;
use mpformer::train::evaluate::EvalTask;
use mpformer::train::evaluate::Evaluation;
use mpformer::train::layers::{LayerRun, LayersTask};
use mpformer::train::predict::{PredictOptions, PredictTask};
use mpformer::train::report::read_curves;
use mpformer::train::solver::{clip_global, grad_norm, param_groups};
use mpformer::train::train::{StepReport, TrainHook, TrainTask, Trainer, find_checkpoint};

/// The tiny MP-Former, smaller still: 64-px images, 2 decoder layers, batch 2 accumulated twice.
fn micro(extra: &[&str]) -> ExperimentConfig {
    let mut sets: Vec<String> = [
        "data.synthetic_size=64",
        "data.crop_size=[64, 64]",
        "data.synthetic_train=16",
        "data.synthetic_val=3",
        "data.batch_size=2",
        "data.workers=1",
        "solver.accumulate=2",
        "solver.steps=[12, 16]",
        "solver.warmup_iters=3",
        "loss.num_points=128",
        "model.decoder.num_layers=2",
        "pilot.piloted_layers=[0, 1]",
        "model.pixel_decoder.encoder_layers=1",
        "train.log_period=5",
        "train.eval_period=0",
        "train.checkpoint_period=5",
        "train.keep_last=2",
        "train.overlays=1",
        "train.eval_images=2",
        "test.detections_per_image=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::load(Some(&common::config_path("synthetic/tiny_mpformer.toml")), &sets).unwrap()
}

fn train(
    cfg: ExperimentConfig,
    out: &Path,
    resume: Option<&Path>,
) -> anyhow::Result<mpformer::train::train::TrainReport> {
    TrainTask {
        config: cfg,
        output: out.to_path_buf(),
        resume: resume.map(Path::to_path_buf),
        init: None,
        progress: false,
        nodes: None,
    }
    .run::<Flex>(FlexDevice, "flex")
}

fn weights(dir: &Path, cfg: &ExperimentConfig) -> Vec<Vec<f32>> {
    let model = checkpoint::load::<Flex>(dir, cfg, &FlexDevice).unwrap();
    struct Collect(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor<Flex> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<Flex, D>>) {
            self.0.push(p.val().into_data().convert::<f32>().to_vec().unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

#[test]
fn ten_steps_then_resume_ten_equals_twenty_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("straight"), dir.path().join("resumed"));
    let twenty = micro(&["solver.max_iter=20"]);
    let ra = train(twenty.clone(), &a, None).unwrap();
    assert_eq!((ra.start_step, ra.final_step), (0, 20));
    // Two checkpoints kept (steps 15 and 20), the best, the curves and the overlays.
    let kept: Vec<String> = std::fs::read_dir(a.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(kept, ["step_00000015", "step_00000020"]);
    for f in ["loss.png", "eval.png", "eval/metrics.json", "eval/results.json", "config.toml", "best/model.mpk"] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let train_steps: Vec<u64> =
        lines.iter().filter(|l| l["type"] == "train").map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(train_steps, [5, 10, 15, 20]);
    assert!(lines[0]["terms"]["mp_ce_2"].is_number() && lines[0]["terms"]["dice_0"].is_number());
    assert!(lines.iter().any(|l| l["type"] == "eval" && l["step"] == 20));

    // 10 steps, then continue the run to 20 from its folder.
    let rb = train(micro(&["solver.max_iter=10"]), &b, None).unwrap();
    assert_eq!(rb.final_step, 10);
    let rb = train(twenty.clone(), &b, Some(&b)).unwrap();
    assert_eq!((rb.start_step, rb.final_step), (10, 20));
    let (wa, wb) = (
        weights(&a.join("checkpoints/step_00000020"), &twenty),
        weights(&b.join("checkpoints/step_00000020"), &twenty),
    );
    assert_eq!(wa.len(), wb.len());
    assert!(wa == wb, "resumed weights differ from the uninterrupted run");
    // And training moved the weights at all.
    let init = {
        Flex::seed(&FlexDevice, twenty.seed);
        let m = MpFormer::<Flex>::new(twenty.model.init::<Flex>(&FlexDevice).unwrap(), &twenty.pilot, &FlexDevice);
        m.model.decoder.query_feat.val().into_data().convert::<f32>().to_vec::<f32>().unwrap()
    };
    let trained = checkpoint::load::<Flex>(&a.join("checkpoints/step_00000020"), &twenty, &FlexDevice).unwrap();
    assert_ne!(trained.model.decoder.query_feat.val().into_data().convert::<f32>().to_vec::<f32>().unwrap(), init);
    // The resumed run's log has each step once.
    let steps: Vec<f64> = read_curves(&b.join("metrics.jsonl")).unwrap().loss.iter().map(|p| p.0).collect();
    assert_eq!(steps, [5.0, 10.0, 15.0, 20.0]);
    // A finished run refuses a fresh start in the same folder.
    let e = train(twenty, &b, None).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");

    // Evaluate and predict with the trained checkpoint.
    let ck = find_checkpoint(&a).unwrap();
    assert!(ck.ends_with("step_00000020"));
    let cfg = checkpoint::config_of(&ck, &[]).unwrap();
    let ev = EvalTask { checkpoint: ck.clone(), config: cfg.clone(), max_images: 0, output: dir.path().join("ev") }
        .run::<Flex>(FlexDevice, "flex")
        .unwrap();
    assert_eq!(ev.images, 3);
    let ap = ev.coco.as_ref().unwrap().ap();
    assert!((-1.0..=1.0).contains(&ap));
    assert!(ev.speed.model_images_per_s >= ev.speed.end_to_end_images_per_s);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ev/metrics.json")).unwrap()).unwrap();
    assert!(written["coco"]["stats"]["AP"].is_number());

    // Panoptic post-processing of the same model: PQ (all classes are things here) and mask AP.
    let mut pan_cfg = cfg.clone();
    pan_cfg.task = mpformer::train::config::Task::Panoptic;
    let ev = EvalTask { checkpoint: ck.clone(), config: pan_cfg, max_images: 2, output: dir.path().join("evp") }
        .run::<Flex>(FlexDevice, "flex")
        .unwrap();
    let p = ev.panoptic.as_ref().unwrap();
    assert_eq!((p.images, p.stuff.n), (2, 0));
    assert_eq!(ev.primary().0, "PQ");
    assert!(ev.coco.is_some());

    // Semantic post-processing: mIoU over the object pixels (the rest is ignored).
    let mut sem_cfg = cfg.clone();
    sem_cfg.task = mpformer::train::config::Task::Semantic;
    let ev = EvalTask { checkpoint: ck.clone(), config: sem_cfg, max_images: 2, output: dir.path().join("evs") }
        .run::<Flex>(FlexDevice, "flex")
        .unwrap();
    let s = ev.semantic.as_ref().unwrap();
    assert_eq!((s.images, s.per_class_iou.len()), (2, 5));
    assert_eq!(ev.primary(), ("mIoU", s.miou));
    assert!(ev.table().contains("IoU per class") && ev.table().contains("disc"));

    // Layer consistency of two checkpoints of the run.
    let runs = ["checkpoints/step_00000015", "checkpoints/step_00000020"]
        .iter()
        .map(|c| LayerRun { label: c.to_string(), checkpoint: a.join(c), config: cfg.clone() })
        .collect();
    let (reports, files) = LayersTask { runs, max_images: 3, output: dir.path().join("layers"), progress: false }
        .run::<Flex>(FlexDevice, "flex")
        .unwrap();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        let m = &r.metrics;
        assert_eq!(m.util_last.len(), 2, "2 decoder layers: i = 1, 2");
        assert_eq!(m.util_last[1], 1.0, "the last layer agrees with itself");
        assert!(m.objects > 0 && m.queries > 0);
        assert!(m.util_prev.iter().chain(&m.miou_l).all(|v| (0.0..=1.0).contains(v)));
    }
    assert!(files.iter().all(|f| f.exists()) && files.len() == 3);

    let images = dir.path().join("synth");
    mpformer::data::synth::write(&images, mpformer::data::synth::SynthStyle::Cluttered, 2, 9, 48).unwrap();
    // An unreadable file among them: reported, the others still predicted.
    std::fs::write(images.join("images/000001_broken.png"), b"not a png").unwrap();
    let inputs = mpformer::train::predict::list_images(&images.join("images")).unwrap();
    assert_eq!(inputs.len(), 3);
    let report = PredictTask {
        checkpoint: ck,
        config: cfg.clone(),
        inputs,
        output: dir.path().join("pred"),
        options: PredictOptions { min_score: 0.0, layers: true },
        progress: false,
    }
    .run::<Flex>(FlexDevice, "flex")
    .unwrap();
    assert_eq!(report.predictions.len(), 2);
    assert_eq!(report.failures.len(), 1);
    assert!(report.failures[0].0.ends_with("000001_broken.png"), "{:?}", report.failures);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("pred/predictions.json")).unwrap()).unwrap();
    assert_eq!(written.as_array().unwrap().len(), 2);
    assert!(dir.path().join("pred/errors.json").exists());
    let p = &report.predictions[0];
    assert_eq!(p.masks.len(), 5, "min score 0 keeps every detection");
    let m = mpformer::eval::coco::decode(&p.masks[0].segmentation).unwrap();
    assert_eq!([m.height, m.width], [48, 48]);
    let strip = image::open(p.layers.as_ref().unwrap()).unwrap();
    // 3 predictions (before layer 1, after layers 1 and 2) side by side, 48-px cells, one row
    // per shown query.
    assert_eq!(strip.width(), 3 * 48);
    assert_eq!(strip.height() % 48, 0);
    assert!(Path::new(&p.overlay).exists());
}

/// Records what a [`Trainer::run`] shows its hooks, and stops it at `stop_at`.
#[derive(Default)]
struct Recorder {
    steps: Vec<u64>,
    losses: Vec<f64>,
    evals: Vec<u64>,
    stop_at: Option<u64>,
}

impl TrainHook<Flex> for Recorder {
    fn after_step(&mut self, trainer: &Trainer<Flex>, r: &StepReport) -> anyhow::Result<()> {
        assert_eq!(trainer.steps_done(), r.step);
        self.steps.push(r.step);
        self.losses.push(r.loss());
        match self.stop_at {
            Some(s) if s == r.step => anyhow::bail!("stopped by the hook at step {s}"),
            _ => Ok(()),
        }
    }

    fn after_eval(&mut self, _: &Trainer<Flex>, step: u64, ev: &Evaluation) -> anyhow::Result<()> {
        assert!(ev.coco.is_some());
        self.evals.push(step);
        Ok(())
    }
}

#[test]
fn a_trainer_driven_step_by_step_equals_run_and_hooks_see_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro(&["solver.max_iter=6", "train.eval_period=3", "train.checkpoint_period=3"]);
    let task = |out: &Path| TrainTask {
        config: cfg.clone(),
        output: out.to_path_buf(),
        resume: None,
        init: None,
        progress: false,
        nodes: None,
    };

    // By hand: six steps, a checkpoint at the end.
    let by_hand = dir.path().join("by_hand");
    let mut t = Trainer::<Flex>::new(&task(&by_hand), FlexDevice, "flex").unwrap();
    let mut losses = Vec::new();
    for k in 1..=6 {
        let r = t.step().unwrap();
        assert_eq!((r.step, t.steps_done()), (k, k));
        assert!(r.loss().is_finite() && r.grad_norm.is_finite() && r.lr > 0.0);
        losses.push(r.loss());
    }
    assert!(t.step().unwrap_err().to_string().contains("solver.max_iter = 6"));
    let ev = t.evaluate().unwrap();
    assert!(ev.coco.is_some());
    let ck = t.checkpoint().unwrap();
    assert_eq!(ck, by_hand.join("checkpoints/step_00000006"));
    drop(t);

    // Through run(), with a hook.
    let ran = dir.path().join("ran");
    let mut rec = Recorder::default();
    let report = Trainer::<Flex>::new(&task(&ran), FlexDevice, "flex").unwrap().run(false, &mut [&mut rec]).unwrap();
    assert_eq!(report.final_step, 6);
    assert_eq!(rec.steps, [1, 2, 3, 4, 5, 6]);
    assert_eq!(rec.evals, [3, 6]);
    assert_eq!(rec.losses, losses, "the same losses step by step");
    assert_eq!(
        weights(&ck, &cfg),
        weights(&ran.join("checkpoints/step_00000006"), &cfg),
        "the same weights after 6 steps"
    );

    // A hook error stops training at that step; the run folder is unlocked again afterwards.
    let stopped = dir.path().join("stopped");
    let mut rec = Recorder { stop_at: Some(4), ..Recorder::default() };
    let err = Trainer::<Flex>::new(&task(&stopped), FlexDevice, "flex").unwrap().run(false, &mut [&mut rec]);
    assert!(err.unwrap_err().to_string().contains("stopped by the hook at step 4"));
    assert_eq!(rec.steps, [1, 2, 3, 4]);
    let resume = TrainTask { resume: Some(stopped.clone()), ..task(&stopped) };
    let t = Trainer::<Flex>::new(&resume, FlexDevice, "flex").unwrap();
    assert_eq!(t.steps_done(), 3, "resumes from the checkpoint written at step 3");
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro(&["solver.max_iter=30", "solver.base_lr=1e30", "solver.clip_norm=0", "train.checkpoint_period=1"]);
    let e = train(cfg, dir.path(), None).unwrap_err().to_string();
    assert!(e.contains("non-finite loss") && e.contains("in step") && e.contains("of 30"), "{e}");
    assert!(e.contains("checkpoints/step_") || e.contains("no checkpoint written yet"), "{e}");
}

#[test]
fn parameter_groups_follow_the_recipe() {
    type AD = Autodiff<Flex>;
    let cfg = micro(&[]);
    let model = MpFormer::<AD>::new(cfg.model.init::<AD>(&FlexDevice).unwrap(), &cfg.pilot, &FlexDevice);
    let groups = param_groups(&model, &cfg.solver);
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    // Frozen batch norm in the backbone: no backbone norm group.
    assert_eq!(names, ["backbone/weight", "head/embedding", "head/norm", "head/weight"]);
    let group_of = |id| groups.iter().find(|g| g.ids.contains(&id)).map(|g| g.name.as_str());
    let d = &model.model.decoder;
    assert_eq!(group_of(d.query_feat.id), Some("head/embedding"));
    assert_eq!(group_of(d.level_embed.id), Some("head/embedding"));
    assert_eq!(group_of(model.label_enc.as_ref().unwrap().weight.id), Some("head/embedding"));
    assert_eq!(group_of(model.model.pixel_decoder.level_embed.id), Some("head/weight"), "a plain parameter decays");
    assert_eq!(group_of(d.layers[0].cross_norm.gamma.id), Some("head/norm"));
    let emb = groups.iter().find(|g| g.name == "head/embedding").unwrap();
    assert_eq!((emb.weight_decay, emb.lr_multiplier), (0.0, 1.0));
    let bb = groups.iter().find(|g| g.name == "backbone/weight").unwrap();
    assert_eq!(bb.lr_multiplier, cfg.solver.backbone_multiplier);
    let total: usize = groups.iter().map(|g| g.numel).sum();
    assert_eq!(total, mpformer::model::model::trainable_params(&model));
    // With the COCO recipe's defaults the backbone trains at a tenth of the rate.
    let coco = config::load(None, &[]).unwrap();
    assert_eq!(
        param_groups(&model, &coco.solver).iter().find(|g| g.name == "backbone/weight").unwrap().lr_multiplier,
        0.1
    );
}

/// A tiny Swin backbone (window 4, 1-1-2-1 blocks) for the micro config.
const MICRO_SWIN: [&str; 5] = [
    "model.backbone.kind=\"swin\"",
    "model.backbone.swin.embed_dim=8",
    "model.backbone.swin.depths=[1, 1, 2, 1]",
    "model.backbone.swin.num_heads=[1, 2, 2, 4]",
    "model.backbone.swin.window_size=4",
];

#[test]
fn swin_with_drop_path_resumes_exactly() {
    // Stochastic depth draws per step; a resumed run must draw the same masks.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("straight"), dir.path().join("resumed"));
    let mut sets = MICRO_SWIN.to_vec();
    sets.extend(["model.backbone.swin.drop_path_rate=0.5", "train.checkpoint_period=3", "solver.accumulate=1"]);
    let six = micro(&[sets.as_slice(), &["solver.max_iter=6"]].concat());
    train(six.clone(), &a, None).unwrap();
    train(micro(&[sets.as_slice(), &["solver.max_iter=3"]].concat()), &b, None).unwrap();
    train(six.clone(), &b, Some(&b)).unwrap();
    let (wa, wb) =
        (weights(&a.join("checkpoints/step_00000006"), &six), weights(&b.join("checkpoints/step_00000006"), &six));
    assert!(wa == wb, "resumed Swin weights differ from the uninterrupted run");
    // And drop path acts at all: without it (same data and noise) the weights differ.
    let c = dir.path().join("no_drop");
    let no_drop = micro(&[sets.as_slice(), &["solver.max_iter=6", "model.backbone.swin.drop_path_rate=0.0"]].concat());
    train(no_drop.clone(), &c, None).unwrap();
    assert!(weights(&c.join("checkpoints/step_00000006"), &no_drop) != wa, "drop path had no effect");
}

#[test]
fn swin_relative_position_tables_never_decay() {
    type AD = Autodiff<Flex>;
    let mut swin = MICRO_SWIN.to_vec();
    swin.push("solver.weight_decay_embed=0.5");
    let cfg = micro(&swin);
    let model = MpFormer::<AD>::new(cfg.model.init::<AD>(&FlexDevice).unwrap(), &cfg.pilot, &FlexDevice);
    let groups = param_groups(&model, &cfg.solver);
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        ["backbone/norm", "backbone/position", "backbone/weight", "head/embedding", "head/norm", "head/weight"]
    );
    let pos = groups.iter().find(|g| g.name == "backbone/position").unwrap();
    // One (2·4 − 1)² × heads table per block: 49·(1 + 2 + 2·2 + 4).
    assert_eq!(pos.numel, 49 * (1 + 2 + 2 * 2 + 4));
    assert_eq!((pos.weight_decay, pos.lr_multiplier), (0.0, cfg.solver.backbone_multiplier));
    let norm = groups.iter().find(|g| g.name == "backbone/norm").unwrap();
    assert_eq!(norm.weight_decay, cfg.solver.weight_decay_norm, "Swin's layer norms are norms");
    let total: usize = groups.iter().map(|g| g.numel).sum();
    assert_eq!(total, mpformer::model::model::trainable_params(&model));
}

#[test]
fn clipping_bounds_the_global_norm_of_all_gradients() {
    type AD = Autodiff<Flex>;
    let dev = FlexDevice;
    let lin = burn::nn::LinearConfig::new(2, 2).init::<AD>(&dev);
    let mut grads = burn::optim::GradientsParams::new();
    // Weight gradient [[3, 0], [0, 0]], bias gradient [0, 4]: global norm 5.
    grads.register::<Flex, 2>(lin.weight.id, Tensor::from_data([[3.0f32, 0.0], [0.0, 0.0]], &dev));
    grads.register::<Flex, 1>(lin.bias.as_ref().unwrap().id, Tensor::from_data([0.0f32, 4.0], &dev));
    assert!((grad_norm(&lin, &grads) - 5.0).abs() < 1e-6);
    let before = clip_global(&lin, &mut grads, 0.01);
    assert!((before - 5.0).abs() < 1e-6);
    assert!((grad_norm(&lin, &grads) - 0.01).abs() < 1e-6);
    let w: Vec<f32> = grads.get::<Flex, 2>(lin.weight.id).unwrap().into_data().to_vec().unwrap();
    assert!((w[0] - 3.0 * 0.01 / (5.0 + 1e-6)).abs() < 1e-9, "scaled together, direction kept: {w:?}");
    // Below the bound nothing changes.
    let before = clip_global(&lin, &mut grads, 1.0);
    assert!((before - 0.01).abs() < 1e-6 && (grad_norm(&lin, &grads) - 0.01).abs() < 1e-6);
}

/// The same training code on the wgpu backend (lavapipe on CI): a few steps with finite losses,
/// a checkpoint with optimiser state, and the final evaluation. (Each backend has its own seeded
/// generator, so the weights differ from flex's; forward parity is `tests/backend_parity.rs`.)
#[cfg(feature = "wgpu")]
#[test]
fn trains_on_wgpu() {
    use burn::backend::Wgpu;
    use burn::backend::wgpu::WgpuDevice;
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro(&[
        "solver.max_iter=2",
        "train.log_period=1",
        "train.overlays=0",
        "train.checkpoint_period=2",
        "train.eval_images=1",
    ]);
    let r = TrainTask {
        config: cfg,
        output: dir.path().to_path_buf(),
        resume: None,
        init: None,
        progress: false,
        nodes: None,
    }
    .run::<Wgpu>(WgpuDevice::default(), "wgpu")
    .unwrap();
    assert_eq!(r.final_step, 2);
    assert!(dir.path().join("checkpoints/step_00000002/optim-0.mpk").exists());
    let losses: Vec<f64> = read_curves(&dir.path().join("metrics.jsonl")).unwrap().loss.iter().map(|p| p.1).collect();
    assert_eq!(losses.len(), 2);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
}
