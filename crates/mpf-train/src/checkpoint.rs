//! mpf checkpoints: a folder with the resolved config, the model record and a JSON header, plus
//! the optimiser state when written by training.
//!
//! ```text
//! DIR/config.toml       the resolved experiment config (every key), so the run can be repeated
//! DIR/model.mpk         the model's parameters (Burn named MessagePack, full precision): an
//!                       `MpFormer` record, i.e. Mask2Former plus MP-Former's label embedding when
//!                       the config enables the pilot (the embedding is unused at inference)
//! DIR/optim-*.mpk       training only: one AdamW state per parameter group (moments and step)
//! DIR/checkpoint.json   the header (below), written last
//! ```
//!
//! The header (`"format": "mpf-checkpoint"`, version 2) records what a checkpoint needs to verify
//! itself: the architecture keys of the config that wrote it (`model.*` and `pilot.enabled`), the
//! number, names and shapes of its parameters (as a SHA-256 digest), the size and SHA-256 of every
//! record file, and a digest of the header itself. Every load checks them and names the first
//! difference: a config whose architecture differs (`checkpoint has model.decoder.num_queries =
//! 10, the config says 20`), a truncated or swapped record file, or a hand-edited header. Keys
//! outside the architecture (solver length, logging, data paths, loss weights, noise settings)
//! may change freely between runs of one checkpoint. Version-1 headers (no digests) still load,
//! with their architecture checked only by the record's shapes.
//!
//! The random streams of a run are keyed by (seed, purpose, step) (`mpf_model::rng`) and the data
//! order by (seed, epoch), so model + optimiser + step are the whole training state: resuming
//! from a checkpoint continues exactly. Each file is written to a temporary name and renamed into
//! place, and the header last, so a crash never leaves a half-written checkpoint that looks whole.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::prelude::*;
use burn::record::Recorder;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use mpf_pilot::forward::MpFormer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{self, ExperimentConfig};

/// The header version this build writes.
pub const VERSION: u32 = 2;

/// The checkpoint header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Always `mpf-checkpoint`.
    pub format: String,
    /// Layout version (1 or 2).
    pub version: u32,
    /// Where the weights came from (`import hf FILE`, `random initialisation (seed S)`, …).
    pub source: String,
    /// Training step, when written by training.
    pub step: Option<u64>,
    /// What training needs to continue, when written by training.
    #[serde(default)]
    pub training: Option<TrainingState>,
    /// The architecture keys of the config that wrote the checkpoint (dotted key → TOML value);
    /// empty in version 1.
    #[serde(default)]
    pub architecture: BTreeMap<String, String>,
    /// Count and digest of the parameters' names and shapes; absent in version 1.
    #[serde(default)]
    pub parameters: Option<ParamSummary>,
    /// Size and SHA-256 of each record file (`model.mpk`, `optim-0.mpk`, …); empty in version 1.
    #[serde(default)]
    pub files: BTreeMap<String, FileDigest>,
    /// SHA-256 of this header without this field (absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
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

/// Parameter count and a digest of the parameter names and shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSummary {
    /// Number of parameter tensors.
    pub tensors: usize,
    /// Number of scalars in them (frozen batch-norm statistics included).
    pub scalars: usize,
    /// SHA-256 over `name:shape` lines, in module order.
    pub sha256: String,
}

/// Size and content digest of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the content, hexadecimal.
    pub sha256: String,
}

impl CheckpointInfo {
    /// A header for a new checkpoint; [`save_with`] fills in the architecture, parameter and file
    /// digests.
    pub fn new(source: impl Into<String>, step: Option<u64>) -> Self {
        Self {
            format: "mpf-checkpoint".into(),
            version: VERSION,
            source: source.into(),
            step,
            training: None,
            architecture: BTreeMap::new(),
            parameters: None,
            files: BTreeMap::new(),
            digest: None,
        }
    }

