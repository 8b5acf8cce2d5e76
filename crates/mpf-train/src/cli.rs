//! Helpers shared by the command-line front end and the commands it drives.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `--set` overrides that point a split of `[data]` at a COCO JSON (instance or panoptic,
/// detected by `segments_info`) and its image folder.
pub fn coco_data_overrides(path: &Path, images: Option<&Path>, split: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let format = if text.contains("\"segments_info\"") { "coco_panoptic" } else { "coco" };
    let folder = images.map(PathBuf::from).unwrap_or_else(|| path.parent().map(PathBuf::from).unwrap_or_default());
    // A TOML basic string with `"`, `\` and control characters escaped, so any UTF-8 path survives.
    let q = |p: &Path| -> anyhow::Result<String> {
        let s = p.to_str().with_context(|| format!("path {} is not valid UTF-8", p.display()))?;
        Ok(toml::Value::String(s.to_string()).to_string())
    };
    let mut sets = vec![
        format!("data.format=\"{format}\""),
        format!("data.{split}_annotations={}", q(path)?),
        format!("data.{split}_images={}", q(&folder)?),
    ];
    if format == "coco_panoptic" {
        sets.push(format!("data.{split}_panoptic={}", q(&path.with_extension(""))?));
    }
    Ok(sets)
}
