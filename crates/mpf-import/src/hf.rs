//! The key table for Hugging Face transformers' `Mask2FormerForUniversalSegmentation` with a
//! transformers `ResNetBackbone` or `SwinBackbone` (the released COCO / ADE20K / Cityscapes models).
//!
//! | mpf | transformers |
//! |---|---|
//! | `backbone.conv1`, `backbone.bn1` | `model.pixel_level_module.encoder.embedder.embedder.{convolution,normalization}` |
//! | `backbone.layer{s}.{b}.conv{c}` / `bn{c}` | `…encoder.encoder.stages.{s-1}.layers.{b}.layer.{c-1}.{convolution,normalization}` |
//! | `backbone.layer{s}.{b}.downsample.{conv,norm}` | `…layers.{b}.shortcut.{convolution,normalization}` |
//! | Swin: `backbone.{patch_embed,embed_norm,stages,out_norms}.…` | `model.pixel_level_module.encoder.` + [`crate::hf_swin_key`] |
//! | `pixel_decoder.input_proj.{i}.{conv,norm}` | `model.pixel_level_module.decoder.input_projections.{i}.{0,1}` |
//! | `pixel_decoder.level_embed` | `…decoder.level_embed` |
//! | `pixel_decoder.encoder.{l}.self_attn.*` | `…decoder.encoder.layers.{l}.self_attn.*` |
//! | `pixel_decoder.encoder.{l}.{norm1,linear1,linear2,norm2}` | `…layers.{l}.{self_attn_layer_norm,fc1,fc2,final_layer_norm}` |
//! | `pixel_decoder.{lateral,output}.{conv,norm}` | `…decoder.{adapter_1,layer_1}.{0,1}` |
//! | `pixel_decoder.mask_features` | `…decoder.mask_projection` |
//! | `decoder.query_feat` / `query_embed` / `level_embed` | `model.transformer_module.{queries_features,queries_embedder,level_embed}.weight` |
//! | `decoder.input_proj.{i}` | `model.transformer_module.input_projections.{i}` |
//! | `decoder.layers.{l}.cross_attn.{q,k,v}_proj` | chunks 0/1/2 of `…decoder.layers.{l}.cross_attn.in_proj_{weight,bias}` |
//! | `decoder.layers.{l}.cross_attn.out_proj`, `cross_norm` | `…cross_attn.out_proj`, `cross_attn_layer_norm` |
//! | `decoder.layers.{l}.self_attn.*`, `self_norm` | `…self_attn.*`, `self_attn_layer_norm` |
//! | `decoder.layers.{l}.{linear1,linear2,ffn_norm}` | `…{fc1,fc2,final_layer_norm}` |
//! | `decoder.heads.decoder_norm` | `model.transformer_module.decoder.layernorm` |
//! | `decoder.heads.mask_embed.{i}` | `…decoder.mask_predictor.mask_embedder.{i}.0` |
//! | `decoder.heads.class_embed` | `class_predictor` |
//!
//! Norm parameters are renamed (`gamma`/`beta` → `weight`/`bias`) and `Linear` weights transposed.

use crate::{SourceKey, Transform};

const BACKBONE: &str = "model.pixel_level_module.encoder";
const PIXEL: &str = "model.pixel_level_module.decoder";
const TRANSFORMER: &str = "model.transformer_module";

/// Source-file entries that carry no model weight and are accepted unused.
pub(crate) fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
        || key == "criterion.empty_weight"
        || key.strip_prefix(BACKBONE).and_then(|k| k.strip_prefix('.')).is_some_and(crate::hf_swin_ignorable)
}

