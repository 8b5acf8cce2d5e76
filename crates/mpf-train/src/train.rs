//! `mpf-train train`: the training program.
//!
//! One optimiser step = `solver.accumulate` batches of `data.batch_size` images: the MP-Former
//! training forward (plain Mask2Former when `pilot.enabled = false`), the criterion, backward,
//! global gradient clipping, then one AdamW step per parameter group at the scheduled rate.
//! Every random choice is keyed by (seed, purpose, step), so a run is reproducible from its config
//! and a resumed run continues exactly.
//!
//! The run folder:
//! ```text
//! RUN/config.toml                 the resolved config (`train --config RUN/config.toml` repeats the run)
//! RUN/metrics.jsonl               one JSON line per logging step ("type": "train") and per evaluation ("type": "eval")
//! RUN/checkpoints/step_NNNNNNNN/  the last `train.keep_last` checkpoints (model, optimiser, step)
//! RUN/best/                       the checkpoint with the best evaluation metric
//! RUN/eval/metrics.json, results.json   the final evaluation (COCO results for instance / panoptic)
//! RUN/loss.png, RUN/eval.png      training loss and evaluation metric curves
//! RUN/overlays/                   predictions on the first `train.overlays` validation images
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use mpf_criterion::{Criterion, CriterionStreams};
use mpf_data::config::{Split, training_indices};
use mpf_data::loader::{Loader, plan};
use mpf_pilot::forward::{GtObjects, MpFormer, PilotStreams};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointInfo, TrainingState};
use crate::config::ExperimentConfig;
use crate::device::BackendTask;
use crate::evaluate::{Evaluation, evaluate, progress};
use crate::run_lock::RunLock;
use crate::solver::{ParamGroup, add_grads, clip_global, param_groups, split_grads};

/// The `[train]` table: periods of logging, evaluation and checkpoints (in optimiser steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Steps between JSONL log lines (loss averaged over the window).
    pub log_period: u64,
    /// Steps between evaluations on the validation split; 0 = only at the end. The end of
    /// training is always evaluated.
    pub eval_period: u64,
    /// Steps between checkpoints; the last step always writes one.
    pub checkpoint_period: u64,
    /// Checkpoints kept under `checkpoints/` (older ones are deleted; `best/` is separate).
    pub keep_last: usize,
    /// Validation images per evaluation (0 = the whole split).
    pub eval_images: usize,
    /// Validation images drawn with their predictions at the end.
    pub overlays: usize,
    /// Instances below this score are left out of overlays.
    pub overlay_score: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            log_period: 20,
            eval_period: 5000,
            checkpoint_period: 5000,
            keep_last: 2,
            eval_images: 0,
            overlays: 8,
            overlay_score: 0.5,
        }
    }
}

impl TrainConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.log_period == 0 {
            return Err("`train.log_period` must be at least 1".into());
        }
        if self.checkpoint_period == 0 {
            return Err("`train.checkpoint_period` must be at least 1".into());
        }
        if self.keep_last == 0 {
            return Err("`train.keep_last` must be at least 1 (resuming needs a checkpoint)".into());
        }
        Ok(())
    }
}

/// A training run to start or continue.
#[derive(Debug, Clone)]
pub struct TrainTask {
    /// The resolved config.
    pub config: ExperimentConfig,
    /// The run folder.
    pub output: PathBuf,
    /// A checkpoint folder (or a run folder: its latest checkpoint) to continue from.
    pub resume: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Step the run started at (0, or the resumed checkpoint's).
    pub start_step: u64,
    /// Step reached.
    pub final_step: u64,
    /// Seconds of training (without the final evaluation).
    pub train_seconds: f64,
    /// The final evaluation.
    pub evaluation: Evaluation,
    /// Best evaluation: (metric, value, step).
    pub best: Option<(String, f64, u64)>,
    /// Files written at the end (curves, overlays, results).
    pub files: Vec<PathBuf>,
}

/// One optimiser per parameter group.
pub type Adam<B> = OptimizerAdaptor<AdamW, MpFormer<Autodiff<B>>, Autodiff<B>>;

/// One AdamW per parameter group, with the solver's betas, epsilon and the group's weight decay.
pub fn optimizers<B: Backend>(cfg: &ExperimentConfig, groups: &[ParamGroup]) -> Vec<Adam<B>> {
    groups
        .iter()
        .map(|g| {
            AdamWConfig::new()
                .with_beta_1(cfg.solver.betas[0] as f32)
                .with_beta_2(cfg.solver.betas[1] as f32)
                .with_epsilon(cfg.solver.epsilon as f32)
                .with_weight_decay(g.weight_decay as f32)
                .init()
        })
        .collect()
}

/// The checkpoint to resume from: `dir` itself, or the newest under `dir/checkpoints/`.
pub fn find_checkpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.join("checkpoint.json").exists() {
        return Ok(dir.to_path_buf());
    }
    let list = list_checkpoints(&dir.join("checkpoints"));
    list.last().cloned().with_context(|| {
        format!("{} holds no checkpoint (neither checkpoint.json nor checkpoints/step_*/)", dir.display())
    })
}

