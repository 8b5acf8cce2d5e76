//! Typed TOML experiment configs (`configs/*.toml`) with documented defaults and `--set` overrides.
//!
//! A config file only needs the keys that differ from the defaults (the COCO R50 Mask2Former of
//! the paper), or from the file it names in `extends = "other.toml"` (relative to its own folder,
//! applied first, chains allowed). Loading merges the file over the defaults, applies each `--set key=value` in order,
//! and rejects unknown keys and wrong types with an error naming the file and the dotted key.

use std::path::{Path, PathBuf};

use mpf_criterion::LossConfig;
use mpf_data::config::DataConfig;
use mpf_model::backbone::ResNetConfig;
use mpf_model::decoder::TransformerDecoderConfig;
use mpf_model::model::{InputConfig, Mask2FormerConfig};
use mpf_model::pixel_decoder::PixelDecoderConfig;
use mpf_model::postprocess::PostProcessConfig;
use mpf_pilot::config::PilotConfig;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::solver::SolverConfig;

/// Config files compiled into the binary, so the default run needs no file: `(name, text)`.
/// `extends` between them resolves by name.
pub const EMBEDDED: [(&str, &str); 3] = [
    ("tiny_mask2former.toml", include_str!("../../../configs/synthetic/tiny_mask2former.toml")),
    ("tiny_mpformer.toml", include_str!("../../../configs/synthetic/tiny_mpformer.toml")),
    ("simple_mpformer.toml", include_str!("../../../configs/synthetic/simple_mpformer.toml")),
];

/// Which post-processing an experiment reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Per-pixel class map (ADE20K, Cityscapes semantic).
    Semantic,
    /// Scored instance masks (COCO instance).
    Instance,
    /// Non-overlapping things and stuff segments (COCO panoptic).
    Panoptic,
}

/// Everything an experiment needs, as written in one TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Seed of every random stream of the run (initialisation first).
    pub seed: u64,
    /// The post-processing the experiment reports.
    pub task: Task,
    /// Names of the `K` classes (optional; `class_<i>` when empty).
    pub class_names: Vec<String>,
    /// Which of the `K` classes are things (instances); empty means all are things.
    pub thing_classes: Vec<bool>,
    /// The network.
    pub model: Mask2FormerConfig,
    /// Input normalisation and padding.
    pub input: InputConfig,
    /// Inference thresholds.
    pub test: PostProcessConfig,
    /// The MP part (MP-Former). Off by default; every other key defaults to the released recipe,
    /// so `--set pilot.enabled=true` turns a Mask2Former config into MP-Former.
    pub pilot: PilotConfig,
    /// Matcher and loss weights, point sampling, and the appendix-C baselines.
    pub loss: LossConfig,
    /// Where the data is and how it is read, augmented and batched.
    pub data: DataConfig,
    /// Optimiser, parameter groups, clipping and learning-rate schedule.
    pub solver: SolverConfig,
    /// Logging, evaluation and checkpoint periods of the training program.
    pub train: TrainConfig,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            task: Task::Instance,
            class_names: Vec::new(),
            thing_classes: Vec::new(),
            model: Mask2FormerConfig::new()
                .with_backbone(ResNetConfig::new().into())
                .with_pixel_decoder(PixelDecoderConfig::new())
                .with_decoder(TransformerDecoderConfig::new()),
            input: InputConfig::default(),
            test: PostProcessConfig::new(),
            pilot: PilotConfig::disabled(),
            loss: LossConfig::default(),
            data: DataConfig::default(),
            solver: SolverConfig::default(),
            train: TrainConfig::default(),
        }
    }
}

impl ExperimentConfig {
    /// Thing flags for all `K` classes (all true when `thing_classes` is empty).
    pub fn is_thing(&self) -> Vec<bool> {
        if self.thing_classes.is_empty() { vec![true; self.model.num_classes] } else { self.thing_classes.clone() }
    }

    /// The name of class `i`.
    pub fn class_name(&self, i: usize) -> String {
        self.class_names.get(i).cloned().unwrap_or_else(|| format!("class_{i}"))
    }

