//! One function per command: read the arguments, drive the library, print what was done.

use std::path::PathBuf;

use anyhow::{Context, bail};
use mpf_import::Source;
use mpf_train::checkpoint::CheckpointInfo;
use mpf_train::config;
use mpf_train::device::{BackendTask, DeviceChoice, DeviceList, dispatch, dispatch_many};
use mpf_train::evaluate::EvalTask;
use mpf_train::forward::ForwardTask;
use mpf_train::info::model_info;
use mpf_train::layers::{LayerRun, LayersTask};
use mpf_train::parallel::Nodes;
use mpf_train::predict::{PredictOptions, PredictTask};
use mpf_train::train::{TrainTask, find_checkpoint, run_dir_of};

use crate::args::*;

/// No command: the tiny MP-Former on the built-in simple shapes, into a fresh `runs/simple_mpformer*`.
pub fn default_run() -> anyhow::Result<()> {
    let cfg = config::load_embedded("simple_mpformer.toml", &[])?;
    let output = fresh_run_dir("simple_mpformer");
    run_training(TrainTask { config: cfg, output, resume: None, init: None, progress: true, nodes: None }, "flex")
}

/// `train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs { config: c, device, nodes, node_rank, coordinator, node_address, output, resume, init } = args;
    let nodes = match (nodes, coordinator, node_address) {
        (1, None, None) if node_rank == 0 => None,
        (1, ..) => bail!("--node-rank, --coordinator and --node-address are for multi-node runs (--nodes 2 or more)"),
        (count, Some(coordinator), Some(address)) => {
            let n = Nodes { count, rank: node_rank, coordinator, address };
            n.validate()?;
            Some(n)
        }
        (count, _, _) => {
            bail!("--nodes {count} needs --coordinator ws://NODE0:PORT and this node's --node-address ws://HOST:PORT")
        }
    };
    let resume_ckpt = resume.as_deref().map(find_checkpoint).transpose()?;
    let init = init.as_deref().map(find_checkpoint).transpose()?;
    // Without --config, a resumed or initialising checkpoint's config applies (with --set).
    let cfg = match (resume_ckpt.as_ref().or(init.as_ref()), &c.config) {
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
    run_training(TrainTask { config: cfg, output, resume: resume_ckpt, init, progress: true, nodes }, &device)?;
    Ok(())
}

/// `eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs { checkpoint, on, output } = args;
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
    Ok(())
}

/// `coco-eval`.
pub fn coco_eval(args: CocoEvalArgs) -> anyhow::Result<()> {
    let CocoEvalArgs { gt, dt, iou_type, gt_folder, dt_folder, output } = args;
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
    Ok(())
}

/// `layers`.
pub fn layers(args: LayersArgs) -> anyhow::Result<()> {
    let LayersArgs { checkpoints, labels, on, output } = args;
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
                let name =
                    |p: &std::path::Path| p.file_name().map_or(String::new(), |n| n.to_string_lossy().to_string());
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
        for (name, v) in [("Util^i vs last", &m.util_last), ("Util^i vs prev", &m.util_prev), ("mIoU-L^i", &m.miou_l)] {
            println!("  {name:<15}{}", v.iter().map(|x| format!("{x:>6.3}")).collect::<String>());
        }
    }
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// `predict`.
pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let PredictArgs { checkpoint, set, input, output, layers, min_score, device } = args;
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
    Ok(())
}

/// `info`.
pub fn info(args: InfoArgs) -> anyhow::Result<()> {
    let InfoArgs { config: c, size, json } = args;
    let cfg = config::load(c.config.as_deref(), &c.set)?;
    let info = dispatch(DeviceChoice::Flex, InfoTask { cfg, size: parse_size(&size)? })??;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", info.table());
    }
    Ok(())
}

/// `forward`.
pub fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let ForwardArgs { config: c, device, inputs, size, output, print_config, checkpoint } = args;
    let cfg = match (&checkpoint, &c.config) {
        (Some(dir), None) => mpf_train::checkpoint::config_of(dir, &c.set)?,
        _ => config::load(c.config.as_deref(), &c.set)?,
    };
    if print_config {
        println!("{}", cfg.to_toml()?);
    }
    let choice: DeviceChoice = device.parse()?;
    let task =
        ForwardTask { config: cfg, inputs, synthetic_size: parse_size(&size)?, output: output.clone(), checkpoint };
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
    Ok(())
}