/// Complete checkpoints (with a header) under `dir`, oldest first.
fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step_"))
                        && p.join("checkpoint.json").exists()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The run folder a checkpoint belongs to (`RUN/checkpoints/step_N` → `RUN`).
pub fn run_dir_of(checkpoint: &Path) -> PathBuf {
    match checkpoint.parent() {
        Some(p) if p.file_name().is_some_and(|n| n == "checkpoints") => {
            p.parent().map(Path::to_path_buf).unwrap_or_default()
        }
        _ => checkpoint.to_path_buf(),
    }
}

/// Appends JSON lines to `RUN/metrics.jsonl`.
struct Log {
    file: std::fs::File,
    path: PathBuf,
    /// Steps of the evaluation lines kept from before this process.
    evals: Vec<u64>,
}

impl Log {
    /// Opens the log. A new run (`start` 0) starts it empty. A resumed run keeps the lines up to
    /// `start` and drops later ones (from a run that crashed after its last checkpoint), rewriting
    /// the file through a temporary file and a rename; a log that cannot be read, or a line that is
    /// not JSON (other than a last line cut short by a crash), is an error naming the line.
    fn open(path: &Path, start: u64) -> anyhow::Result<Self> {
        let mut kept: Vec<String> = Vec::new();
        let mut evals = Vec::new();
        if start > 0 {
            match std::fs::read(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!("{} is missing; the resumed run starts a new log", path.display());
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
                Ok(bytes) => {
                    let text = String::from_utf8(bytes).map_err(|e| {
                        let line = e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
                        anyhow::anyhow!(
                            "{} line {}: invalid UTF-8; fix or remove the line before resuming",
                            path.display(),
                            line + 1
                        )
                    })?;
                    let complete = text.ends_with('\n');
                    let lines: Vec<&str> = text.lines().collect();
                    for (i, line) in lines.iter().enumerate() {
                        if line.trim().is_empty() {
                            continue;
                        }
                        let v = match serde_json::from_str::<serde_json::Value>(line) {
                            Ok(v) => v,
                            Err(_) if i + 1 == lines.len() && !complete => {
                                tracing::warn!("{}: dropping a last line cut short by a crash", path.display());
                                continue;
                            }
                            Err(e) => bail!(
                                "{} line {}: not a JSON line ({e}); fix or remove the line before resuming",
                                path.display(),
                                i + 1
                            ),
                        };
                        let step = v["step"]
                            .as_u64()
                            .with_context(|| format!("{} line {}: the line has no \"step\"", path.display(), i + 1))?;
                        if step <= start {
                            if v["type"] == "eval" {
                                evals.push(step);
                            }
                            kept.push(line.to_string());
                        }
                    }
                }
            }
        }
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        checkpoint::write_atomic(path, &text)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf(), evals })
    }

    /// Whether the kept log holds an evaluation at `step`.
    fn has_eval(&self, step: u64) -> bool {
        self.evals.contains(&step)
    }

    fn write(&mut self, v: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.file, "{v}").with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// One evaluation as a JSONL line.
fn eval_line(step: u64, ev: &Evaluation) -> serde_json::Value {
    let (name, value) = ev.primary();
    serde_json::json!({"type": "eval", "step": step, "metric": name, "value": value, "evaluation": ev})
}

impl BackendTask for TrainTask {
    type Output = anyhow::Result<TrainReport>;

    fn run<B: Backend>(self, device: B::Device, name: &str) -> Self::Output {
        train::<B>(self, device, name)
    }
}

/// The GT objects of a batch (labels and host masks at the padded size), for the MP part and the
/// criterion.
fn targets(batch: &mpf_data::batch::Batch) -> Vec<GtObjects> {
    (0..batch.images.len())
        .map(|b| GtObjects {
            labels: batch.labels(b),
            masks: batch.objects[b].iter().map(|o| o.mask.clone()).collect(),
        })
        .collect()
}

