//! `mpf-train`: the mpf command-line program.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    },
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
        Command::Forward { config: c, device, inputs, size, output, print_config } => {
            let cfg = config::load(c.config.as_deref(), &c.set)?;
            if print_config {
                println!("{}", cfg.to_toml()?);
            }
            let choice: DeviceChoice = device.parse()?;
            let task = ForwardTask { config: cfg, inputs, synthetic_size: parse_size(&size)?, output: output.clone() };
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
    }
    Ok(())
}
