//! The mpf architecture of a transformers Mask2Former, read from the `config.json` that
//! `save_pretrained` writes beside the weights.

use std::path::Path;

use mpf_model::Mask2FormerConfig;
use mpf_model::backbone::{BackboneConfig, NormKind, ResNetConfig};
use mpf_model::decoder::TransformerDecoderConfig;
use mpf_model::pixel_decoder::PixelDecoderConfig;
use mpf_model::swin::SwinConfig;
use serde_json::Value;

use crate::ImportError;

/// What a transformers `config.json` describes.
#[derive(Debug, Clone)]
pub struct HfArchitecture {
    /// The network.
    pub model: Mask2FormerConfig,
    /// Class names in id order (`id2label`).
    pub class_names: Vec<String>,
}

/// Reads a transformers `Mask2FormerConfig` (`config.json`) as an mpf model config. transformers
/// fixes what it does not store: 4 sampling points per head and level, GroupNorm with 32 groups,
/// the learnable query position; a ResNet backbone gets detectron2's frozen batch norm.
pub fn hf_config(path: &Path) -> Result<HfArchitecture, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read { path: path.into(), source })?;
    let fmt = |message: String| ImportError::Format { path: path.into(), message };
    let root: Value = serde_json::from_str(&text).map_err(|e| fmt(format!("not JSON: {e}")))?;
    if root.get("model_type").and_then(Value::as_str) != Some("mask2former") {
        return Err(fmt("`model_type` is not \"mask2former\"".into()));
    }
    let uint = |v: &Value, key: &str| -> Result<usize, ImportError> {
        v.get(key)
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| fmt(format!("`{key}` is missing or not a non-negative integer")))
    };
    let float = |v: &Value, key: &str, default: f64| v.get(key).and_then(Value::as_f64).unwrap_or(default);
    let list = |v: &Value, key: &str| -> Result<Vec<usize>, ImportError> {
        v.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| fmt(format!("`backbone_config.{key}` is missing or not a list of integers")))
    };
    let bb = root.get("backbone_config").ok_or_else(|| fmt("`backbone_config` is missing".into()))?;
    // Options transformers has and the original Mask2Former never uses: refused rather than
    // imported into a model that computes something else.
    let flag = |v: &Value, key: &str| v.get(key).and_then(Value::as_bool);
    for (v, key, unsupported, why) in [
        (bb, "use_absolute_embeddings", true, "Swin's absolute position embedding"),
        (bb, "qkv_bias", false, "Swin attention without q/k/v biases"),
        (&root, "enforce_input_projection", true, "input projections between equal widths"),
        (&root, "pre_norm", true, "pre-norm decoder layers"),
    ] {
        if flag(v, key) == Some(unsupported) {
            return Err(fmt(format!(
                "`{key}` = {unsupported}: {why} is not supported (the original Mask2Former has none)"
            )));
        }
    }
    let backbone: BackboneConfig = match bb.get("model_type").and_then(Value::as_str) {
        Some("swin") => SwinConfig::new()
            .with_embed_dim(uint(bb, "embed_dim")?)
            .with_depths(list(bb, "depths")?)
            .with_num_heads(list(bb, "num_heads")?)
            .with_window_size(uint(bb, "window_size")?)
            .with_patch_size(uint(bb, "patch_size").unwrap_or(4))
            .with_mlp_ratio(float(bb, "mlp_ratio", 4.0))
            .with_drop_path_rate(float(bb, "drop_path_rate", 0.3))
            .with_layer_norm_eps(float(bb, "layer_norm_eps", 1e-5))
            .into(),
        Some("resnet") => {
            let depths = list(bb, "depths")?;
            let bottleneck = bb.get("layer_type").and_then(Value::as_str) == Some("bottleneck");
            let depth = match (depths.as_slice(), bottleneck) {
                ([2, 2, 2, 2], false) => 18,
                ([3, 4, 6, 3], false) => 34,
                ([3, 4, 6, 3], true) => 50,
                ([3, 4, 23, 3], true) => 101,
                (d, b) => {
                    return Err(fmt(format!(
                        "ResNet with depths {d:?} and {} blocks has no mpf depth (18, 34, 50, 101)",
                        if b { "bottleneck" } else { "basic" }
                    )));
                }
            };
            ResNetConfig::new()
                .with_depth(depth)
                .with_width(uint(bb, "embedding_size")?)
                .with_norm(NormKind::FrozenBn)
                .into()
        }
        other => return Err(fmt(format!("backbone `{}` is not supported (swin, resnet)", other.unwrap_or("?")))),
    };
    let mut labels: Vec<(usize, String)> = root
        .get("id2label")
        .and_then(Value::as_object)
        .ok_or_else(|| fmt("`id2label` is missing".into()))?
        .iter()
        .map(|(k, v)| {
            Ok((
                k.parse::<usize>().map_err(|_| fmt(format!("`id2label` key `{k}` is not an id")))?,
                v.as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect::<Result<_, ImportError>>()?;
    labels.sort();
    if labels.iter().enumerate().any(|(i, (id, _))| *id != i) {
        return Err(fmt("`id2label` ids are not 0..K".into()));
    }
    let heads = uint(&root, "num_attention_heads")?;
    let decoder_layers = uint(&root, "decoder_layers")?;
    if decoder_layers < 2 {
        return Err(fmt(format!("`decoder_layers` = {decoder_layers}; Mask2Former needs at least 2")));
    }
    let model = Mask2FormerConfig::new()
        .with_num_classes(labels.len())
        .with_backbone(backbone)
        .with_pixel_decoder(
            PixelDecoderConfig::new()
                .with_conv_dim(uint(&root, "feature_size")?)
                .with_mask_dim(uint(&root, "mask_feature_size")?)
                .with_num_heads(heads)
                .with_num_points(4)
                .with_encoder_layers(uint(&root, "encoder_layers")?)
                .with_ffn_dim(uint(&root, "encoder_feedforward_dim")?)
                .with_gn_groups(32),
        )
        .with_decoder(
            TransformerDecoderConfig::new()
                .with_hidden_dim(uint(&root, "hidden_dim")?)
                .with_num_queries(uint(&root, "num_queries")?)
                .with_num_heads(heads)
                .with_ffn_dim(uint(&root, "dim_feedforward")?)
                .with_num_layers(decoder_layers - 1)
                .with_use_query_pos_embed(true),
        );
    model.validate().map_err(|e| fmt(format!("describes an invalid model: {e}")))?;
    Ok(HfArchitecture { model, class_names: labels.into_iter().map(|(_, n)| n).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal transformers config: Swin-T-like sizes, 2 classes.
    fn json(patch: impl FnOnce(&mut Value)) -> tempfile::NamedTempFile {
        let mut v = serde_json::json!({
            "model_type": "mask2former",
            "backbone_config": {
                "model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
                "window_size": 7, "drop_path_rate": 0.3, "use_absolute_embeddings": false, "qkv_bias": true
            },
            "id2label": {"1": "dog", "0": "cat"},
            "num_attention_heads": 8, "decoder_layers": 10, "feature_size": 256, "mask_feature_size": 256,
            "encoder_layers": 6, "encoder_feedforward_dim": 1024, "hidden_dim": 256, "num_queries": 100,
            "dim_feedforward": 2048
        });
        patch(&mut v);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), v.to_string()).unwrap();
        f
    }

    #[test]
    fn a_swin_config_becomes_the_mpf_model() {
        let f = json(|_| {});
        let arch = hf_config(f.path()).unwrap();
        assert_eq!(arch.class_names, ["cat", "dog"], "id order, not file order");
        let m = &arch.model;
        assert_eq!(m.num_classes, 2);
        assert_eq!(m.backbone.out_channels().unwrap(), [96, 192, 384, 768]);
        assert_eq!((m.decoder.num_layers, m.decoder.num_queries, m.decoder.num_heads), (9, 100, 8));
        assert_eq!((m.pixel_decoder.num_points, m.pixel_decoder.gn_groups), (4, 32));
    }

    #[test]
    fn what_mpf_cannot_compute_is_refused_by_key() {
        type Patch = fn(&mut Value);
        let cases: [(Patch, &str); 6] = [
            (|v| v["model_type"] = "maskformer".into(), "model_type"),
            (|v| v["backbone_config"]["use_absolute_embeddings"] = true.into(), "use_absolute_embeddings"),
            (|v| v["backbone_config"]["qkv_bias"] = false.into(), "qkv_bias"),
            (|v| v["backbone_config"]["model_type"] = "convnext".into(), "convnext"),
            (|v| v["id2label"] = serde_json::json!({"0": "a", "2": "b"}), "id2label"),
            (|v| v["decoder_layers"] = 1.into(), "decoder_layers"),
        ];
        for (patch, key) in cases {
            let f = json(patch);
            let e = hf_config(f.path()).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(&f.path().display().to_string()), "{key}: {e}");
        }
    }
}