fn train<B: Backend>(task: TrainTask, device: B::Device, device_name: &str) -> anyhow::Result<TrainReport> {
    type AD<B> = Autodiff<B>;
    let cfg = &task.config;
    let run = &task.output;
    let ckpt_root = run.join("checkpoints");
    // One process per run folder, held until this function returns.
    let _lock = RunLock::acquire(run)?;
    checkpoint::recover_swap(&run.join("best"))?;
    if task.resume.is_none() && !list_checkpoints(&ckpt_root).is_empty() {
        bail!(
            "{} already holds a run with checkpoints: continue it with --resume {} or choose another --output",
            run.display(),
            run.display()
        );
    }
    std::fs::create_dir_all(&ckpt_root).with_context(|| format!("cannot create {}", ckpt_root.display()))?;

    // Data.
    let train_data = cfg.data.open(Split::Train, cfg.seed, &cfg.class_names)?;
    let val_data = cfg.data.open(Split::Val, cfg.seed, &cfg.class_names)?;
    for (split, d) in [("train", &train_data), ("val", &val_data)] {
        if d.classes().len() != cfg.model.num_classes {
            bail!(
                "the {split} data has {} classes but model.num_classes is {}",
                d.classes().len(),
                cfg.model.num_classes
            );
        }
    }
    let indices = training_indices(train_data.as_ref());
    if indices.is_empty() {
        bail!("the training split has no image with objects");
    }

    // Model, parameter groups, optimisers.
    AD::<B>::seed(&device, cfg.seed);
    let mut model = MpFormer::<AD<B>>::new(cfg.model.init::<AD<B>>(&device)?, &cfg.pilot, &device);
    let mut groups = param_groups(&model, &cfg.solver);
    let mut optims = optimizers::<B>(cfg, &groups);
    let group_names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let mut start = 0;
    let mut best: Option<(String, f64, u64)> = None;
    if let Some(resume) = &task.resume {
        let dir = find_checkpoint(resume)?;
        let info = checkpoint::read_info(&dir)?;
        let state = info.training.clone().with_context(|| {
            format!("{} was not written by training (no optimiser state); it cannot be resumed", dir.display())
        })?;
        if state.groups != group_names {
            bail!("{}: parameter groups {:?} differ from this config's {:?}", dir.display(), state.groups, group_names);
        }
        model = checkpoint::load::<AD<B>>(&dir, cfg, &device)?;
        // Loading restores the saved parameter ids, which the optimiser states are keyed by.
        groups = param_groups(&model, &cfg.solver);
        optims = optims
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                Ok(o.load_record(checkpoint::read_record::<AD<B>, _>(&dir, &info, &format!("optim-{i}"), &device)?))
            })
            .collect::<anyhow::Result<_>>()?;
        start = state.step;
        best = state.best;
        tracing::info!("resumed from {} at step {start}", dir.display());
    }
    let max_iter = cfg.solver.max_iter;
    if start > max_iter {
        bail!("the checkpoint is at step {start}, beyond solver.max_iter = {max_iter}");
    }
    // Only a config that was accepted (and, on resume, matched its checkpoint) becomes the run's.
    checkpoint::write_atomic(&run.join("config.toml"), &cfg.to_toml()?)?;
    let accum = cfg.solver.accumulate as u64;
    let criterion = Criterion::new(cfg.loss.clone())?;
    let loader = Loader::new(
        Arc::clone(&train_data),
        plan(&indices, cfg.data.batch_size, cfg.seed, start * accum, (max_iter - start) * accum),
        cfg.data.train_augment(),
        cfg.input.size_divisibility,
        cfg.seed,
        cfg.data.workers,
        cfg.data.prefetch,
    );
    let mut batches = loader;
    let mut log = Log::open(&run.join("metrics.jsonl"), start)?;
    let pb = progress(max_iter, task.progress, "train");
    pb.set_position(start);
    let t_start = Instant::now();
    let (mut window_loss, mut window_n, mut window_t) = (0.0, 0u64, Instant::now());
    let mut last_ckpt: Option<PathBuf> = list_checkpoints(&ckpt_root).last().cloned();
    let mut last_eval: Option<(u64, Evaluation)> = None;
    for step in start..max_iter {
        let mut acc = GradientsParams::new();
        let mut report: BTreeMap<String, f64> = BTreeMap::new();
        for micro in 0..accum {
            let index = step * accum + micro;
            let batch = batches.next().context("the data loader ended early")??;
            let images = batch.images_tensor::<AD<B>>(&cfg.input, &device)?;
            let gt = targets(&batch);
            let out = model.forward_train(images.images, &gt, &cfg.pilot, &mut PilotStreams::for_step(cfg.seed, index));
            let losses = criterion.forward(&out, &gt, &cfg.pilot, &mut CriterionStreams::for_step(cfg.seed, index))?;
            let terms = losses.report();
            if !terms["total"].is_finite() {
                let bad: Vec<&String> = terms.iter().filter(|(_, v)| !v.is_finite()).map(|(k, _)| k).collect();
                let shown: Vec<&&String> = bad.iter().take(6).collect();
                bail!(
                    "non-finite loss ({}) in step {} of {max_iter} (images {:?}); {} of {} loss terms are \
                     non-finite, e.g. {shown:?}. Training stopped; the last checkpoint, written before this \
                     step, is {}",
                    terms["total"],
                    step + 1,
                    batch.items.iter().map(|i| &i.1).collect::<Vec<_>>(),
                    bad.len(),
                    terms.len(),
                    last_ckpt.as_ref().map_or("none (no checkpoint written yet)".into(), |p| p.display().to_string())
                );
            }
            for (k, v) in terms {
                *report.entry(k).or_default() += v / accum as f64;
            }
            let total = losses.total();
            let total = if accum > 1 { total.div_scalar(accum as f64) } else { total };
            let grads = GradientsParams::from_grads(total.backward(), &model);
            add_grads(&model, &mut acc, grads);
        }
        let grad_norm = clip_global(&model, &mut acc, cfg.solver.clip_norm);
        let lr = cfg.solver.lr_at(step);
        for ((opt, g), grads) in optims.iter_mut().zip(&groups).zip(split_grads(&model, acc, &groups)) {
            model = opt.step(lr * g.lr_multiplier, model, grads);
        }
        let done = step + 1;
        window_loss += report["total"];
        window_n += 1;
        pb.set_position(done);
        pb.set_message(format!("train loss {:.3} lr {lr:.2e}", report["total"]));
        if done.is_multiple_of(cfg.train.log_period) || done == max_iter {
            let secs = window_t.elapsed().as_secs_f64();
            let it_s = window_n as f64 / secs.max(1e-9);
            log.write(&serde_json::json!({
                "type": "train", "step": done, "lr": lr, "loss": window_loss / window_n as f64,
                "grad_norm": grad_norm, "it_per_s": it_s, "eta_s": (max_iter - done) as f64 / it_s,
                "elapsed_s": t_start.elapsed().as_secs_f64(), "terms": report,
            }))?;
            (window_loss, window_n, window_t) = (0.0, 0, Instant::now());
        }
        let eval_due = (cfg.train.eval_period > 0 && done.is_multiple_of(cfg.train.eval_period)) || done == max_iter;
        if eval_due {
            pb.suspend(|| tracing::info!("evaluating at step {done}"));
            let inner = model.valid();
            let ev =
                evaluate(&inner.model, cfg, val_data.as_ref(), &device, device_name, cfg.train.eval_images, false)?;
            log.write(&eval_line(done, &ev))?;
            let (metric, value) = ev.primary();
            if best.as_ref().is_none_or(|b| value > b.1) {
                best = Some((metric.to_string(), value, done));
                let info = CheckpointInfo {
                    training: Some(TrainingState { step: done, groups: group_names.clone(), best: best.clone() }),
                    ..CheckpointInfo::new(format!("training (best {metric} {value:.2} at step {done})"), Some(done))
                };
                checkpoint::save_swapped(&run.join("best"), cfg, inner, &info)?;
            }
            last_eval = Some((done, ev));
        }
        if done.is_multiple_of(cfg.train.checkpoint_period) || done == max_iter {
            let dir = ckpt_root.join(format!("step_{done:08}"));
            let info = CheckpointInfo {
                training: Some(TrainingState { step: done, groups: group_names.clone(), best: best.clone() }),
                ..CheckpointInfo::new(format!("training step {done}"), Some(done))
            };
            checkpoint::save_with(&dir, cfg, model.clone(), &info, |d| {
                let mut names = Vec::new();
                for (i, o) in optims.iter().enumerate() {
                    let name = format!("optim-{i}");
                    checkpoint::write_record::<AD<B>, _>(d, &name, o.to_record())?;
                    names.push(name);
                }
                Ok(names)
            })?;
            let all = list_checkpoints(&ckpt_root);
            for old in all.iter().take(all.len().saturating_sub(cfg.train.keep_last)) {
                std::fs::remove_dir_all(old).with_context(|| format!("cannot remove {}", old.display()))?;
            }
            last_ckpt = Some(dir);
        }
    }
    pb.finish_and_clear();
    let train_seconds = t_start.elapsed().as_secs_f64();
    // A run resumed at its end has not evaluated in this process; its log may already hold the
    // final evaluation (a kill after the last checkpoint), which is then not written twice.
    let evaluation = match last_eval {
        Some((s, ev)) if s == max_iter => ev,
        _ => {
            let inner = model.valid();
            let ev =
                evaluate(&inner.model, cfg, val_data.as_ref(), &device, device_name, cfg.train.eval_images, false)?;
            if !log.has_eval(max_iter) {
                log.write(&eval_line(max_iter, &ev))?;
            }
            ev
        }
    };
    let files = crate::report::finish_run(run, cfg, &model.valid().model, &evaluation, val_data.as_ref(), &device)?;
    Ok(TrainReport {
        run_dir: run.clone(),
        start_step: start,
        final_step: max_iter,
        train_seconds,
        evaluation,
        best,
        files,
    })
}
