//! `mpf-train train`: the training program.
//!
//! One optimiser step = `solver.accumulate` batches of `data.batch_size` images: the MP-Former
//! training forward (plain Mask2Former when `pilot.enabled = false`), the criterion, backward,
//! global gradient clipping, then one AdamW step per parameter group at the scheduled rate.
//! Every random choice is keyed by (seed, purpose, step) — per image, by the image's place in the
//! step's batch — so a run is reproducible from its config, a resumed run continues exactly, and
//! a data-parallel run over several devices ([`crate::parallel`]) draws what one device would.
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
use std::sync::{Arc, Mutex};
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
use mpf_model::rng::{Stream, image_stream};
use mpf_pilot::forward::{GtObjects, MpFormer, PilotStreams};
use rand::Rng;
use serde::Serialize;

use crate::checkpoint::{self, CheckpointInfo, TrainingState};
use crate::config::ExperimentConfig;
use crate::device::{BackendTask, MultiDeviceTask};
use crate::evaluate::{Evaluation, evaluate};
use crate::parallel::{CollectiveMean, MULTI_NODE_BLOCKED, Nodes, Replica, SharedData};
use crate::run_lock::RunLock;
use crate::solver::{ParamGroup, add_grads, clip_global, param_groups, split_grads};
use mpf_data::Dataset;

/// A training run to start or continue.
#[derive(Debug, Clone)]
pub struct TrainTask {
    /// The resolved config.
    pub config: ExperimentConfig,
    /// The run folder.
    pub output: PathBuf,
    /// A checkpoint folder (or a run folder: its latest checkpoint) to continue from.
    pub resume: Option<PathBuf>,
    /// A checkpoint folder whose weights start the run at step 0 with fresh optimiser states, e.g.
    /// released weights brought in by `import` to fine-tune. Its architecture must be the
    /// config's; MP-Former's label embedding is taken when both have the pilot on.
    pub init: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
    /// The nodes of a multi-node data-parallel run (`None`: this process is the whole run).
    pub nodes: Option<Nodes>,
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

    /// One device (one replica of a multi-node run when `nodes` is set).
    fn run<B: Backend>(self, device: B::Device, name: &str) -> Self::Output {
        if self.nodes.is_some() {
            return self.run_replicated::<B>(vec![device], vec![name.to_string()])?.with_context(|| {
                "this node is not node 0: its run folder, evaluations and report are node 0's".to_string()
            });
        }
        let progress = self.progress;
        Trainer::<B>::new(&self, device, name)?.run(progress, &mut [])
    }
}

impl MultiDeviceTask for TrainTask {
    /// The report, written by node 0 (`None` on the other nodes of a multi-node run).
    type Output = anyhow::Result<Option<TrainReport>>;

    fn run<B: Backend>(self, devices: Vec<B::Device>, names: Vec<String>) -> Self::Output {
        if devices.len() == 1 && self.nodes.is_none() {
            let progress = self.progress;
            let device = devices.into_iter().next().expect("one device");
            return Trainer::<B>::new(&self, device, &names[0])?.run(progress, &mut []).map(Some);
        }
        self.run_replicated::<B>(devices, names)
    }
}

