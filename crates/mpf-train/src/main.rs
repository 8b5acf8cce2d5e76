//! `mpf-train`: the mpf command-line program.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mpf_import::{Source, import};
use mpf_train::checkpoint::CheckpointInfo;
use mpf_train::config;
use mpf_train::device::{BackendTask, DeviceChoice, dispatch};
use mpf_train::evaluate::EvalTask;
use mpf_train::forward::ForwardTask;
use mpf_train::info::model_info;
use mpf_train::layers::{LayerRun, LayersTask};
use mpf_train::predict::{PredictOptions, PredictTask};
use mpf_train::train::{TrainTask, find_checkpoint, run_dir_of};

/// Train and run MP-Former / Mask2Former on Burn.
///
/// Without a command, trains the tiny MP-Former on the built-in simple synthetic shapes on the
/// CPU (under 5 minutes on 2 cores in a release build; the config is `simple_mpformer.toml`),
/// evaluates it and draws its predictions.
#[derive(Parser)]
#[command(name = "mpf-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options shared by commands that read an experiment config.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Experiment config (TOML). Without it, the defaults (COCO R50 Mask2Former) apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config key, e.g. `--set model.decoder.num_queries=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// What a checkpoint is evaluated on, shared by `eval` and `layers`.
#[derive(clap::Args)]
struct EvalData {
    /// Override a config key of the checkpoint(s) (repeatable), e.g. `--set data.test_short_side=800`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A COCO instance or panoptic JSON to use instead of the config's validation split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Image folder for --data (default: the JSON's folder).
    #[arg(long)]
    images: Option<PathBuf>,
    /// At most this many images (0 = all).
    #[arg(long, default_value_t = 0)]
    max_images: usize,
    /// Device: flex, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "flex")]
    device: String,
}

