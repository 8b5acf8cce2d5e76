//! The key table for torchvision ResNet state dicts (`resnet18/34/50/101`), applied to the
//! [`ResNet`](mpf_model::backbone::ResNet) module itself (paths relative to it).
//!
//! mpf's backbone uses torchvision's names, so the table only renames the shortcut
//! (`downsample.conv` / `downsample.norm` ↔ `downsample.0` / `downsample.1`) and norm leaves
//! (`gamma`/`beta` ↔ `weight`/`bias`). The classification head (`fc.*`) is accepted unused.

use crate::{SourceKey, Transform};

/// Source-file entries that carry no backbone weight and are accepted unused.
pub(crate) fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked") || key.starts_with("fc.")
}

/// The torchvision key of the backbone parameter at `path` (relative to the ResNet module).
pub fn torchvision_key(path: &str) -> Option<SourceKey> {
    let seg: Vec<&str> = path.split('.').collect();
    let leaf = |p: &str| match p {
        "gamma" => "weight".to_string(),
        "beta" => "bias".to_string(),
        other => other.to_string(),
    };
    let name = match seg.as_slice() {
        [m @ ("conv1" | "bn1"), p] => format!("{m}.{}", leaf(p)),
        [stage, block, "downsample", part, p] if stage.starts_with("layer") => {
            let i = if *part == "conv" { 0 } else { 1 };
            format!("{stage}.{block}.downsample.{i}.{}", leaf(p))
        }
        [stage, block, m, p] if stage.starts_with("layer") => format!("{stage}.{block}.{m}.{}", leaf(p)),
        _ => return None,
    };
    Some(SourceKey { name, transform: Transform::Identity })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            torchvision_key("layer3.0.downsample.norm.running_mean").unwrap().name,
            "layer3.0.downsample.1.running_mean"
        );
        assert_eq!(torchvision_key("layer1.2.conv3.weight").unwrap().name, "layer1.2.conv3.weight");
        assert_eq!(torchvision_key("bn1.gamma").unwrap().name, "bn1.weight");
        assert!(torchvision_key("maxpool.weight").is_none());
    }
}