impl TrainTask {
    /// Data-parallel training: one replica per device in its own thread. Returns replica 0's
    /// report (`None` is kept for the other nodes of a multi-node run, which is refused with Burn
    /// 0.21: [`MULTI_NODE_BLOCKED`]). The first replica to fail ends the run with its error.
    pub fn run_replicated<B: Backend>(
        self,
        devices: Vec<B::Device>,
        names: Vec<String>,
    ) -> anyhow::Result<Option<TrainReport>> {
        if self.nodes.is_some() {
            bail!("{MULTI_NODE_BLOCKED}");
        }
        let world = devices.len();
        let batch = self.config.data.batch_size;
        if world == 0 || !batch.is_multiple_of(world) {
            bail!(
                "`data.batch_size` = {batch} (the total batch of a step) must split evenly over {world} replicas; \
                 set it to a multiple of {world} with --set"
            );
        }
        let collective = burn_collective::CollectiveConfig::default().with_num_devices(world);
        // Forget any earlier run's peers in this process (a failed run leaves them registered).
        burn_collective::reset_collective::<B>();
        let data = open_data(&self.config)?;
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (device, name)) in devices.into_iter().zip(names).enumerate() {
            let replica = Replica { rank: i, world };
            let (task, data, collective, tx) = (self.clone(), data.clone(), collective.clone(), tx.clone());
            std::thread::Builder::new()
                .name(format!("mpf-replica-{}", replica.rank))
                .stack_size(64 << 20)
                .spawn(move || {
                    let work = || -> anyhow::Result<Option<TrainReport>> {
                        burn_collective::register::<B>(replica.peer(), device.clone(), collective)
                            .map_err(|e| anyhow::anyhow!("cannot join the collective: {e:?}"))?;
                        let trainer = Trainer::<B>::new_replica(&task, device, &name, replica, Some(data))?;
                        let report = trainer.run_replica(task.progress)?;
                        burn_collective::finish_collective::<B>(replica.peer())
                            .map_err(|e| anyhow::anyhow!("cannot leave the collective: {e:?}"))?;
                        Ok(report)
                    };
                    // A panic (in a backend or the collective) is reported like an error.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(anyhow::anyhow!("panicked: {msg}"))
                    });
                    let _ = tx.send((replica.rank, result));
                })
                .context("cannot start a replica thread")?;
        }
        drop(tx);
        let mut report = None;
        // The first error ends the run: the other replicas wait in a collective call for the
        // failed one and are left to end with the process.
        let mut done = 0;
        for (rank, result) in rx {
            match result {
                Err(e) => return Err(e.context(format!("replica {rank} of {world} failed"))),
                Ok(Some(r)) => report = Some(r),
                Ok(None) => {}
            }
            done += 1;
        }
        if done < world || report.is_none() {
            bail!("a replica thread ended without a result");
        }
        Ok(report)
    }
}

/// The training and validation splits of `cfg`, opened and checked against the model's classes.
pub fn open_data(cfg: &ExperimentConfig) -> anyhow::Result<SharedData> {
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
    Ok((train_data, val_data))
}

/// Held while a model is initialised: the backend's generator is shared by the process on some
/// backends (flex), so replicas in threads take turns to seed it and draw their initial weights,
/// which are then the same on every replica.
static MODEL_INIT: Mutex<()> = Mutex::new(());

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

/// What one optimiser step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Steps done after this one (1 after the first step).
    pub step: u64,
    /// Base learning rate of the step (before group multipliers).
    pub lr: f64,
    /// Every loss term averaged over the accumulated batches, `total` included.
    pub terms: BTreeMap<String, f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl StepReport {
    /// The total loss.
    pub fn loss(&self) -> f64 {
        self.terms["total"]
    }
}

/// Observes a [`Trainer::run`] (detectron2's hooks): called after every step and every evaluation.
/// Returning an error stops training there.
pub trait TrainHook<B: Backend> {
    /// After each optimiser step (and the trainer's own logging).
    fn after_step(&mut self, _trainer: &Trainer<B>, _report: &StepReport) -> anyhow::Result<()> {
        Ok(())
    }
    /// After each evaluation, with its step.
    fn after_eval(&mut self, _trainer: &Trainer<B>, _step: u64, _evaluation: &Evaluation) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Training as a library: the model, its optimisers, data and run folder.
///
/// [`Trainer::new`] prepares a run (fresh, or resumed from a checkpoint) and holds the run
/// folder's lock; [`step`](Trainer::step) does one optimiser step; [`evaluate`](Trainer::evaluate)
/// scores the current model on the validation split (logging it and keeping `best/`);
/// [`checkpoint`](Trainer::checkpoint) writes one; [`run`](Trainer::run) drives them with the
/// config's periods to `solver.max_iter`, then evaluates, draws and returns a [`TrainReport`].
pub struct Trainer<B: Backend> {
    cfg: ExperimentConfig,
    run_dir: PathBuf,
    device: B::Device,
    device_name: String,
    /// Always `Some` between calls; taken while the optimisers consume it.
    model: Option<MpFormer<Autodiff<B>>>,
    groups: Vec<ParamGroup>,
    group_names: Vec<String>,
    optims: Vec<Adam<B>>,
    criterion: Criterion,
    batches: Loader,
    val_data: Arc<dyn Dataset>,
    /// The log; `None` on replicas other than 0.
    log: Option<Log>,
    replica: Replica,
    start: u64,
    step: u64,
    window: (f64, u64, Instant),
    started: Instant,
    best: Option<(String, f64, u64)>,
    last_checkpoint: Option<PathBuf>,
    _lock: Option<RunLock>,
}

impl<B: Backend> Trainer<B> {
    /// Prepares `task`: locks and checks the run folder, opens the data, builds the model and
    /// optimisers, restores them from `task.resume`, writes `RUN/config.toml` and opens the log.
    pub fn new(task: &TrainTask, device: B::Device, device_name: &str) -> anyhow::Result<Self> {
        Self::new_replica(task, device, device_name, Replica::SINGLE, None)
    }