impl EvalData {
    /// `--set` overrides with `--data` turned into `[data]` keys of the validation split.
    fn overrides(&self) -> anyhow::Result<Vec<String>> {
        let mut sets = self.set.clone();
        if let Some(path) = &self.data {
            sets.extend(mpf_train::cli::coco_data_overrides(path, self.images.as_deref(), "val")?);
        }
        Ok(sets)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (Mask2Former, MP-Former or an appendix-C variant, as the config says).
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        /// Device: flex, wgpu, cuda or cuda:N (among the compiled-in backends).
        #[arg(long, default_value = "flex")]
        device: String,
        /// Run folder (default: runs/<config name>, or the resumed run's folder).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Continue from a checkpoint folder, or from the newest checkpoint of a run folder. The
        /// config comes from the checkpoint unless --config is given; --set still applies
        /// (e.g. a longer solver.max_iter).
        #[arg(long)]
        resume: Option<PathBuf>,
    },
    /// Evaluate a checkpoint: COCO results JSON + mask AP (instance), PQ + mask AP (panoptic) or mIoU (semantic),
    /// and images per second with and without post-processing.
    Eval {
        /// Checkpoint folder (its config.toml is used).
        #[arg(long)]
        checkpoint: PathBuf,
        #[command(flatten)]
        on: EvalData,
        /// Folder for results.json and metrics.json (default: CHECKPOINT/eval).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Score any COCO-format results file against a COCO ground truth: mask or box AP (pycocotools'
    /// 12 numbers), or PQ when the ground truth is a COCO panoptic JSON.
    CocoEval {
        /// Ground truth: COCO instances JSON, or COCO panoptic JSON (detected by `segments_info`).
        #[arg(long)]
        gt: PathBuf,
        /// Results: a COCO results JSON array, or a COCO panoptic predictions JSON.
        #[arg(long)]
        dt: PathBuf,
        /// What instance results overlap: segm (masks) or bbox (boxes).
        #[arg(long, value_enum, default_value = "segm")]
        iou_type: IouArg,
        /// Panoptic PNG folder of the ground truth (default: the JSON's path without `.json`).
        #[arg(long)]
        gt_folder: Option<PathBuf>,
        /// Panoptic PNG folder of the results (default: the JSON's path without `.json`).
        #[arg(long)]
        dt_folder: Option<PathBuf>,
        /// Also write the metrics as JSON here.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// MP-Former's layer-consistency analysis: Util^i (against the last and the previous
    /// prediction) and mIoU-L^i for one or more checkpoints, as JSON and PNG plots.
    Layers {
        /// Checkpoint folders to compare (repeatable).
        #[arg(long = "checkpoint", required = true)]
        checkpoints: Vec<PathBuf>,
        /// A name per checkpoint for the plots (default: RUN/CHECKPOINT folder names).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        on: EvalData,
        /// Folder for layers.json, util.png and miou_l.png.
        #[arg(long, default_value = "runs/layers")]
        output: PathBuf,
    },
    /// Run a checkpoint on images: overlay PNGs and masks as COCO RLE JSON.
    Predict {
        /// Checkpoint folder (its config.toml is used).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Override one config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// An image file or a folder of images.
        #[arg(long)]
        input: PathBuf,
        /// Output folder.
        #[arg(long)]
        output: PathBuf,
        /// Also draw, per shown query, its mask at each decoder prediction (NAME_layers.png).
        #[arg(long)]
        layers: bool,
        /// Instances scoring below this are not drawn or written (0 to 1).
        #[arg(long, default_value_t = 0.5, allow_negative_numbers = true, value_parser = score_in_unit_range)]
        min_score: f32,
        /// Device: flex, wgpu, cuda or cuda:N.
        #[arg(long, default_value = "flex")]
        device: String,
    },
    /// Print parameter counts per part and a FLOPs estimate.
    Info {
        #[command(flatten)]
        config: ConfigArgs,
        /// Input size for the FLOPs estimate, HEIGHTxWIDTH.
        #[arg(long, default_value = "800x1216")]
        size: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one inference pass (backbone → pixel decoder → decoder → post-processing) and report.
    Forward {
        #[command(flatten)]
        config: ConfigArgs,
        /// Device: flex, wgpu, cuda or cuda:N (among the compiled-in backends).
        #[arg(long, default_value = "flex")]
        device: String,
        /// Image files (PNG, JPEG, TIFF). Without any, a synthetic test card is used.
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Size of the synthetic test card, HEIGHTxWIDTH.
        #[arg(long, default_value = "256x320")]
        size: String,
        /// Output folder for forward.json and label maps.
        #[arg(long, default_value = "runs/forward")]
        output: PathBuf,
        /// Print the resolved config before running.
        #[arg(long)]
        print_config: bool,
        /// Load weights (and, unless --config is given, the config) from this checkpoint folder.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Convert weights trained elsewhere into an mpf checkpoint.
    Import {
        /// `hf`: a transformers Mask2FormerForUniversalSegmentation `.safetensors` state dict (whole
        /// model); `torchvision`: a ResNet `.pth` state dict (backbone only, the rest initialised
        /// from the config's seed).
        #[arg(long, value_enum)]
        from: ImportFrom,
        /// The weights file.
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
        /// Checkpoint folder to write (refused when it holds a checkpoint, unless --force).
        #[arg(long)]
        output: PathBuf,
        /// Replace a checkpoint already at --output.
        #[arg(long)]
        force: bool,
    },
    /// The paper's ablations (appendix Tables 8 and 10): every variant of one or more grids
    /// (`configs/ablation/*.toml`) trained over several seeds at a scale, then `results.md`,
    /// `results.json` and plots per grid. Re-running skips finished runs and resumes interrupted
    /// ones. `cargo xtask ablation` builds this program in release and calls this command.
    Ablation {
        /// A grid name (`configs/ablation/NAME.toml`) or a grid file (repeatable).
        #[arg(long = "grid", default_value = "table10")]
        grids: Vec<String>,
        /// `smoke` (CI: minutes), `cpu` (variants separate on the built-in data) or `gpu` (COCO recipe).
        #[arg(long, default_value = "cpu")]
        scale: String,
        /// Seeds per variant (default: the scale's).
        #[arg(long)]
        seeds: Option<usize>,
        /// Training steps per run; the schedule (drops, warmup, periods) is stretched to fit.
        #[arg(long)]
        steps: Option<u64>,
        /// Runs at a time; the cores are shared evenly (at most one job per core).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// A COCO instance or panoptic JSON to train on instead of the config's data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Image folder for --data (default: the JSON's folder).
        #[arg(long)]
        images: Option<PathBuf>,
        /// A COCO JSON to evaluate on (default: --data itself, which then measures fit, not generalisation).
        #[arg(long, requires = "data")]
        val_data: Option<PathBuf>,
        /// Image folder for --val-data (default: the JSON's folder).
        #[arg(long, requires = "val_data")]
        val_images: Option<PathBuf>,
        /// Override a config key of every run (repeatable), applied last.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Device of every run (default: the scale's, else flex).
        #[arg(long)]
        device: Option<String>,
        /// Output folder; each grid writes into OUT/GRID (default: runs/ablation-SCALE).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the synthetic shapes data set as files: COCO instance JSON, COCO panoptic and
    /// semantic label PNGs.
    Synth {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 100)]
        images: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// `cluttered` (the benchmark set) or `simple` (the default run's set).
        #[arg(long, value_enum, default_value_t = StyleArg::Cluttered)]
        style: StyleArg,
    },
    /// Read a data set as training would and print counts per class, objects per image and what
    /// was skipped.
    DataInfo {
        #[command(flatten)]
        config: ConfigArgs,
        /// Which split of the config's `[data]` to read.
        #[arg(long, value_enum, default_value = "train")]
        split: SplitArg,
        /// Shortcut for a COCO instance or panoptic JSON (sets data.format and the split's
        /// annotations; panoptic is detected by `segments_info`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Image folder for --data (default: the JSON's folder).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IouArg {
    Segm,
    Bbox,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Val,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum StyleArg {
    Cluttered,
    Simple,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFrom {
    Hf,
    Torchvision,
}

fn parse_size(s: &str) -> anyhow::Result<[usize; 2]> {
    let (h, w) = s.split_once('x').with_context(|| format!("size `{s}` must be HEIGHTxWIDTH"))?;
    let (h, w) = (
        h.trim().parse().with_context(|| format!("bad height in `{s}`"))?,
        w.trim().parse().with_context(|| format!("bad width in `{s}`"))?,
    );
    anyhow::ensure!(h > 0 && w > 0, "size `{s}` must be positive");
    Ok([h, w])
}

struct InfoTask {
    cfg: config::ExperimentConfig,
    size: [usize; 2],
}

impl BackendTask for InfoTask {
    type Output = anyhow::Result<mpf_train::info::ModelInfo>;
    fn run<B: burn::prelude::Backend>(self, device: B::Device, _: &str) -> Self::Output {
        model_info::<B>(&self.cfg, self.size, &device)
    }
}

struct ImportTask {
    cfg: config::ExperimentConfig,
    source: Source,
    file: PathBuf,
    output: PathBuf,
}

impl BackendTask for ImportTask {
    type Output = anyhow::Result<mpf_import::ImportReport>;
    fn run<B: burn::prelude::Backend>(self, device: B::Device, _: &str) -> Self::Output {
        B::seed(&device, self.cfg.seed);
        let model = self.cfg.model.init::<B>(&device)?;
        let (model, report) = import(model, &self.file, self.source, &device)?;
        let kind = match self.source {
            Source::HuggingFace => "hf",
            Source::Torchvision => "torchvision",
        };
        let info = CheckpointInfo::new(format!("import {kind} {}", self.file.display()), None);
        let model = mpf_pilot::forward::MpFormer::new(model, &self.cfg.pilot, &device);
        mpf_train::checkpoint::save(&self.output, &self.cfg, model, &info)?;
        Ok(report)
    }
}

/// Parses a score threshold in `[0, 1]`.
fn score_in_unit_range(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is outside 0..=1")) }
}

/// The first of `runs/NAME`, `runs/NAME-1`, … that holds no checkpoint yet.
fn fresh_run_dir(name: &str) -> PathBuf {
    (0..)
        .map(
            |i| {
                if i == 0 {
                    PathBuf::from("runs").join(name)
                } else {
                    PathBuf::from("runs").join(format!("{name}-{i}"))
                }
            },
        )
        .find(|p| !p.join("checkpoints").exists())
        .expect("some folder name is free")
}

fn run_training(task: TrainTask, device: &str) -> anyhow::Result<()> {
    let choice: DeviceChoice = device.parse()?;
    let cfg = &task.config;
    println!(
        "training {} ({} steps, batch {} × accumulate {}, pilot {}) on {choice} into {}",
        if cfg.pilot.enabled { "MP-Former" } else { "Mask2Former" },
        cfg.solver.max_iter,
        cfg.data.batch_size,
        cfg.solver.accumulate,
        if cfg.pilot.enabled { "on" } else { "off" },
        task.output.display()
    );
    let report = dispatch(choice, task)??;
    print!("{}", report.evaluation.table());
    let (metric, value) = report.evaluation.primary();
    println!(
        "trained steps {}..{} in {:.0} s; final {metric} {value:.2}",
        report.start_step, report.final_step, report.train_seconds
    );
    if let Some((m, v, s)) = &report.best {
        println!("best {m} {v:.2} at step {s}: {}", report.run_dir.join("best").display());
    }
    println!("run folder: {}", report.run_dir.display());
    println!("  log:         {}", report.run_dir.join("metrics.jsonl").display());
    for f in &report.files {
        println!("  {:<12} {}", format!("{}:", f.file_name().map_or("".into(), |n| n.to_string_lossy())), f.display());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    mpf_train::keep_freed_memory();
    mpf_train::quiet_broken_pipe();
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        let cfg = config::load_embedded("simple_mpformer.toml", &[])?;
        let output = fresh_run_dir("simple_mpformer");
        return run_training(TrainTask { config: cfg, output, resume: None, progress: true }, "flex");
    };
    match command {
        Command::Train { config: c, device, output, resume } => {
            let resume_ckpt = resume.as_deref().map(find_checkpoint).transpose()?;
            let cfg = match (&resume_ckpt, &c.config) {
                (Some(dir), None) => mpf_train::checkpoint::config_of(dir, &c.set)?,
                _ => config::load(c.config.as_deref(), &c.set)?,
            };
            let output = match (output, &resume_ckpt) {
                (Some(o), _) => o,
                (None, Some(ck)) => run_dir_of(ck),
                (None, None) => {
                    let stem = c
                        .config
                        .as_deref()
                        .and_then(|p| p.file_stem())
                        .map_or("default".into(), |s| s.to_string_lossy().to_string());
                    PathBuf::from("runs").join(stem)
                }
            };
            run_training(TrainTask { config: cfg, output, resume: resume_ckpt, progress: true }, &device)?;
        }
        Command::Eval { checkpoint, on, output } => {
            let cfg = mpf_train::checkpoint::config_of(&checkpoint, &on.overrides()?)?;
            let (max_images, device) = (on.max_images, on.device);
            let output = output.unwrap_or_else(|| checkpoint.join("eval"));
            let task = EvalTask { checkpoint, config: cfg, max_images, output: output.clone() };
            let ev = dispatch(device.parse()?, task)??;
            print!("{}", ev.table());
            println!("metrics: {}", output.join("metrics.json").display());
            if !ev.rows.is_empty() || ev.coco.is_some() {
                println!("results: {}", output.join("results.json").display());
            }
        }
        Command::CocoEval { gt, dt, iou_type, gt_folder, dt_folder, output } => {
            let text = std::fs::read_to_string(&gt).with_context(|| format!("cannot read {}", gt.display()))?;
            let json = if text.contains("\"segments_info\"") {
                let g = mpf_eval::panoptic::load(&gt, gt_folder.as_deref())?;
                let d = mpf_eval::panoptic::load(&dt, dt_folder.as_deref())?;
                let m = mpf_eval::panoptic::evaluate(g, d)?;
                print!("{}", m.table());
                serde_json::to_string_pretty(&m)?
            } else {
                let kind = match iou_type {
                    IouArg::Segm => mpf_eval::coco::IouKind::Segm,
                    IouArg::Bbox => mpf_eval::coco::IouKind::Bbox,
                };
                let m = mpf_eval::coco::evaluate_files(&gt, &dt, kind)?;
                print!("{}", m.table());
                serde_json::to_string_pretty(&m)?
            };
            if let Some(path) = output {
                std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
                println!("metrics: {}", path.display());
            }
        }
        Command::Layers { checkpoints, labels, on, output } => {
            anyhow::ensure!(
                labels.is_empty() || labels.len() == checkpoints.len(),
                "give one --label per --checkpoint ({} labels for {} checkpoints)",
                labels.len(),
                checkpoints.len()
            );
            let sets = on.overrides()?;
            let (max_images, device) = (on.max_images, on.device.clone());
            let runs = checkpoints
                .iter()
                .enumerate()
                .map(|(k, ck)| {
                    let label = labels.get(k).cloned().unwrap_or_else(|| {
                        let name = |p: &std::path::Path| {
                            p.file_name().map_or(String::new(), |n| n.to_string_lossy().to_string())
                        };
                        // RUN/best or RUN/checkpoints/step_N → "RUN/best", "RUN/step_N".
                        let run = match ck.parent() {
                            Some(p) if p.join("metrics.jsonl").exists() => p.to_path_buf(),
                            _ => run_dir_of(ck),
                        };
                        if run == *ck { name(ck) } else { format!("{}/{}", name(&run), name(ck)) }
                    });
                    Ok(LayerRun { label, checkpoint: ck.clone(), config: mpf_train::checkpoint::config_of(ck, &sets)? })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (reports, files) = dispatch(device.parse()?, LayersTask { runs, max_images, output, progress: true })??;
            for r in &reports {
                let m = &r.metrics;
                println!("{} ({} images, {} objects):", r.label, m.images, m.objects);
                println!("  layer i        {}", (1..=m.util_last.len()).map(|i| format!("{i:>6}")).collect::<String>());
                for (name, v) in
                    [("Util^i vs last", &m.util_last), ("Util^i vs prev", &m.util_prev), ("mIoU-L^i", &m.miou_l)]
                {
                    println!("  {name:<15}{}", v.iter().map(|x| format!("{x:>6.3}")).collect::<String>());
                }
            }
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        Command::Predict { checkpoint, set, input, output, layers, min_score, device } => {
            let cfg = mpf_train::checkpoint::config_of(&checkpoint, &set)?;
            let inputs = mpf_train::predict::list_images(&input)?;
            let task = PredictTask {
                checkpoint,
                config: cfg,
                inputs,
                output: output.clone(),
                options: PredictOptions { min_score, layers },
                progress: true,
            };
            let report = dispatch(device.parse()?, task)??;
            for p in &report.predictions {
                println!("{}: {} masks → {}", p.file, p.masks.len(), p.overlay);
                if let Some(l) = &p.layers {
                    println!("  layers: {l}");
                }
            }
            println!("masks (COCO RLE): {}", output.join("predictions.json").display());
            if !report.failures.is_empty() {
                for (file, e) in &report.failures {
                    eprintln!("failed: {file}: {e}");
                }
                bail!(
                    "{} of {} images failed (listed in {}); the others were predicted",
                    report.failures.len(),
                    report.failures.len() + report.predictions.len(),
                    output.join("errors.json").display()
                );
            }
        }
        Command::Info { config: c, size, json } => {
            let cfg = config::load(c.config.as_deref(), &c.set)?;
            let info = dispatch(DeviceChoice::Flex, InfoTask { cfg, size: parse_size(&size)? })??;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", info.table());
            }
        }
        Command::Forward { config: c, device, inputs, size, output, print_config, checkpoint } => {
            let cfg = match (&checkpoint, &c.config) {
                (Some(dir), None) => mpf_train::checkpoint::config_of(dir, &c.set)?,
                _ => config::load(c.config.as_deref(), &c.set)?,
            };
            if print_config {
                println!("{}", cfg.to_toml()?);
            }
            let choice: DeviceChoice = device.parse()?;
            let task = ForwardTask {
                config: cfg,
                inputs,
                synthetic_size: parse_size(&size)?,
                output: output.clone(),
                checkpoint,
            };
            let report = dispatch(choice, task)??;
            for img in &report.images {
                println!(
                    "{}: {}×{} (padded {}×{}) forward {:.1} ms, post-processing {:.1} ms on {}",
                    img.file,
                    img.size[0],
                    img.size[1],
                    img.padded[0],
                    img.padded[1],
                    img.forward_ms,
                    img.postprocess_ms,
                    report.device
                );
            }
            println!("weights: {}", report.weights);
            println!("report: {}", output.join("forward.json").display());
        }
        Command::Import { from, file, config: c, output, force } => {
            if !force && output.join("checkpoint.json").exists() {
                bail!(
                    "{} already holds a checkpoint; pass --force to replace it, or choose another --output",
                    output.display()
                );
            }
            let cfg = config::load(c.config.as_deref(), &c.set)?;
            let (source, name) = match from {
                ImportFrom::Hf => (Source::HuggingFace, "hf"),
                ImportFrom::Torchvision => (Source::Torchvision, "torchvision"),
            };
            let report =
                dispatch(DeviceChoice::Flex, ImportTask { cfg, source, file: file.clone(), output: output.clone() })??;
            println!("imported {} parameter tensors from {} ({name})", report.loaded, file.display());
            let (counters, other): (Vec<&String>, Vec<&String>) =
                report.ignored.iter().partition(|k| k.ends_with("num_batches_tracked"));
            if !report.ignored.is_empty() {
                let other: Vec<&str> = other.iter().map(|s| s.as_str()).collect();
                println!(
                    "skipped {} batch-norm counters and {} other entries {:?}",
                    counters.len(),
                    other.len(),
                    other
                );
            }
            println!("checkpoint: {}", output.display());
        }
        Command::Synth { out, images, seed, size, style } => {
            anyhow::ensure!(size >= 16, "--size must be at least 16 pixels");
            let style = match style {
                StyleArg::Cluttered => mpf_data::synth::SynthStyle::Cluttered,
                StyleArg::Simple => mpf_data::synth::SynthStyle::Simple,
            };
            let n = mpf_data::synth::write(&out, style, images, seed, size)?;
            println!("wrote {images} images with {n} objects to {}", out.display());
            println!("  instances: {}", out.join("instances.json").display());
            println!("  panoptic:  {} + {}", out.join("panoptic.json").display(), out.join("panoptic").display());
            println!("  semantic:  {} (0 = background, k + 1 = class k)", out.join("semantic").display());
        }
        Command::Ablation {
            grids,
            scale,
            seeds,
            steps,
            jobs,
            data,
            images,
            val_data,
            val_images,
            set,
            device,
            out,
        } => {
            use mpf_train::ablation::{self, AblationOptions, UserData, grid};
            let opts = AblationOptions {
                grids: grids.iter().map(|g| grid::Grid::find(g)).collect::<Result<_, _>>()?,
                scale: grid::scale(&scale)?,
                out: out.unwrap_or_else(|| PathBuf::from("runs").join(format!("ablation-{scale}"))),
                scale_name: scale,
                seeds,
                steps,
                jobs,
                data: data.map(|train| UserData { train, train_images: images, val: val_data, val_images }),
                sets: set,
                device,
                exe: std::env::current_exe().context("cannot locate this program")?,
                progress: true,
            };
            ablation::run(&opts)?;
        }
        Command::DataInfo { config: c, split, data, images, json } => {
            let mut sets = c.set.clone();
            let split_name = match split {
                SplitArg::Train => "train",
                SplitArg::Val => "val",
            };
            if let Some(path) = &data {
                sets.extend(mpf_train::cli::coco_data_overrides(path, images.as_deref(), split_name)?);
            }
            let cfg = config::load(c.config.as_deref(), &sets)?;
            let split = match split {
                SplitArg::Train => mpf_data::config::Split::Train,
                SplitArg::Val => mpf_data::config::Split::Val,
            };
            let ds = cfg.data.open(split, cfg.seed, &cfg.class_names)?;
            let stats = mpf_train::data_info::gather(ds.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", mpf_train::data_info::table(&stats, cfg.model.num_classes));
            }
        }
    }
    Ok(())
}