    /// SHA-256 of the header with `digest` left out.
    fn own_digest(&self) -> anyhow::Result<String> {
        let bare = Self { digest: None, ..self.clone() };
        Ok(hex(&Sha256::digest(serde_json::to_vec(&bare)?)))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The architecture keys of `cfg`: every `model.*` key and `pilot.enabled` (which adds the MP
/// label embedding), as dotted key → TOML value text.
pub fn architecture(cfg: &ExperimentConfig) -> anyhow::Result<BTreeMap<String, String>> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    flatten(&format!("{prefix}.{k}"), v, out);
                }
            }
            v => {
                out.insert(prefix.to_string(), v.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    flatten("model", &toml::Value::try_from(&cfg.model).context("cannot serialise the model config")?, &mut out);
    out.insert("pilot.enabled".into(), cfg.pilot.enabled.to_string());
    Ok(out)
}

/// Count and digest of `model`'s parameter names and shapes.
pub fn param_summary<B: Backend>(model: &MpFormer<B>) -> ParamSummary {
    let shapes = mpf_model::model::param_shapes(model);
    let mut h = Sha256::new();
    for (name, shape) in &shapes {
        h.update(format!("{name}:{shape:?}\n"));
    }
    ParamSummary {
        tensors: shapes.len(),
        scalars: shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum(),
        sha256: hex(&h.finalize()),
    }
}

/// Size and SHA-256 of a file.
pub fn file_digest(path: &Path) -> anyhow::Result<FileDigest> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileDigest { bytes, sha256: hex(&h.finalize()) })
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
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

/// Checks `dir/name.mpk` against the size and digest the header records for it (version 2).
pub fn verify_file(dir: &Path, info: &CheckpointInfo, name: &str) -> anyhow::Result<()> {
    let file = format!("{name}.mpk");
    let path = dir.join(&file);
    let Some(expected) = info.files.get(&file) else {
        if info.version >= 2 {
            bail!("{}: the header lists no {file}; the checkpoint is incomplete", dir.display());
        }
        return Ok(());
    };
    let actual = file_digest(&path)?;
    if actual.bytes != expected.bytes {
        bail!(
            "{} is truncated or corrupt: {} bytes, the checkpoint header records {}",
            path.display(),
            actual.bytes,
            expected.bytes
        );
    }
    if actual.sha256 != expected.sha256 {
        bail!(
            "{} does not belong to this checkpoint: its SHA-256 differs from the one in {} (copied from another \
             run, or changed on disk?)",
            path.display(),
            dir.join("checkpoint.json").display()
        );
    }
    Ok(())
}

/// Reads `dir/name.mpk` after checking it against the header.
pub fn read_record<B: Backend, R: burn::record::Record<B>>(
    dir: &Path,
    info: &CheckpointInfo,
    name: &str,
    device: &B::Device,
) -> anyhow::Result<R> {
    verify_file(dir, info, name)?;
    let path = dir.join(format!("{name}.mpk"));
    Recorder::<B>::load(&recorder(), dir.join(name), device).with_context(|| format!("cannot load {}", path.display()))
}

/// Writes `model` with its config and header into `dir` (created if needed).
pub fn save<B: Backend>(
    dir: &Path,
    cfg: &ExperimentConfig,
    model: MpFormer<B>,
    info: &CheckpointInfo,
) -> anyhow::Result<()> {
    save_with(dir, cfg, model, info, |_| Ok(Vec::new()))
}

/// [`save`] with a hook that writes more records into `dir` before the header and returns their
/// names (without `.mpk`), so the header records their digests too.
pub fn save_with<B: Backend>(
    dir: &Path,
    cfg: &ExperimentConfig,
    model: MpFormer<B>,
    info: &CheckpointInfo,
    extra: impl FnOnce(&Path) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("checkpoint.json"));
    let mut info = CheckpointInfo {
        version: VERSION,
        architecture: architecture(cfg)?,
        parameters: Some(param_summary(&model)),
        files: BTreeMap::new(),
        digest: None,
        ..info.clone()
    };
    write_record::<B, _>(dir, "model", model.into_record())?;
    let mut names = vec!["model".to_string()];
    names.extend(extra(dir)?);
    for name in names {
        let file = format!("{name}.mpk");
        info.files.insert(file.clone(), file_digest(&dir.join(&file))?);
    }
    write_atomic(&dir.join("config.toml"), &cfg.to_toml()?)?;
    info.digest = Some(info.own_digest()?);
    write_atomic(&dir.join("checkpoint.json"), &serde_json::to_string_pretty(&info)?)?;
    Ok(())
}