    /// Checks every section's ranges and the cross-section rules (class lists against
    /// `model.num_classes`, the MP part against the decoder), naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate().map_err(|e| e.to_string())?;
        self.loss.validate().map_err(|e| e.to_string())?;
        self.data.validate().map_err(|e| e.to_string())?;
        self.solver.validate()?;
        self.train.validate()?;
        if self.pilot.enabled {
            self.pilot.validate(self.model.decoder.num_layers).map_err(|e| e.to_string())?;
        }
        let k = self.model.num_classes;
        if !self.thing_classes.is_empty() && self.thing_classes.len() != k {
            return Err(format!("`thing_classes` has {} entries, model.num_classes is {k}", self.thing_classes.len()));
        }
        if !self.class_names.is_empty() && self.class_names.len() != k {
            return Err(format!("`class_names` has {} entries, model.num_classes is {k}", self.class_names.len()));
        }
        Ok(())
    }

    /// The resolved config as TOML text (every key, defaults included).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }
}

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

/// Errors while loading a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config {path} is not valid TOML: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A key that no config section defines.
    #[error("unknown config key `{key}` in {origin}")]
    UnknownKey {
        /// Dotted key.
        key: String,
        /// The file, or `--set`.
        origin: String,
    },
    /// A `--set` argument without `=`.
    #[error("--set expects key=value, got `{0}`")]
    BadOverride(String),
    /// A value of the wrong type or out of range.
    #[error("invalid config value in {origin}: {message}")]
    Invalid {
        /// The file and/or `--set`.
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The config could not be written out.
    #[error("cannot serialise config: {0}")]
    Serialize(String),
}

/// Loads `path` (or the defaults when `None`) and applies `overrides` (`key=value`, TOML values;
/// a bare word is taken as a string).
pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<ExperimentConfig, ConfigError> {
    load_from(path.map(|p| Source::File(p.to_path_buf())), overrides)
}

/// Loads one of the [`EMBEDDED`] configs by name and applies `overrides`.
pub fn load_embedded(name: &str, overrides: &[String]) -> Result<ExperimentConfig, ConfigError> {
    load_from(Some(Source::Embedded(name.to_string())), overrides)
}

/// Where a config text comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Embedded(String),
}

impl Source {
    fn origin(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded(n) => format!("built-in {n}"),
        }
    }

    fn read(&self) -> Result<String, ConfigError> {
        match self {
            Source::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })
            }
            Source::Embedded(name) => {
                EMBEDDED.iter().find(|(n, _)| n == name).map(|(_, t)| t.to_string()).ok_or_else(|| {
                    ConfigError::Invalid {
                        origin: "built-in configs".into(),
                        message: format!(
                            "no built-in config `{name}` (have {})",
                            EMBEDDED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ),
                    }
                })
            }
        }
    }

    /// The source an `extends = "parent"` in this one names.
    fn parent(&self, parent: &str) -> Source {
        match self {
            Source::File(p) => Source::File(p.parent().unwrap_or(Path::new(".")).join(parent)),
            Source::Embedded(_) => Source::Embedded(parent.to_string()),
        }
    }

    fn key(&self) -> PathBuf {
        match self {
            Source::File(p) => p.canonicalize().unwrap_or_else(|_| p.clone()),
            Source::Embedded(n) => PathBuf::from(format!("<built-in>/{n}")),
        }
    }
}

fn load_from(source: Option<Source>, overrides: &[String]) -> Result<ExperimentConfig, ConfigError> {
    let mut merged = Value::try_from(ExperimentConfig::default()).map_err(|e| ConfigError::Serialize(e.to_string()))?;
    let mut origin = "the defaults".to_string();
    if let Some(source) = source {
        merge_file(&mut merged, &source, &mut Vec::new())?;
        origin = source.origin();
    }
    for o in overrides {
        let (key, raw) = o.split_once('=').ok_or_else(|| ConfigError::BadOverride(o.clone()))?;
        let key = key.trim();
        let raw = raw.trim();
        let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw);
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
            && raw.replace('_', "").parse::<i64>().is_err()
        {
            return Err(ConfigError::Invalid {
                origin: format!("--set {key}"),
                message: format!("`{key}` = {raw} is out of the range of a TOML integer (64-bit signed)"),
            });
        }
        let value = parse_value(raw);
        let mut table = Table::new();
        insert_dotted(&mut table, key, value);
        merge(&mut merged, &Value::Table(table), "", &format!("--set {key}"))?;
        if !origin.ends_with("--set overrides") {
            origin = format!("{origin} with --set overrides");
        }
    }
    let cfg: ExperimentConfig = merged
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid { origin: origin.clone(), message: e.to_string() })?;
    cfg.validate().map_err(|message| ConfigError::Invalid { origin, message })?;
    Ok(cfg)
}

