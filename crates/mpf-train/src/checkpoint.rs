//! mpf checkpoints: a folder with the resolved config, the model record and a small JSON header,
//! plus the optimiser state when written by training.
//!
//! ```text
//! DIR/config.toml       the resolved experiment config (every key), so the run can be repeated
//! DIR/model.mpk         the model's parameters (Burn named MessagePack, full precision): an
//!                       `MpFormer` record, i.e. Mask2Former plus MP-Former's label embedding when
//!                       the config enables the pilot (the embedding is unused at inference)
//! DIR/optim-*.mpk       training only: one AdamW state per parameter group (moments and step)
//! DIR/checkpoint.json   {"format": "mpf-checkpoint", "version": 1, "source": "...", "step": N | null,
//!                        "training": {...} | null}
//! ```
//! The random streams of a run are keyed by (seed, purpose, step) (`mpf_model::rng`) and the data
//! order by (seed, epoch), so model + optimiser + step are the whole training state: resuming
//! from a checkpoint continues exactly. Each file is written to a temporary name and renamed into
//! place, and the header last, so a crash never leaves a half-written checkpoint that looks whole.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use burn::record::Recorder;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use mpf_pilot::forward::MpFormer;
use serde::{Deserialize, Serialize};

use crate::config::{self, ExperimentConfig};

/// The checkpoint header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Always `mpf-checkpoint`.
    pub format: String,
    /// Layout version (1).
    pub version: u32,
    /// Where the weights came from (`import hf FILE`, `random initialisation (seed S)`, …).
    pub source: String,
    /// Training step, when written by training.
    pub step: Option<u64>,
    /// What training needs to continue, when written by training.
    #[serde(default)]
    pub training: Option<TrainingState>,
}

/// The training state besides the weights and optimiser moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimiser steps done.
    pub step: u64,
    /// Parameter groups, in the order of the `optim-<i>.mpk` files.
    pub groups: Vec<String>,
    /// Best evaluation so far: (metric name, value, step).
    pub best: Option<(String, f64, u64)>,
}

impl CheckpointInfo {
    /// A version-1 header.
    pub fn new(source: impl Into<String>, step: Option<u64>) -> Self {
        Self { format: "mpf-checkpoint".into(), version: 1, source: source.into(), step, training: None }
    }
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
}

/// Writes a record as `dir/name.mpk` through a temporary file.
pub fn write_record<B: Backend, R: burn::record::Record<B>>(dir: &Path, name: &str, record: R) -> anyhow::Result<()> {
    let tmp_stem = dir.join(format!(".{name}-tmp"));
    Recorder::<B>::record(&recorder(), record, tmp_stem.clone())
        .with_context(|| format!("cannot write {name} into {}", dir.display()))?;
    std::fs::rename(tmp_stem.with_extension("mpk"), dir.join(format!("{name}.mpk")))
        .with_context(|| format!("cannot move {name}.mpk into place in {}", dir.display()))
}

/// Reads `dir/name.mpk`.
pub fn read_record<B: Backend, R: burn::record::Record<B>>(
    dir: &Path,
    name: &str,
    device: &B::Device,
) -> anyhow::Result<R> {
    let path = dir.join(format!("{name}.mpk"));
    Recorder::<B>::load(&recorder(), dir.join(name), device).with_context(|| format!("cannot load {}", path.display()))
}

/// Writes `model` with its config and header into `dir` (created if needed); `extra` records
/// (optimiser states) are written before the header.
pub fn save<B: Backend>(
    dir: &Path,
    cfg: &ExperimentConfig,
    model: MpFormer<B>,
    info: &CheckpointInfo,
) -> anyhow::Result<()> {
    save_with(dir, cfg, model, info, |_| Ok(()))
}

/// [`save`] with a hook that writes more records into `dir` before the header.
pub fn save_with<B: Backend>(
    dir: &Path,
    cfg: &ExperimentConfig,
    model: MpFormer<B>,
    info: &CheckpointInfo,
    extra: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("checkpoint.json"));
    write_record::<B, _>(dir, "model", model.into_record())?;
    extra(dir)?;
    write_atomic(&dir.join("config.toml"), &cfg.to_toml()?)?;
    write_atomic(&dir.join("checkpoint.json"), &serde_json::to_string_pretty(info)?)?;
    Ok(())
}

/// Reads the header of the checkpoint in `dir`.
pub fn read_info(dir: &Path) -> anyhow::Result<CheckpointInfo> {
    let path = dir.join("checkpoint.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is not an mpf checkpoint: cannot read {}", dir.display(), path.display()))?;
    let info: CheckpointInfo = serde_json::from_str(&text).with_context(|| format!("malformed {}", path.display()))?;
    anyhow::ensure!(
        info.format == "mpf-checkpoint" && info.version == 1,
        "{}: unsupported checkpoint format {} v{}",
        path.display(),
        info.format,
        info.version
    );
    Ok(info)
}

/// The config stored in a checkpoint, with `overrides` applied.
pub fn config_of(dir: &Path, overrides: &[String]) -> anyhow::Result<ExperimentConfig> {
    read_info(dir)?;
    Ok(config::load(Some(&dir.join("config.toml")), overrides)?)
}

/// Loads the model of the checkpoint in `dir`, built from `cfg` (usually [`config_of`]).
pub fn load<B: Backend>(dir: &Path, cfg: &ExperimentConfig, device: &B::Device) -> anyhow::Result<MpFormer<B>> {
    read_info(dir)?;
    let model = MpFormer::new(cfg.model.init::<B>(device)?, &cfg.pilot, device);
    let stem: PathBuf = dir.join("model");
    model.load_file(stem, &recorder(), device).with_context(|| {
        format!(
            "cannot load {} (was it written with a different model config or pilot.enabled?)",
            dir.join("model.mpk").display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "flex")]
    #[test]
    fn save_then_load_round_trips() {
        use burn::backend::Flex;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config::load(
            None,
            &[
                "model.num_classes=2".into(),
                "model.backbone.depth=18".into(),
                "model.backbone.width=2".into(),
                "model.pixel_decoder.conv_dim=8".into(),
                "model.pixel_decoder.mask_dim=8".into(),
                "model.pixel_decoder.num_heads=2".into(),
                "model.pixel_decoder.gn_groups=2".into(),
                "model.pixel_decoder.encoder_layers=1".into(),
                "model.decoder.hidden_dim=8".into(),
                "model.decoder.num_heads=2".into(),
                "model.decoder.num_queries=3".into(),
                "model.decoder.num_layers=2".into(),
            ],
        )
        .unwrap();
        let device = Default::default();
        Flex::seed(&device, 1);
        let model = MpFormer::new(cfg.model.init::<Flex>(&device).unwrap(), &cfg.pilot, &device);
        let q = model.model.decoder.query_feat.val().into_data();
        save(dir.path(), &cfg, model, &CheckpointInfo::new("test", Some(7))).unwrap();
        assert_eq!(read_info(dir.path()).unwrap().step, Some(7));
        let cfg2 = config_of(dir.path(), &[]).unwrap();
        Flex::seed(&device, 2);
        let loaded = load::<Flex>(dir.path(), &cfg2, &device).unwrap();
        assert_eq!(loaded.model.decoder.query_feat.val().into_data(), q);
        assert!(!dir.path().join(".model-tmp.mpk").exists());
        let err = read_info(&dir.path().join("nothing")).unwrap_err().to_string();
        assert!(err.contains("not an mpf checkpoint"), "{err}");
    }
}