/// Writes a checkpoint into `dir` without ever leaving `dir` incomplete: into `dir.new` first,
/// then swapped in by renames (`dir` → `dir.old`, `dir.new` → `dir`, `dir.old` removed). A crash
/// between the renames leaves `dir.old`, which [`recover_swap`] puts back.
pub fn save_swapped<B: Backend>(
    dir: &Path,
    cfg: &ExperimentConfig,
    model: MpFormer<B>,
    info: &CheckpointInfo,
) -> anyhow::Result<()> {
    let (new, old) = swap_names(dir);
    recover_swap(dir)?;
    if new.exists() {
        std::fs::remove_dir_all(&new).with_context(|| format!("cannot remove {}", new.display()))?;
    }
    save(&new, cfg, model, info)?;
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
    }
    std::fs::rename(&new, dir).with_context(|| format!("cannot move {} into place", new.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

fn swap_names(dir: &Path) -> (PathBuf, PathBuf) {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    (dir.with_file_name(format!("{name}.new")), dir.with_file_name(format!("{name}.old")))
}

/// Completes or undoes an interrupted [`save_swapped`]: when `dir` is missing but `dir.old`
/// exists, `dir.old` is the last complete checkpoint and is moved back; a `dir.old` beside a
/// complete `dir` is removed.
pub fn recover_swap(dir: &Path) -> anyhow::Result<()> {
    let (_, old) = swap_names(dir);
    if !old.exists() {
        return Ok(());
    }
    if dir.join("checkpoint.json").exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::rename(&old, dir).with_context(|| format!("cannot restore {}", old.display()))
    }
}

/// Reads and checks the header of the checkpoint in `dir`.
pub fn read_info(dir: &Path) -> anyhow::Result<CheckpointInfo> {
    let path = dir.join("checkpoint.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is not an mpf checkpoint: cannot read {}", dir.display(), path.display()))?;
    let info: CheckpointInfo = serde_json::from_str(&text).with_context(|| format!("malformed {}", path.display()))?;
    anyhow::ensure!(
        info.format == "mpf-checkpoint" && (1..=VERSION).contains(&info.version),
        "{}: unsupported checkpoint format {} v{} (this build reads mpf-checkpoint v1 to v{VERSION})",
        path.display(),
        info.format,
        info.version
    );
    if info.version >= 2 {
        let recorded =
            info.digest.as_deref().with_context(|| format!("{}: the header has no digest", path.display()))?;
        if recorded != info.own_digest()? {
            bail!(
                "{} was changed after it was written (its digest does not match its contents): a hand-edited step, \
                 group list or file digest cannot be trusted; restore the file or use another checkpoint",
                path.display()
            );
        }
        if info.training.as_ref().is_some_and(|t| Some(t.step) != info.step) {
            bail!("{}: the training state's step differs from the header's", path.display());
        }
    } else {
        tracing::warn!("{} is a version-1 checkpoint: it carries no digests to verify", dir.display());
    }
    Ok(info)
}

/// The config stored in a checkpoint, with `overrides` applied.
pub fn config_of(dir: &Path, overrides: &[String]) -> anyhow::Result<ExperimentConfig> {
    read_info(dir)?;
    Ok(config::load(Some(&dir.join("config.toml")), overrides)?)
}

