//! `mpf-train`: the mpf command-line program.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mpf_import::{Source, import};
use mpf_train::checkpoint::CheckpointInfo;
use mpf_train::config;
use mpf_train::device::{BackendTask, DeviceChoice, dispatch};
use mpf_train::forward::ForwardTask;
use mpf_train::info::model_info;

/// Train and run MP-Former / Mask2Former on Burn.
#[derive(Parser)]
#[command(name = "mpf-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

#[derive(Subcommand)]
enum Command {
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
        /// Checkpoint folder to write.
        #[arg(long)]
        output: PathBuf,
    },
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
        mpf_train::checkpoint::save(&self.output, &self.cfg, model, &info)?;
        Ok(report)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Import { from, file, config: c, output } => {
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
    }
    Ok(())
}