/// `import`.
pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let ImportArgs { from, file, config: c, write_config, output, force } = args;
    if !force && output.join("checkpoint.json").exists() {
        bail!(
            "{} already holds a checkpoint; pass --force to replace it, or choose another --output",
            output.display()
        );
    }
    let source = match from {
        ImportFrom::Hf => Source::HuggingFace,
        ImportFrom::Detectron2 => Source::Detectron2,
        ImportFrom::Torchvision => Source::Torchvision,
    };
    let cfg = match &write_config {
        None => config::load(c.config.as_deref(), &c.set)?,
        Some(toml) => {
            anyhow::ensure!(
                from == ImportFrom::Hf,
                "--write-config needs --from hf: only transformers checkpoints carry their architecture (config.json); \
                 for {} files start from a config under configs/ (e.g. configs/coco/instance/mpformer_r50_12ep.toml)",
                source.name()
            );
            anyhow::ensure!(
                force || !toml.exists(),
                "--write-config {} exists; pass --force to overwrite it",
                toml.display()
            );
            if let Some(dir) = toml.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let json = file.with_file_name("config.json");
            let arch = mpf_import::hf_config(&json).with_context(|| {
                format!("--write-config reads the transformers config.json beside {}", file.display())
            })?;
            let mut cfg = config::load(c.config.as_deref(), &[])?;
            cfg.model = arch.model;
            cfg.class_names = arch.class_names;
            if cfg.thing_classes.len() != cfg.model.num_classes {
                cfg.thing_classes.clear();
            }
            // Written, then read back with the overrides, so that --set applies to every section
            // and the file holds exactly what the import uses.
            let header = format!("# Written by `mpf-train import --from hf --write-config` from {}.\n", json.display());
            let write = |cfg: &config::ExperimentConfig| -> anyhow::Result<()> {
                std::fs::write(toml, format!("{header}{}", cfg.to_toml()?))
                    .with_context(|| format!("cannot write {}", toml.display()))
            };
            write(&cfg)?;
            let cfg = config::load(Some(toml), &c.set)?;
            write(&cfg)?;
            println!(
                "wrote {} ({} classes, {:?} backbone)",
                toml.display(),
                cfg.model.num_classes,
                cfg.model.backbone.kind
            );
            cfg
        }
    };
    let report = dispatch(DeviceChoice::Flex, ImportTask { cfg, source, file: file.clone(), output: output.clone() })??;
    println!("imported {} parameter tensors from {} ({})", report.loaded, file.display(), source.name());
    let (counters, other): (Vec<&String>, Vec<&String>) =
        report.ignored.iter().partition(|k| k.ends_with("num_batches_tracked"));
    if !report.ignored.is_empty() {
        let other: Vec<&str> = other.iter().map(|s| s.as_str()).collect();
        println!("skipped {} batch-norm counters and {} other entries {:?}", counters.len(), other.len(), other);
    }
    if let Some(note) = &report.label_embedding_note {
        println!("{note}");
    }
    println!("checkpoint: {}", output.display());
    Ok(())
}

/// `synth`.
pub fn synth(args: SynthArgs) -> anyhow::Result<()> {
    let SynthArgs { out, images, seed, size, style } = args;
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
    Ok(())
}

/// `ablation`.
pub fn ablation(args: AblationArgs) -> anyhow::Result<()> {
    let AblationArgs { grids, scale, seeds, steps, jobs, data, images, val_data, val_images, set, device, out } = args;
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
    Ok(())
}

/// `data-info`.
pub fn data_info(args: DataInfoArgs) -> anyhow::Result<()> {
    let DataInfoArgs { config: c, split, data, images, json } = args;
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
    Ok(())
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

/// What `import` did, for printing.
struct ImportSummary {
    loaded: usize,
    ignored: Vec<String>,
    label_embedding_note: Option<String>,
}

impl BackendTask for ImportTask {
    type Output = anyhow::Result<ImportSummary>;
    fn run<B: burn::prelude::Backend>(self, device: B::Device, _: &str) -> Self::Output {
        B::seed(&device, self.cfg.seed);
        let model = self.cfg.model.init::<B>(&device)?;
        let (model, report) = mpf_import::import(model, &self.file, self.source, &device)?;
        let info = CheckpointInfo::new(format!("import {} {}", self.source.name(), self.file.display()), None);
        let mut model = mpf_pilot::forward::MpFormer::new(model, &self.cfg.pilot, &device);
        let mut loaded = report.loaded;
        let label_embedding_note = match (report.label_embedding, model.label_enc.as_mut()) {
            (Some(t), Some(enc)) => {
                let expected = enc.weight.dims().to_vec();
                anyhow::ensure!(
                    t.shape == expected,
                    "{}: `{}` has shape {:?}, the MP label embedding needs {expected:?} (model.num_classes × model.decoder.hidden_dim)",
                    self.file.display(),
                    mpf_import::LABEL_ENC,
                    t.shape
                );
                enc.weight = burn::module::Param::from_tensor(burn::prelude::Tensor::from_data(
                    burn::prelude::TensorData::new(t.data, t.shape),
                    &device,
                ));
                loaded += 1;
                Some("kept MP-Former's label embedding (pilot enabled)".to_string())
            }
            (Some(_), None) => Some(format!(
                "left out `{}` (MP-Former's training-only label embedding): the pilot is off; set pilot.enabled=true to keep it for further training",
                mpf_import::LABEL_ENC
            )),
            (None, Some(_)) if self.source == Source::Detectron2 => {
                Some("the file has no MP label embedding: the pilot's starts from its random initialisation".into())
            }
            _ => None,
        };
        mpf_train::checkpoint::save(&self.output, &self.cfg, model, &info)?;
        Ok(ImportSummary { loaded, ignored: report.ignored, label_embedding_note })
    }
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
    let devices: DeviceList = device.parse()?;
    let cfg = &task.config;
    let replicas = devices.len() * task.nodes.as_ref().map_or(1, |n| n.count as usize);
    let nodes = task.nodes.as_ref().map_or(String::new(), |n| format!(" (node {} of {})", n.rank, n.count));
    println!(
        "training {} ({} steps, batch {} × accumulate {}, pilot {}) on {devices}{nodes}{} into {}",
        if cfg.pilot.enabled { "MP-Former" } else { "Mask2Former" },
        cfg.solver.max_iter,
        cfg.data.batch_size,
        cfg.solver.accumulate,
        if cfg.pilot.enabled { "on" } else { "off" },
        if replicas > 1 {
            format!(", {replicas} replicas of {} images", cfg.data.batch_size / replicas.max(1))
        } else {
            String::new()
        },
        task.output.display()
    );
    let Some(report) = dispatch_many(&devices, task)?? else {
        println!("node done; node 0 holds the run folder, its evaluations and report");
        return Ok(());
    };
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