/// Checks that `cfg` describes the model the checkpoint holds, naming the first architecture key
/// that differs.
pub fn check_architecture(dir: &Path, info: &CheckpointInfo, cfg: &ExperimentConfig) -> anyhow::Result<()> {
    if info.architecture.is_empty() {
        return Ok(());
    }
    let ours = architecture(cfg)?;
    let keys: std::collections::BTreeSet<&String> = info.architecture.keys().chain(ours.keys()).collect();
    for key in keys {
        let (theirs, mine) = (info.architecture.get(key), ours.get(key));
        if theirs != mine {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            bail!(
                "checkpoint {} has {key} = {}, the config says {}; architecture keys (model.*, pilot.enabled) must \
                 match the checkpoint (other keys may change)",
                dir.display(),
                show(theirs),
                show(mine)
            );
        }
    }
    Ok(())
}

/// Loads the model of the checkpoint in `dir`, built from `cfg` (usually [`config_of`]) after
/// checking that `cfg`'s architecture and the record file match the header.
pub fn load<B: Backend>(dir: &Path, cfg: &ExperimentConfig, device: &B::Device) -> anyhow::Result<MpFormer<B>> {
    let info = read_info(dir)?;
    check_architecture(dir, &info, cfg)?;
    let model = MpFormer::new(cfg.model.init::<B>(device)?, &cfg.pilot, device);
    if let Some(recorded) = &info.parameters {
        let built = param_summary(&model);
        if &built != recorded {
            bail!(
                "{}: the model built from the config has {} parameter tensors ({} scalars), the checkpoint {} ({}); \
                 it was written by a build with a different model layout",
                dir.display(),
                built.tensors,
                built.scalars,
                recorded.tensors,
                recorded.scalars
            );
        }
    }
    verify_file(dir, &info, "model")?;
    let stem: PathBuf = dir.join("model");
    model.load_file(stem, &recorder(), device).with_context(|| {
        format!(
            "cannot load {} (truncated, or written with a different model config or pilot.enabled?)",
            dir.join("model.mpk").display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config(extra: &[&str]) -> ExperimentConfig {
        let mut sets: Vec<String> = [
            "model.num_classes=2",
            "model.backbone.depth=18",
            "model.backbone.width=2",
            "model.pixel_decoder.conv_dim=8",
            "model.pixel_decoder.mask_dim=8",
            "model.pixel_decoder.num_heads=2",
            "model.pixel_decoder.gn_groups=2",
            "model.pixel_decoder.encoder_layers=1",
            "model.decoder.hidden_dim=8",
            "model.decoder.num_heads=2",
            "model.decoder.num_queries=3",
            "model.decoder.num_layers=2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sets.extend(extra.iter().map(|s| s.to_string()));
        config::load(None, &sets).unwrap()
    }

    #[cfg(feature = "flex")]
    #[test]
    fn save_then_load_round_trips() {
        use burn::backend::Flex;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny_config(&[]);
        let device = Default::default();
        Flex::seed(&device, 1);
        let model = MpFormer::new(cfg.model.init::<Flex>(&device).unwrap(), &cfg.pilot, &device);
        let q = model.model.decoder.query_feat.val().into_data();
        save(dir.path(), &cfg, model, &CheckpointInfo::new("test", Some(7))).unwrap();
        let info = read_info(dir.path()).unwrap();
        assert_eq!((info.step, info.version), (Some(7), 2));
        assert_eq!(info.architecture["model.decoder.num_queries"], "3");
        assert!(info.files.contains_key("model.mpk"));
        let cfg2 = config_of(dir.path(), &[]).unwrap();
        Flex::seed(&device, 2);
        let loaded = load::<Flex>(dir.path(), &cfg2, &device).unwrap();
        assert_eq!(loaded.model.decoder.query_feat.val().into_data(), q);
        assert!(!dir.path().join(".model-tmp.mpk").exists());
        let err = read_info(&dir.path().join("nothing")).unwrap_err().to_string();
        assert!(err.contains("not an mpf checkpoint"), "{err}");
    }

    #[cfg(feature = "flex")]
    #[test]
    fn a_checkpoint_refuses_another_architecture_a_damaged_file_and_an_edited_header() {
        use burn::backend::Flex;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = tiny_config(&[]);
        let device = Default::default();
        let model = MpFormer::new(cfg.model.init::<Flex>(&device).unwrap(), &cfg.pilot, &device);
        save(d, &cfg, model, &CheckpointInfo::new("test", Some(3))).unwrap();
        // Another number of queries, a deeper decoder, the pilot on: named, no panic.
        let cases: [(&[&str], &str, &str, &str); 3] = [
            (&["model.decoder.num_queries=5"], "model.decoder.num_queries", "3", "5"),
            (&["model.decoder.num_layers=3"], "model.decoder.num_layers", "2", "3"),
            (&["pilot.enabled=true", "pilot.piloted_layers=[0, 1]"], "pilot.enabled", "false", "true"),
        ];
        for (sets, key, theirs, ours) in cases {
            let e = load::<Flex>(d, &tiny_config(sets), &device).unwrap_err().to_string();
            assert!(e.contains(&format!("has {key} = {theirs}, the config says {ours}")), "{sets:?}: {e}");
        }
        // Keys outside the architecture may change.
        load::<Flex>(d, &tiny_config(&["train.log_period=5", "loss.class_weight=3.0", "data.batch_size=1"]), &device)
            .unwrap();
        // A truncated record says so.
        let bytes = std::fs::read(d.join("model.mpk")).unwrap();
        std::fs::write(d.join("model.mpk"), &bytes[..bytes.len() / 2]).unwrap();
        let e = load::<Flex>(d, &cfg, &device).unwrap_err().to_string();
        assert!(e.contains("model.mpk is truncated or corrupt"), "{e}");
        // A same-sized file from elsewhere is named as foreign.
        let mut other = bytes.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        std::fs::write(d.join("model.mpk"), &other).unwrap();
        let e = load::<Flex>(d, &cfg, &device).unwrap_err().to_string();
        assert!(e.contains("does not belong to this checkpoint"), "{e}");
        std::fs::write(d.join("model.mpk"), &bytes).unwrap();
        // An edited step is refused.
        let header = std::fs::read_to_string(d.join("checkpoint.json")).unwrap();
        std::fs::write(d.join("checkpoint.json"), header.replace("\"step\": 3", "\"step\": 30")).unwrap();
        let e = read_info(d).unwrap_err().to_string();
        assert!(e.contains("changed after it was written"), "{e}");
        std::fs::write(d.join("checkpoint.json"), header).unwrap();
        load::<Flex>(d, &cfg, &device).unwrap();
    }

    #[cfg(feature = "flex")]
    #[test]
    fn swapped_saves_never_leave_the_folder_incomplete() {
        use burn::backend::Flex;
        let root = tempfile::tempdir().unwrap();
        let best = root.path().join("best");
        let cfg = tiny_config(&[]);
        let device = Default::default();
        let model = MpFormer::new(cfg.model.init::<Flex>(&device).unwrap(), &cfg.pilot, &device);
        save_swapped(&best, &cfg, model.clone(), &CheckpointInfo::new("first", Some(1))).unwrap();
        save_swapped(&best, &cfg, model.clone(), &CheckpointInfo::new("second", Some(2))).unwrap();
        assert_eq!(read_info(&best).unwrap().step, Some(2));
        assert!(!root.path().join("best.new").exists() && !root.path().join("best.old").exists());
        // A crash between the two renames: only best.old is complete.
        std::fs::rename(&best, root.path().join("best.old")).unwrap();
        std::fs::create_dir_all(root.path().join("best.new")).unwrap();
        recover_swap(&best).unwrap();
        assert_eq!(read_info(&best).unwrap().step, Some(2));
        save_swapped(&best, &cfg, model, &CheckpointInfo::new("third", Some(3))).unwrap();
        assert_eq!(read_info(&best).unwrap().step, Some(3));
        assert!(!root.path().join("best.new").exists());
    }
}
