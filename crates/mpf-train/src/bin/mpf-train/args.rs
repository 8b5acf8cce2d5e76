//! The command line: one `clap` argument struct per command.

use std::path::PathBuf;

use clap::Subcommand;

/// Options shared by commands that read an experiment config.
#[derive(clap::Args)]
pub struct ConfigArgs {
    /// Experiment config (TOML). Without it, the defaults (COCO R50 Mask2Former) apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one config key, e.g. `--set model.decoder.num_queries=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// What a checkpoint is evaluated on, shared by `eval` and `layers`.
#[derive(clap::Args)]
pub struct EvalData {
    /// Override a config key of the checkpoint(s) (repeatable), e.g. `--set data.test_short_side=800`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A COCO instance or panoptic JSON to use instead of the config's validation split.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image folder for --data (default: the JSON's folder).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// At most this many images (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_images: usize,
    /// Device: flex, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "flex")]
    pub device: String,
}

impl EvalData {
    /// `--set` overrides with `--data` turned into `[data]` keys of the validation split.
    pub fn overrides(&self) -> anyhow::Result<Vec<String>> {
        let mut sets = self.set.clone();
        if let Some(path) = &self.data {
            sets.extend(mpf_train::cli::coco_data_overrides(path, self.images.as_deref(), "val")?);
        }
        Ok(sets)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a model (Mask2Former, MP-Former or an appendix-C variant, as the config says).
    Train(TrainArgs),
    /// Evaluate a checkpoint: COCO results JSON + mask AP (instance), PQ + mask AP (panoptic) or mIoU (semantic),
    /// and images per second with and without post-processing.
    Eval(EvalArgs),
    /// Score any COCO-format results file against a COCO ground truth: mask or box AP (pycocotools'
    /// 12 numbers), or PQ when the ground truth is a COCO panoptic JSON.
    CocoEval(CocoEvalArgs),
    /// MP-Former's layer-consistency analysis: Util^i (against the last and the previous
    /// prediction) and mIoU-L^i for one or more checkpoints, as JSON and PNG plots.
    Layers(LayersArgs),
    /// Run a checkpoint on images: overlay PNGs and masks as COCO RLE JSON.
    Predict(PredictArgs),
    /// Print parameter counts per part and a FLOPs estimate.
    Info(InfoArgs),
    /// Run one inference pass (backbone → pixel decoder → decoder → post-processing) and report.
    Forward(ForwardArgs),
    /// Convert weights trained elsewhere into an mpf checkpoint.
    Import(ImportArgs),
    /// The paper's ablations (appendix Tables 8 and 10): every variant of one or more grids
    /// (`configs/ablation/*.toml`) trained over several seeds at a scale, then `results.md`,
    /// `results.json` and plots per grid. Re-running skips finished runs and resumes interrupted
    /// ones. `cargo xtask ablation` builds this program in release and calls this command.
    Ablation(AblationArgs),
    /// Write the synthetic shapes data set as files: COCO instance JSON, COCO panoptic and
    /// semantic label PNGs.
    Synth(SynthArgs),
    /// Read a data set as training would and print counts per class, objects per image and what
    /// was skipped.
    DataInfo(DataInfoArgs),
}

/// Arguments of `train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Device, or devices for data-parallel training (one replica each; `data.batch_size` is the
    /// total batch, split evenly): flex, wgpu, wgpu:N, cuda, cuda:N, a list such as
    /// `cuda:0,cuda:1`, or `NAME×N` / `NAME*N` for the first N devices (`cuda×4`, `flex×2`).
    #[arg(long, visible_alias = "devices", default_value = "flex")]
    pub device: String,
    /// Number of nodes (processes, usually one per machine) of a multi-node run; each runs this
    /// command with its own --node-rank. 1 = this process is the whole run.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// This node's rank, 0..nodes. Node 0 hosts the coordinator and writes the run folder.
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// Multi-node: the coordinator's address, ws://HOST:PORT, with HOST node 0's address (node 0
    /// listens on PORT on all interfaces).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Multi-node: this node's address as the other nodes reach it, ws://HOST:PORT; PORT is where
    /// it serves tensors to them (one free port per node).
    #[arg(long)]
    pub node_address: Option<String>,
    /// Run folder (default: runs/<config name>, or the resumed run's folder).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Continue from a checkpoint folder, or from the newest checkpoint of a run folder. The
    /// config comes from the checkpoint unless --config is given; --set still applies
    /// (e.g. a longer solver.max_iter).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start from the weights of this checkpoint folder (e.g. one written by `import`) at step 0
    /// with fresh optimiser states: fine-tuning. Its architecture must be the config's.
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
}

/// Arguments of `eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Checkpoint folder (its config.toml is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub on: EvalData,
    /// Folder for results.json and metrics.json (default: CHECKPOINT/eval).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Arguments of `coco-eval`.
#[derive(clap::Args)]
pub struct CocoEvalArgs {
    /// Ground truth: COCO instances JSON, or COCO panoptic JSON (detected by `segments_info`).
    #[arg(long)]
    pub gt: PathBuf,
    /// Results: a COCO results JSON array, or a COCO panoptic predictions JSON.
    #[arg(long)]
    pub dt: PathBuf,
    /// What instance results overlap: segm (masks) or bbox (boxes).
    #[arg(long, value_enum, default_value = "segm")]
    pub iou_type: IouArg,
    /// Panoptic PNG folder of the ground truth (default: the JSON's path without `.json`).
    #[arg(long)]
    pub gt_folder: Option<PathBuf>,
    /// Panoptic PNG folder of the results (default: the JSON's path without `.json`).
    #[arg(long)]
    pub dt_folder: Option<PathBuf>,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Arguments of `layers`.
#[derive(clap::Args)]
pub struct LayersArgs {
    /// Checkpoint folders to compare (repeatable).
    #[arg(long = "checkpoint", required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// A name per checkpoint for the plots (default: RUN/CHECKPOINT folder names).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub on: EvalData,
    /// Folder for layers.json, util.png and miou_l.png.
    #[arg(long, default_value = "runs/layers")]
    pub output: PathBuf,
}

/// Arguments of `predict`.
#[derive(clap::Args)]
pub struct PredictArgs {
    /// Checkpoint folder (its config.toml is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Override one config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// An image file or a folder of images.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub output: PathBuf,
    /// Also draw, per shown query, its mask at each decoder prediction (NAME_layers.png).
    #[arg(long)]
    pub layers: bool,
    /// Instances scoring below this are not drawn or written (0 to 1).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true, value_parser = score_in_unit_range)]
    pub min_score: f32,
    /// Device: flex, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// Arguments of `info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Input size for the FLOPs estimate, HEIGHTxWIDTH.
    #[arg(long, default_value = "800x1216")]
    pub size: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `forward`.
#[derive(clap::Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Device: flex, wgpu, cuda or cuda:N (among the compiled-in backends).
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Image files (PNG, JPEG, TIFF). Without any, a synthetic test card is used.
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// Size of the synthetic test card, HEIGHTxWIDTH.
    #[arg(long, default_value = "256x320")]
    pub size: String,
    /// Output folder for forward.json and label maps.
    #[arg(long, default_value = "runs/forward")]
    pub output: PathBuf,
    /// Print the resolved config before running.
    #[arg(long)]
    pub print_config: bool,
    /// Load weights (and, unless --config is given, the config) from this checkpoint folder.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// Arguments of `import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// `hf`: a transformers Mask2FormerForUniversalSegmentation `.safetensors` (ResNet or Swin
    /// backbone; whole model); `detectron2`: an original Mask2Former / MP-Former checkpoint, a
    /// model-zoo `.pkl` or a `.pth` (whole model, and MP-Former's label embedding when the pilot is
    /// on); `torchvision`: a ResNet `.pth` state dict (backbone only, the rest initialised from the
    /// config's seed).
    #[arg(long, value_enum)]
    pub from: ImportFrom,
    /// The weights file.
    pub file: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// With `--from hf`: take the model section and class names from the transformers
    /// `config.json` beside FILE (the rest from --config / the defaults, then --set), write the
    /// resolved config to this TOML file (not over an existing one unless --force) and import
    /// with it.
    #[arg(long, value_name = "TOML")]
    pub write_config: Option<PathBuf>,
    /// Checkpoint folder to write (refused when it holds a checkpoint, unless --force).
    #[arg(long)]
    pub output: PathBuf,
    /// Replace a checkpoint already at --output.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `ablation`.
#[derive(clap::Args)]
pub struct AblationArgs {
    /// A grid name (`configs/ablation/NAME.toml`) or a grid file (repeatable).
    #[arg(long = "grid", default_value = "table10")]
    pub grids: Vec<String>,
    /// `smoke` (CI: minutes), `cpu` (variants separate on the built-in data) or `gpu` (COCO recipe).
    #[arg(long, default_value = "cpu")]
    pub scale: String,
    /// Seeds per variant (default: the scale's).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Training steps per run; the schedule (drops, warmup, periods) is stretched to fit.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Runs at a time; the cores are shared evenly (at most one job per core).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// A COCO instance or panoptic JSON to train on instead of the config's data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image folder for --data (default: the JSON's folder).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// A COCO JSON to evaluate on (default: --data itself, which then measures fit, not generalisation).
    #[arg(long, requires = "data")]
    pub val_data: Option<PathBuf>,
    /// Image folder for --val-data (default: the JSON's folder).
    #[arg(long, requires = "val_data")]
    pub val_images: Option<PathBuf>,
    /// Override a config key of every run (repeatable), applied last.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Device of every run (default: the scale's, else flex).
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder; each grid writes into OUT/GRID (default: runs/ablation-SCALE).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `synth`.
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 100)]
    pub images: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// `cluttered` (the benchmark set) or `simple` (the default run's set).
    #[arg(long, value_enum, default_value_t = StyleArg::Cluttered)]
    pub style: StyleArg,
}

/// Arguments of `data-info`.
#[derive(clap::Args)]
pub struct DataInfoArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Which split of the config's `[data]` to read.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Shortcut for a COCO instance or panoptic JSON (sets data.format and the split's
    /// annotations; panoptic is detected by `segments_info`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image folder for --data (default: the JSON's folder).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum IouArg {
    Segm,
    Bbox,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum StyleArg {
    Cluttered,
    Simple,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFrom {
    Hf,
    Detectron2,
    Torchvision,
}

/// Parses a score threshold in `[0, 1]`.
pub fn score_in_unit_range(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is outside 0..=1")) }
}