/// `gamma`/`beta` (Burn norms) → `weight`/`bias` (PyTorch); other leaves unchanged.
fn leaf(name: &str) -> &str {
    match name {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

fn key(name: String, transform: Transform) -> Option<SourceKey> {
    Some(SourceKey { name, transform })
}

/// A `Linear`'s weight is transposed, its bias copied.
fn linear(prefix: &str, param: &str) -> Option<SourceKey> {
    let t = if param == "weight" { Transform::Transpose } else { Transform::Identity };
    key(format!("{prefix}.{param}"), t)
}

fn index_minus_one(s: &str, prefix: &str) -> Option<usize> {
    s.strip_prefix(prefix)?.parse::<usize>().ok()?.checked_sub(1)
}

/// The transformers key (and layout change) of the mpf parameter at `path`, or `None` if the
/// table has no entry for it.
pub fn hf_key(path: &str) -> Option<SourceKey> {
    let seg: Vec<&str> = path.split('.').collect();
    let id = Transform::Identity;
    match seg.as_slice() {
        // Swin backbone.
        ["backbone", "patch_embed" | "embed_norm" | "stages" | "out_norms", ..] => {
            let inner = crate::hf_swin_key(&path["backbone.".len()..])?;
            key(format!("{BACKBONE}.{}", inner.name), inner.transform)
        }
        // ResNet backbone.
        ["backbone", "conv1", p] => key(format!("{BACKBONE}.embedder.embedder.convolution.{p}"), id),
        ["backbone", "bn1", p] => key(format!("{BACKBONE}.embedder.embedder.normalization.{}", leaf(p)), id),
        ["backbone", stage, block, "downsample", part, p] => {
            let s = index_minus_one(stage, "layer")?;
            let sub = if *part == "conv" { "convolution" } else { "normalization" };
            key(format!("{BACKBONE}.encoder.stages.{s}.layers.{block}.shortcut.{sub}.{}", leaf(p)), id)
        }
        ["backbone", stage, block, layer, p] => {
            let s = index_minus_one(stage, "layer")?;
            let (c, sub) = match (index_minus_one(layer, "conv"), index_minus_one(layer, "bn")) {
                (Some(c), _) => (c, "convolution"),
                (_, Some(c)) => (c, "normalization"),
                _ => return None,
            };
            key(format!("{BACKBONE}.encoder.stages.{s}.layers.{block}.layer.{c}.{sub}.{}", leaf(p)), id)
        }
        // Pixel decoder.
        ["pixel_decoder", "input_proj", i, part, p] => {
            let sub = if *part == "conv" { 0 } else { 1 };
            key(format!("{PIXEL}.input_projections.{i}.{sub}.{}", leaf(p)), id)
        }
        ["pixel_decoder", "level_embed"] => key(format!("{PIXEL}.level_embed"), id),
        ["pixel_decoder", "encoder", l, "self_attn", proj, p] => {
            linear(&format!("{PIXEL}.encoder.layers.{l}.self_attn.{proj}"), p)
        }
        ["pixel_decoder", "encoder", l, part, p] => {
            let prefix = format!("{PIXEL}.encoder.layers.{l}");
            match *part {
                "norm1" => key(format!("{prefix}.self_attn_layer_norm.{}", leaf(p)), id),
                "norm2" => key(format!("{prefix}.final_layer_norm.{}", leaf(p)), id),
                "linear1" => linear(&format!("{prefix}.fc1"), p),
                "linear2" => linear(&format!("{prefix}.fc2"), p),
                _ => None,
            }
        }
        ["pixel_decoder", block @ ("lateral" | "output"), part, p] => {
            let name = if *block == "lateral" { "adapter_1" } else { "layer_1" };
            let sub = if *part == "conv" { 0 } else { 1 };
            key(format!("{PIXEL}.{name}.{sub}.{}", leaf(p)), id)
        }
        ["pixel_decoder", "mask_features", p] => key(format!("{PIXEL}.mask_projection.{p}"), id),
        // Transformer decoder.
        ["decoder", "query_feat"] => key(format!("{TRANSFORMER}.queries_features.weight"), id),
        ["decoder", "query_embed"] => key(format!("{TRANSFORMER}.queries_embedder.weight"), id),
        ["decoder", "level_embed"] => key(format!("{TRANSFORMER}.level_embed.weight"), id),
        ["decoder", "input_proj", i, p] => key(format!("{TRANSFORMER}.input_projections.{i}.{p}"), id),
        ["decoder", "layers", l, "cross_attn", proj, p] => {
            let prefix = format!("{TRANSFORMER}.decoder.layers.{l}.cross_attn");
            let chunk = match *proj {
                "q_proj" => 0,
                "k_proj" => 1,
                "v_proj" => 2,
                "out_proj" => return linear(&format!("{prefix}.out_proj"), p),
                _ => return None,
            };
            let packed = if *p == "weight" { "in_proj_weight" } else { "in_proj_bias" };
            key(format!("{prefix}.{packed}"), Transform::PackedChunk(chunk))
        }
        ["decoder", "layers", l, "self_attn", proj, p] => {
            linear(&format!("{TRANSFORMER}.decoder.layers.{l}.self_attn.{proj}"), p)
        }
        ["decoder", "layers", l, part, p] => {
            let prefix = format!("{TRANSFORMER}.decoder.layers.{l}");
            match *part {
                "cross_norm" => key(format!("{prefix}.cross_attn_layer_norm.{}", leaf(p)), id),
                "self_norm" => key(format!("{prefix}.self_attn_layer_norm.{}", leaf(p)), id),
                "ffn_norm" => key(format!("{prefix}.final_layer_norm.{}", leaf(p)), id),
                "linear1" => linear(&format!("{prefix}.fc1"), p),
                "linear2" => linear(&format!("{prefix}.fc2"), p),
                _ => None,
            }
        }
        ["decoder", "heads", "decoder_norm", p] => key(format!("{TRANSFORMER}.decoder.layernorm.{}", leaf(p)), id),
        ["decoder", "heads", "class_embed", p] => linear("class_predictor", p),
        ["decoder", "heads", "mask_embed", i, p] => {
            linear(&format!("{TRANSFORMER}.decoder.mask_predictor.mask_embedder.{i}.0"), p)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representative_keys() {
        let k = |p: &str| hf_key(p).map(|k| (k.name, k.transform));
        // Trainable batch norm's gamma/beta take PyTorch's weight/bias.
        assert_eq!(
            k("backbone.layer2.0.bn1.gamma").unwrap().0,
            "model.pixel_level_module.encoder.encoder.stages.1.layers.0.layer.0.normalization.weight"
        );
        assert_eq!(
            k("backbone.layer2.0.conv2.weight").unwrap().0,
            "model.pixel_level_module.encoder.encoder.stages.1.layers.0.layer.1.convolution.weight"
        );
        assert_eq!(
            k("backbone.layer3.0.downsample.norm.running_var").unwrap().0,
            "model.pixel_level_module.encoder.encoder.stages.2.layers.0.shortcut.normalization.running_var"
        );
        assert_eq!(
            k("decoder.layers.4.cross_attn.v_proj.weight").unwrap(),
            ("model.transformer_module.decoder.layers.4.cross_attn.in_proj_weight".into(), Transform::PackedChunk(2))
        );
        assert_eq!(
            k("decoder.heads.class_embed.weight").unwrap(),
            ("class_predictor.weight".into(), Transform::Transpose)
        );
        assert_eq!(k("pixel_decoder.output.norm.beta").unwrap().0, "model.pixel_level_module.decoder.layer_1.1.bias");
        assert_eq!(k("decoder.nonsense.weight"), None);
        assert_eq!(
            k("backbone.stages.1.downsample.norm.beta").unwrap().0,
            "model.pixel_level_module.encoder.encoder.layers.1.downsample.norm.bias"
        );
        assert!(ignorable("model.pixel_level_module.encoder.swin.layernorm.weight"));
    }
}