/// Merges `source` over `merged`, after the config it `extends` (a path relative to its folder,
/// or another built-in name), recursively. `chain` holds the sources being read, to report cycles.
fn merge_file(merged: &mut Value, source: &Source, chain: &mut Vec<PathBuf>) -> Result<(), ConfigError> {
    let text = source.read()?;
    let origin = source.origin();
    let mut user: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse { path: origin.clone(), message: e.to_string() })?;
    let key = source.key();
    if chain.contains(&key) {
        return Err(ConfigError::Invalid { origin, message: "`extends` forms a cycle".into() });
    }
    chain.push(key);
    match user.remove("extends") {
        None => {}
        Some(Value::String(parent)) => merge_file(merged, &source.parent(&parent), chain)?,
        Some(v) => {
            return Err(ConfigError::Invalid {
                origin,
                message: format!("`extends` expects a file path string, got {}", article(v.type_str())),
            });
        }
    }
    merge(merged, &Value::Table(user), "", &origin)
}

fn parse_value(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

fn insert_dotted(table: &mut Table, key: &str, value: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let entry = table.entry(head.to_string()).or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = entry {
                insert_dotted(t, rest, value);
            }
        }
        None => {
            table.insert(key.to_string(), value);
        }
    }
}

/// Merges `over` into `base`; every key of `over` must exist in `base`.
fn merge(base: &mut Value, over: &Value, prefix: &str, origin: &str) -> Result<(), ConfigError> {
    let (Value::Table(b), Value::Table(o)) = (base, over) else {
        return Ok(());
    };
    for (k, v) in o {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match b.get_mut(k) {
            None => return Err(ConfigError::UnknownKey { key, origin: origin.into() }),
            Some(slot @ Value::Table(_)) => {
                if !v.is_table() {
                    return Err(ConfigError::Invalid {
                        origin: origin.into(),
                        message: format!("`{key}` is a section, got a value"),
                    });
                }
                merge(slot, v, &key, origin)?;
            }
            Some(slot) => {
                if v.is_table() {
                    return Err(ConfigError::Invalid {
                        origin: origin.into(),
                        message: format!("`{key}` is a value, got a section"),
                    });
                }
                let v = coerce(slot, v.clone());
                if std::mem::discriminant(slot) != std::mem::discriminant(&v) {
                    return Err(ConfigError::Invalid {
                        origin: origin.into(),
                        message: format!(
                            "`{key}` expects {}, got {} ({v})",
                            article(slot.type_str()),
                            article(v.type_str())
                        ),
                    });
                }
                *slot = v;
            }
        }
    }
    Ok(())
}

/// `a string`, `an integer`, … for error messages.
fn article(type_name: &str) -> String {
    let vowel = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if vowel { "an" } else { "a" })
}

