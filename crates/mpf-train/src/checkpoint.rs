//! mpf checkpoints: a folder with the resolved config, the model record and a small JSON header.
//!
//! ```text
//! DIR/config.toml       the resolved experiment config (every key), so the run can be repeated
//! DIR/model.mpk         the model's parameters (Burn named MessagePack, full precision)
//! DIR/checkpoint.json   {"format": "mpf-checkpoint", "version": 1, "source": "...", "step": N | null}
//! ```
//! Each file is written to a temporary name and renamed into place, so a crash never leaves a
//! half-written file under the final name.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use mpf_model::Mask2Former;
use serde::{Deserialize, Serialize};

use crate::config::{self, ExperimentConfig};

/// The checkpoint header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Always `mpf-checkpoint`.
    pub format: String,
    /// Layout version (1).
    pub version: u32,
    /// Where the weights came from (`import hf FILE`, `random initialisation (seed S)`, …).
    pub source: String,
    /// Training step, when written by training.
    pub step: Option<u64>,
}

impl CheckpointInfo {
    /// A version-1 header.
    pub fn new(source: impl Into<String>, step: Option<u64>) -> Self {
        Self { format: "mpf-checkpoint".into(), version: 1, source: source.into(), step }
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

/// Writes `model` with its config and header into `dir` (created if needed).
pub fn save<B: Backend>(
    dir: &Path,
    cfg: &ExperimentConfig,
    model: Mask2Former<B>,
    info: &CheckpointInfo,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp_stem = dir.join(".model-tmp");
    model
        .save_file(tmp_stem.clone(), &recorder())
        .with_context(|| format!("cannot write the model into {}", dir.display()))?;
    std::fs::rename(tmp_stem.with_extension("mpk"), dir.join("model.mpk"))
        .with_context(|| format!("cannot move the model into place in {}", dir.display()))?;
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
pub fn load<B: Backend>(dir: &Path, cfg: &ExperimentConfig, device: &B::Device) -> anyhow::Result<Mask2Former<B>> {
    read_info(dir)?;
    let model = cfg.model.init::<B>(device)?;
    let stem: PathBuf = dir.join("model");
    model
        .load_file(stem, &recorder(), device)
        .with_context(|| format!("cannot load {}", dir.join("model.mpk").display()))
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
        let model = cfg.model.init::<Flex>(&device).unwrap();
        let q = model.decoder.query_feat.val().into_data();
        save(dir.path(), &cfg, model, &CheckpointInfo::new("test", Some(7))).unwrap();
        assert_eq!(read_info(dir.path()).unwrap().step, Some(7));
        let cfg2 = config_of(dir.path(), &[]).unwrap();
        Flex::seed(&device, 2);
        let loaded = load::<Flex>(dir.path(), &cfg2, &device).unwrap();
        assert_eq!(loaded.decoder.query_feat.val().into_data(), q);
        assert!(!dir.path().join(".model-tmp.mpk").exists());
        let err = read_info(&dir.path().join("nothing")).unwrap_err().to_string();
        assert!(err.contains("not an mpf checkpoint"), "{err}");
    }
}