    /// [`Self::new`] for one replica of a data-parallel run (already registered with the
    /// collective): it takes its shard of every batch and averages with the others; only replica
    /// 0 locks and writes the run folder. `data` are the splits opened once for the process
    /// (opened here when `None`).
    pub fn new_replica(
        task: &TrainTask,
        device: B::Device,
        device_name: &str,
        replica: Replica,
        data: Option<SharedData>,
    ) -> anyhow::Result<Self> {
        let cfg = task.config.clone();
        let run = task.output.clone();
        let ckpt_root = run.join("checkpoints");
        let main = replica.is_main();
        // One process per run folder, held as long as the trainer lives.
        let lock = if main {
            let lock = RunLock::acquire(&run)?;
            checkpoint::recover_swap(&run.join("best"))?;
            if task.resume.is_none() && !list_checkpoints(&ckpt_root).is_empty() {
                bail!(
                    "{} already holds a run with checkpoints: continue it with --resume {} or choose another --output",
                    run.display(),
                    run.display()
                );
            }
            std::fs::create_dir_all(&ckpt_root).with_context(|| format!("cannot create {}", ckpt_root.display()))?;
            Some(lock)
        } else {
            None
        };
        if !cfg.data.batch_size.is_multiple_of(replica.world) {
            bail!("`data.batch_size` = {} must split evenly over {} replicas", cfg.data.batch_size, replica.world);
        }

        let (train_data, val_data) = match data {
            Some(d) => d,
            None => open_data(&cfg)?,
        };
        let indices = training_indices(train_data.as_ref());
        if indices.is_empty() {
            bail!("the training split has no image with objects");
        }

        let init_guard = MODEL_INIT.lock().unwrap_or_else(|e| e.into_inner());
        Autodiff::<B>::seed(&device, cfg.seed);
        let mut model = MpFormer::<Autodiff<B>>::new(cfg.model.init::<Autodiff<B>>(&device)?, &cfg.pilot, &device);

        if let Some(init) = &task.init {
            if task.resume.is_some() {
                bail!("--init starts a new run from a checkpoint's weights; it cannot be combined with --resume");
            }
            let dir = find_checkpoint(init)?;
            let theirs = checkpoint::config_of(&dir, &[])?;
            let mut load_cfg = cfg.clone();
            load_cfg.pilot = theirs.pilot;
            let loaded = checkpoint::load::<Autodiff<B>>(&dir, &load_cfg, &device)?;
            model.model = loaded.model;
            if loaded.label_enc.is_some() && model.label_enc.is_some() {
                model.label_enc = loaded.label_enc;
            }
            tracing::info!("initialised from the weights of {}", dir.display());
        }
        let mut groups = param_groups(&model, &cfg.solver);
        let mut optims = optimizers::<B>(&cfg, &groups);
        let group_names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let (mut start, mut best) = (0, None);
        if let Some(resume) = &task.resume {
            let dir = find_checkpoint(resume)?;
            let info = checkpoint::read_info(&dir)?;
            let state = info.training.clone().with_context(|| {
                format!("{} was not written by training (no optimiser state); it cannot be resumed", dir.display())
            })?;
            if state.groups != group_names {
                bail!(
                    "{}: parameter groups {:?} differ from this config's {:?}",
                    dir.display(),
                    state.groups,
                    group_names
                );
            }
            model = checkpoint::load::<Autodiff<B>>(&dir, &cfg, &device)?;
            // Loading restores the saved parameter ids, which the optimiser states are keyed by.
            groups = param_groups(&model, &cfg.solver);
            optims = optims
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    let name = format!("optim-{i}");
                    Ok(o.load_record(checkpoint::read_record::<Autodiff<B>, _>(&dir, &info, &name, &device)?))
                })
                .collect::<anyhow::Result<_>>()?;
            start = state.step;
            best = state.best;
            tracing::info!("resumed from {} at step {start}", dir.display());
        }
        drop(init_guard);
        if replica.world > 1 {
            // Outside the lock: every replica must have initialised before any receives.
            model = replica.broadcast_weights(model)?;
        }
        let max_iter = cfg.solver.max_iter;
        if start > max_iter {
            bail!("the checkpoint is at step {start}, beyond solver.max_iter = {max_iter}");
        }
        // Only a config that was accepted (and, on resume, matched its checkpoint) becomes the run's.
        if main {
            checkpoint::write_atomic(&run.join("config.toml"), &cfg.to_toml()?)?;
        }
        let accum = cfg.solver.accumulate as u64;
        let criterion = Criterion::new(cfg.loss.clone())?;
        // The global batches, of which this replica takes its shard.
        let shard = replica.shard(cfg.data.batch_size);
        let batches = Loader::new(
            Arc::clone(&train_data),
            plan(&indices, cfg.data.batch_size, cfg.seed, start * accum, (max_iter - start) * accum)
                .into_iter()
                .map(|(step, images)| (step, images[shard.clone()].to_vec()))
                .collect(),
            cfg.data.train_augment(),
            cfg.input.size_divisibility,
            cfg.seed,
            cfg.data.workers,
            cfg.data.prefetch,
        );
        let log = if main { Some(Log::open(&run.join("metrics.jsonl"), start)?) } else { None };
        Ok(Self {
            last_checkpoint: list_checkpoints(&ckpt_root).last().cloned(),
            cfg,
            run_dir: run,
            device,
            device_name: device_name.to_string(),
            model: Some(model),
            groups,
            group_names,
            optims,
            criterion,
            batches,
            val_data,
            log,
            replica,
            start,
            step: start,
            window: (0.0, 0, Instant::now()),
            started: Instant::now(),
            best,
            _lock: lock,
        })
    }

    /// The config.
    pub fn config(&self) -> &ExperimentConfig {
        &self.cfg
    }

    /// Optimiser steps done (the resumed checkpoint's step before the first [`step`](Self::step)).
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// The model being trained.
    pub fn model(&self) -> &MpFormer<Autodiff<B>> {
        self.model.as_ref().expect("the model is present between steps")
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// One optimiser step: `solver.accumulate` batches forward and backward, global clipping, one
    /// AdamW step per parameter group at the scheduled rate. Logs a line every `train.log_period`
    /// steps. A non-finite loss stops with an error naming the step, images and terms.
    pub fn step(&mut self) -> anyhow::Result<StepReport> {
        let cfg = &self.cfg;
        let (step, max_iter) = (self.step, cfg.solver.max_iter);
        if step >= max_iter {
            bail!("the run is complete (solver.max_iter = {max_iter}); raise it with --set to train longer");
        }
        let accum = cfg.solver.accumulate as u64;
        let replica = self.replica;
        // This replica's first image in each global batch: its random streams continue there.
        let first_image = replica.shard(cfg.data.batch_size).start as u64;
        let mean = CollectiveMean::<B> { replica, device: self.device.clone() };
        let mut acc = GradientsParams::new();
        let mut terms_sum: BTreeMap<String, f64> = BTreeMap::new();
        for micro in 0..accum {
            let index = step * accum + micro;
            let batch = self.batches.next().context("the data loader ended early")??;
            let images = batch.images_tensor::<Autodiff<B>>(&cfg.input, &self.device)?;
            let gt = targets(&batch);
            // What the model draws from the backend's own generator (Swin's drop-path masks) is
            // keyed by (seed, step, replica) too, so a resumed run draws what an uninterrupted one
            // would.
            let backend_seed = image_stream(cfg.seed, Stream::BackendSeed, index, replica.rank as u64).random();
            Autodiff::<B>::seed(&self.device, backend_seed);
            let out = self.model().forward_train(
                images.images,
                &gt,
                &cfg.pilot,
                &mut PilotStreams::for_images(cfg.seed, index, first_image),
            );
            let losses = self.criterion.forward_replicated(
                &out,
                &gt,
                &cfg.pilot,
                &mut CriterionStreams::for_images(cfg.seed, index, first_image),
                &mean,
            )?;
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
                    self.last_checkpoint
                        .as_ref()
                        .map_or("none (no checkpoint written yet)".into(), |p| p.display().to_string())
                );
            }
            for (k, v) in terms {
                *terms_sum.entry(k).or_default() += v / accum as f64;
            }
            let total = losses.total();
            let total = if accum > 1 { total.div_scalar(accum as f64) } else { total };
            let grads = GradientsParams::from_grads(total.backward(), self.model());
            add_grads(self.model(), &mut acc, grads);
        }
        // Every replica steps on the mean of all replicas' gradients.
        let mut acc = replica.all_reduce_grads(self.model(), acc)?;
        if replica.world > 1 {
            // Report the whole batch's loss: the mean of the replicas' terms (each is already
            // divided by the averaged normalisers).
            let values: Vec<f64> = terms_sum.values().copied().collect();
            let means = replica.mean::<B>(&values, &self.device)?;
            for (v, m) in terms_sum.values_mut().zip(means) {
                *v = m;
            }
        }
        let grad_norm = clip_global(self.model(), &mut acc, cfg.solver.clip_norm);
        let lr = cfg.solver.lr_at(step);
        let split = split_grads(self.model(), acc, &self.groups);
        // The optimisers take the model by value (so its tensors can be updated in place).
        let mut model = self.model.take().expect("the model is present between steps");
        for ((opt, g), grads) in self.optims.iter_mut().zip(&self.groups).zip(split) {
            model = opt.step(lr * g.lr_multiplier, model, grads);
        }
        self.model = Some(model);
        self.step = step + 1;
        let report = StepReport { step: self.step, lr, terms: terms_sum, grad_norm };
        self.window.0 += report.loss();
        self.window.1 += 1;
        if self.step.is_multiple_of(cfg.train.log_period) || self.step == max_iter {
            let (loss, n, t) = self.window;
            let it_s = n as f64 / t.elapsed().as_secs_f64().max(1e-9);
            let images_s = it_s * (cfg.data.batch_size * cfg.solver.accumulate) as f64;
            if let Some(log) = &mut self.log {
                log.write(&serde_json::json!({
                    "type": "train", "step": self.step, "lr": lr, "loss": loss / n as f64,
                    "grad_norm": grad_norm, "it_per_s": it_s, "images_per_s": images_s,
                    "replicas": replica.world, "eta_s": (max_iter - self.step) as f64 / it_s,
                    "elapsed_s": self.started.elapsed().as_secs_f64(), "terms": report.terms,
                }))?;
            }
            self.window = (0.0, 0, Instant::now());
        }
        Ok(report)
    }

    /// Scores the current model on the validation split (`train.eval_images` images), logs the
    /// result and, when it is the best so far, saves the model to `RUN/best/`.
    pub fn evaluate(&mut self) -> anyhow::Result<Evaluation> {
        let (inner, ev) = self.score()?;
        let done = self.step;
        self.main_log()?.write(&eval_line(done, &ev))?;
        let cfg = &self.cfg;
        let (metric, value) = ev.primary();
        if self.best.as_ref().is_none_or(|b| value > b.1) {
            self.best = Some((metric.to_string(), value, done));
            let info = CheckpointInfo {
                training: Some(self.training_state()),
                ..CheckpointInfo::new(format!("training (best {metric} {value:.2} at step {done})"), Some(done))
            };
            checkpoint::save_swapped(&self.run_dir.join("best"), cfg, inner, &info)?;
        }
        Ok(ev)
    }

    /// The inference model and its evaluation on `train.eval_images` validation images, without
    /// logging anything.
    fn score(&self) -> anyhow::Result<(MpFormer<B>, Evaluation)> {
        let inner = self.model().valid();
        let cfg = &self.cfg;
        let ev = evaluate(
            &inner.model,
            cfg,
            self.val_data.as_ref(),
            &self.device,
            &self.device_name,
            cfg.train.eval_images,
            false,
        )?;
        Ok((inner, ev))
    }

    /// The log, which replica 0 alone keeps (and with it the run folder).
    fn main_log(&mut self) -> anyhow::Result<&mut Log> {
        let rank = self.replica.rank;
        self.log.as_mut().with_context(|| format!("replica {rank} does not write the run folder; replica 0 does"))
    }

    /// Where this trainer sits in a data-parallel run ([`Replica::SINGLE`] on one device).
    pub fn replica(&self) -> Replica {
        self.replica
    }

    fn training_state(&self) -> TrainingState {
        TrainingState { step: self.step, groups: self.group_names.clone(), best: self.best.clone() }
    }

    /// Writes `RUN/checkpoints/step_NNNNNNNN/` (model, optimiser states, step) and deletes all but
    /// the newest `train.keep_last`.
    pub fn checkpoint(&mut self) -> anyhow::Result<PathBuf> {
        self.main_log()?;
        let done = self.step;
        let ckpt_root = self.run_dir.join("checkpoints");
        let dir = ckpt_root.join(format!("step_{done:08}"));
        let info = CheckpointInfo {
            training: Some(self.training_state()),
            ..CheckpointInfo::new(format!("training step {done}"), Some(done))
        };
        let optims = &self.optims;
        checkpoint::save_with(&dir, &self.cfg, self.model().clone(), &info, |d| {
            let mut names = Vec::new();
            for (i, o) in optims.iter().enumerate() {
                let name = format!("optim-{i}");
                checkpoint::write_record::<Autodiff<B>, _>(d, &name, o.to_record())?;
                names.push(name);
            }
            Ok(names)
        })?;
        let all = list_checkpoints(&ckpt_root);
        for old in all.iter().take(all.len().saturating_sub(self.cfg.train.keep_last)) {
            std::fs::remove_dir_all(old).with_context(|| format!("cannot remove {}", old.display()))?;
        }
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// One replica's part of a data-parallel run: replica 0 does [`Self::run`] (evaluations,
    /// checkpoints, the report); the others only step, and return `None`.
    pub fn run_replica(self, progress: bool) -> anyhow::Result<Option<TrainReport>> {
        if self.replica.is_main() {
            return self.run(progress, &mut []).map(Some);
        }
        let mut this = self;
        while this.step < this.cfg.solver.max_iter {
            this.step()?;
        }
        Ok(None)
    }

    /// Trains to `solver.max_iter`: a step at a time, evaluating every `train.eval_period` steps
    /// and at the end, checkpointing every `train.checkpoint_period` steps and at the end, calling
    /// `hooks` after each. Then writes the final evaluation, curves and overlays into the run folder.
    pub fn run(mut self, progress: bool, hooks: &mut [&mut dyn TrainHook<B>]) -> anyhow::Result<TrainReport> {
        let max_iter = self.cfg.solver.max_iter;
        let pb = crate::evaluate::progress(max_iter, progress, "train");
        pb.set_position(self.step);
        let t_start = Instant::now();
        let mut final_eval = None;
        while self.step < max_iter {
            let r = self.step()?;
            pb.set_position(r.step);
            pb.set_message(format!("train loss {:.3} lr {:.2e}", r.loss(), r.lr));
            for h in hooks.iter_mut() {
                h.after_step(&self, &r)?;
            }
            let done = r.step;
            let period = self.cfg.train.eval_period;
            if (period > 0 && done.is_multiple_of(period)) || done == max_iter {
                pb.suspend(|| tracing::info!("evaluating at step {done}"));
                let ev = self.evaluate()?;
                for h in hooks.iter_mut() {
                    h.after_eval(&self, done, &ev)?;
                }
                if done == max_iter {
                    final_eval = Some(ev);
                }
            }
            if done.is_multiple_of(self.cfg.train.checkpoint_period) || done == max_iter {
                self.checkpoint()?;
            }
        }
        pb.finish_and_clear();
        let train_seconds = t_start.elapsed().as_secs_f64();
        // A run resumed at its end has not evaluated in this process; its log may already hold the
        // final evaluation (a kill after the last checkpoint), which is then not written twice.
        let evaluation = match final_eval {
            Some(ev) => ev,
            None => {
                let (_, ev) = self.score()?;
                let log = self.main_log()?;
                if !log.has_eval(max_iter) {
                    log.write(&eval_line(max_iter, &ev))?;
                }
                ev
            }
        };
        let inner = self.model().valid();
        let files = crate::report::finish_run(
            &self.run_dir,
            &self.cfg,
            &inner.model,
            &evaluation,
            self.val_data.as_ref(),
            &self.device,
        )?;
        Ok(TrainReport {
            run_dir: self.run_dir.clone(),
            start_step: self.start,
            final_step: max_iter,
            train_seconds,
            evaluation,
            best: self.best.clone(),
            files,
        })
    }
}