/// Integers are accepted where floats are expected (`--set test.overlap_threshold=1`).
fn coerce(slot: &Value, v: Value) -> Value {
    match (slot, v) {
        (Value::Float(_), Value::Integer(i)) => Value::Float(i as f64),
        (_, v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_are_the_coco_r50_model() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.model.num_classes, 80);
        assert_eq!(c.model.decoder.num_queries, 100);
        assert_eq!(c.model.decoder.num_layers, 9);
        assert_eq!(c.model.backbone.depth, 50);
        assert_eq!(c.test.object_mask_threshold, 0.8);
    }

    #[test]
    fn pilot_table_defaults_overrides_and_errors() {
        let c = load(None, &[]).unwrap();
        assert!(!c.pilot.enabled, "the default model is plain Mask2Former");
        assert_eq!(c.pilot, PilotConfig { enabled: false, ..PilotConfig::default() });
        let f =
            write("[pilot]\nenabled = true\ngroup_rule = \"dynamic\"\nqueries = 50\npiloted_layers = [0, 1, 2, 3]\n");
        let c =
            load(Some(f.path()), &["pilot.mask_noise=\"shift\"".into(), "pilot.mask_noise_ratio=0.2".into()]).unwrap();
        assert!(c.pilot.enabled);
        assert_eq!(c.pilot.group_rule(), mpf_pilot::layout::GroupRule::Dynamic { queries: 50 });
        assert_eq!(c.pilot.piloted_layers, vec![0, 1, 2, 3]);
        assert_eq!(c.pilot.mask_noise(), mpf_pilot::noise::MaskNoise::Shift { lambda: 0.2 });
        let e =
            load(None, &["pilot.enabled=true".into(), "pilot.piloted_layers=[0, 9]".into()]).unwrap_err().to_string();
        assert!(e.contains("pilot.piloted_layers") && e.contains("layer 9"), "{e}");
        let e = load(None, &["pilot.mask_noise=blur".into()]).unwrap_err().to_string();
        assert!(e.contains("blur") && e.contains("--set"), "{e}");
        let c = load(None, &["loss.matching=\"fixed_last\"".into(), "loss.layer_consistency_weight=1".into()]).unwrap();
        assert_eq!(c.loss.matching, mpf_criterion::MatchingMode::FixedLast);
        assert_eq!(c.loss.layer_consistency_weight, 1.0);
        let e = load(None, &["loss.importance_sample_ratio=1.5".into()]).unwrap_err().to_string();
        assert!(e.contains("loss.importance_sample_ratio"), "{e}");
        let e = load(None, &["pilot.nosie=0.1".into()]).unwrap_err().to_string();
        assert!(e.contains("pilot.nosie"), "{e}");
    }

    #[test]
    fn extends_applies_the_parent_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.toml"), "seed = 3\n[model]\nnum_classes = 4\n").unwrap();
        std::fs::write(dir.path().join("child.toml"), "extends = \"base.toml\"\nseed = 7\n").unwrap();
        let c = load(Some(&dir.path().join("child.toml")), &[]).unwrap();
        assert_eq!((c.seed, c.model.num_classes), (7, 4));
        std::fs::write(dir.path().join("loop.toml"), "extends = \"loop.toml\"\n").unwrap();
        let e = load(Some(&dir.path().join("loop.toml")), &[]).unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("loop.toml"), "{e}");
        std::fs::write(dir.path().join("gone.toml"), "extends = \"missing.toml\"\n").unwrap();
        let e = load(Some(&dir.path().join("gone.toml")), &[]).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn file_then_overrides() {
        let f = write("[model]\nnum_classes = 3\n[model.decoder]\nnum_queries = 7\n");
        let c = load(
            Some(f.path()),
            &["model.decoder.num_queries=9".into(), "task=panoptic".into(), "test.overlap_threshold=1".into()],
        )
        .unwrap();
        assert_eq!(c.model.num_classes, 3);
        assert_eq!(c.model.decoder.num_queries, 9);
        assert_eq!(c.task, Task::Panoptic);
        assert_eq!(c.test.overlap_threshold, 1.0);
        assert_eq!(c.model.decoder.hidden_dim, 256, "untouched keys keep their defaults");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = write("[model.decoder]\nnum_querys = 7\n");
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("model.decoder.num_querys") && e.contains(&f.path().display().to_string()), "{e}");
        let e = load(None, &["model.nope=1".into()]).unwrap_err().to_string();
        assert!(e.contains("model.nope") && e.contains("--set"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_named() {
        let e = load(None, &["model.decoder.num_queries=many".into()]).unwrap_err().to_string();
        assert!(e.contains("model.decoder.num_queries"), "{e}");
        let e = load(None, &["model.backbone.depth=42".into()]).unwrap_err().to_string();
        assert!(e.contains("model.backbone.depth"), "{e}");
        let e = load(None, &["model.backbone.norm=\"group\"".into()]).unwrap_err().to_string();
        assert!(e.contains("norm") || e.contains("group"), "{e}");
        assert!(matches!(load(None, &["seed".into()]), Err(ConfigError::BadOverride(_))));
        let e = load(None, &["model.decoder.num_queries=99999999999999999999".into()]).unwrap_err().to_string();
        assert!(e.contains("model.decoder.num_queries") && e.contains("out of the range"), "{e}");
        let e = load(None, &["seed=\"x\"".into()]).unwrap_err().to_string();
        assert!(e.contains("expects an integer, got a string"), "{e}");
        assert_eq!(load(None, &["data.synthetic_train=1_000".into()]).unwrap().data.synthetic_train, 1000);
    }

    #[test]
    fn zero_and_huge_sizes_fail_naming_file_and_key() {
        for (set, key) in [
            ("model.decoder.hidden_dim=0", "model.decoder.hidden_dim"),
            ("model.decoder.ffn_dim=0", "model.decoder.ffn_dim"),
            ("model.pixel_decoder.ffn_dim=0", "model.pixel_decoder.ffn_dim"),
            ("model.pixel_decoder.num_points=0", "model.pixel_decoder.num_points"),
            ("model.decoder.num_queries=4000000000", "model.decoder.num_queries"),
            ("data.crop_size=[100000, 100000]", "data.crop_size"),
        ] {
            let e = load(None, &[set.into()]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("--set"), "{set}: {e}");
        }
        let f = write("[model.backbone]\nwidth = 0\n");
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("model.backbone.width") && e.contains(&f.path().display().to_string()), "{e}");
    }

    #[test]
    fn every_shipped_config_loads() {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    // Ablation grids and scales are another format (tested in `ablation::grid`).
                    if p.file_name().is_some_and(|n| n != "ablation") {
                        walk(&p, out);
                    }
                } else if p.extension().is_some_and(|e| e == "toml") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs"), &mut files);
        assert!(files.len() >= 29, "{files:?}");
        for f in &files {
            let c = load(Some(f), &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let mp = name.starts_with("mpformer")
                || name.starts_with("tiny_mpformer")
                || name.starts_with("simple_mpformer");
            assert_eq!(c.pilot.enabled, mp, "{name}");
            if c.pilot.enabled {
                assert!(!c.model.decoder.use_query_pos_embed, "{name}");
            }
        }
        let coco12 = load(
            Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/coco/instance/mpformer_r50_12ep.toml")),
            &[],
        )
        .unwrap();
        assert_eq!((coco12.solver.max_iter, coco12.solver.steps.clone()), (88_500, vec![73_750, 81_125]));
        let pan = load(
            Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/coco/panoptic/mask2former_r50.toml")),
            &[],
        )
        .unwrap();
        assert_eq!(pan.is_thing().iter().filter(|&&t| t).count(), 80);
        assert_eq!(pan.model.num_classes, 133);
        let ade = load(
            Some(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../configs/ade20k/semantic/mpformer_r50_160k_steplr.toml"),
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            (ade.solver.schedule, ade.solver.steps.clone()),
            (crate::solver::ScheduleKind::Multistep, vec![135_000, 150_000])
        );
    }

    #[test]
    fn built_in_configs_load_and_match_the_files() {
        for (name, _) in EMBEDDED {
            let built_in = load_embedded(name, &[]).unwrap();
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/synthetic").join(name);
            let file = load(Some(&path), &[]).unwrap();
            assert_eq!(built_in.to_toml().unwrap(), file.to_toml().unwrap(), "{name}");
        }
        assert!(load_embedded("tiny_mpformer.toml", &[]).unwrap().pilot.enabled);
        let default_run = load_embedded("simple_mpformer.toml", &[]).unwrap();
        assert_eq!(default_run.data.synthetic_style, mpf_data::synth::SynthStyle::Simple);
        let e = load_embedded("nope.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("nope.toml") && e.contains("tiny_mpformer.toml"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = load(None, &["model.num_classes=5".into()]).unwrap();
        let f = write(&c.to_toml().unwrap());
        let c2 = load(Some(f.path()), &[]).unwrap();
        assert_eq!(c2.to_toml().unwrap(), c.to_toml().unwrap());
    }
}
