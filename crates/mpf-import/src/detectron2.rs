//! The key table for checkpoints of the original Mask2Former and of MP-Former, which are detectron2
//! models (`.pkl` model-zoo files and `.pth` training checkpoints alike).
//!
//! The names are those of detectron2's ResNet (`build_resnet_backbone`: `stem.conv1`, `resN.B.convC`
//! with a `.norm` child, `shortcut`), of the Swin backbone Mask2Former registers (`patch_embed`,
//! `layers.S.blocks.I` with a packed `attn.qkv`, `normS` per output), of its pixel decoder
//! (`sem_seg_head.pixel_decoder`) and of its transformer decoder (`sem_seg_head.predictor`, with
//! PyTorch's packed `in_proj_weight`); transformers' own conversion script
//! (`convert_mask2former_original_pytorch_checkpoint_to_pytorch.py`) lists the same
//! correspondence from the other side.
//!
//! | mpf | detectron2 |
//! |---|---|
//! | `backbone.conv1`, `backbone.bn1` | `backbone.stem.conv1.weight`, `backbone.stem.conv1.norm.*` |
//! | `backbone.layer{s}.{b}.conv{c}` / `bn{c}` | `backbone.res{s+1}.{b}.conv{c}.weight` / `.conv{c}.norm.*` |
//! | `backbone.layer{s}.{b}.downsample.{conv,norm}` | `backbone.res{s+1}.{b}.shortcut.weight` / `.shortcut.norm.*` |
//! | `backbone.patch_embed`, `embed_norm` | `backbone.patch_embed.proj`, `backbone.patch_embed.norm` |
//! | `backbone.stages.{s}.blocks.{i}.attn.{q,k,v}_proj` | chunks 0/1/2 of `backbone.layers.{s}.blocks.{i}.attn.qkv` |
//! | `….attn.o_proj`, `fc1`, `fc2`, `norm1`, `norm2` | `….attn.proj`, `mlp.fc1`, `mlp.fc2`, `norm1`, `norm2` |
//! | `backbone.stages.{s}.downsample.*`, `backbone.out_norms.{s}` | `backbone.layers.{s}.downsample.*`, `backbone.norm{s}` |
//! | `pixel_decoder.input_proj.{i}.{conv,norm}` | `sem_seg_head.pixel_decoder.input_proj.{i}.{0,1}` |
//! | `pixel_decoder.level_embed`, `encoder.{l}.*` | `….transformer.level_embed`, `….transformer.encoder.layers.{l}.*` |
//! | `pixel_decoder.{lateral,output}.{conv,norm}` | `….{adapter_1,layer_1}.weight`, `….{adapter_1,layer_1}.norm.*` |
//! | `pixel_decoder.mask_features` | `….mask_features` |
//! | `decoder.query_feat` / `query_embed` / `level_embed` | `sem_seg_head.predictor.{query_feat,query_embed,level_embed}.weight` |
//! | `decoder.layers.{l}.self_attn.{q,k,v}_proj` | chunks of `….transformer_self_attention_layers.{l}.self_attn.in_proj_*` |
//! | `decoder.layers.{l}.cross_attn.{q,k,v}_proj` | chunks of `….transformer_cross_attention_layers.{l}.multihead_attn.in_proj_*` |
//! | `decoder.layers.{l}.{self_norm,cross_norm,ffn_norm,linear1,linear2}` | `….transformer_{self_attention,cross_attention,ffn}_layers.{l}.{norm,linear1,linear2}` |
//! | `decoder.heads.{decoder_norm,class_embed,mask_embed.{i}}` | `….{decoder_norm,class_embed,mask_embed.layers.{i}}` |
//! | MP-Former's label embedding | `sem_seg_head.predictor.label_enc.weight` ([`LABEL_ENC`]) |

use crate::{SourceKey, Transform};

const PIXEL: &str = "sem_seg_head.pixel_decoder";
const PREDICTOR: &str = "sem_seg_head.predictor";

/// MP-Former's `[K, d]` class embedding of the mask-piloted queries.
pub const LABEL_ENC: &str = "sem_seg_head.predictor.label_enc.weight";

/// Entries without a model weight: batch-norm counters, Swin's constant relative-position index,
/// the criterion's class weights and the normalisation constants.
pub(crate) fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
        || key.ends_with("attn.relative_position_index")
        || matches!(key, "criterion.empty_weight" | "pixel_mean" | "pixel_std")
}

/// `gamma`/`beta` (Burn's trainable norms) → `weight`/`bias`.
fn leaf(p: &str) -> &str {
    match p {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

fn key(name: String, transform: Transform) -> Option<SourceKey> {
    Some(SourceKey { name, transform })
}

/// A `Linear`'s weight is transposed, its bias copied.
fn linear(prefix: &str, p: &str) -> Option<SourceKey> {
    key(format!("{prefix}.{p}"), if p == "weight" { Transform::Transpose } else { Transform::Identity })
}

/// Chunk `proj` (q/k/v) of PyTorch's packed projection `prefix.in_proj_{weight,bias}`, or the
/// output projection.
fn packed(prefix: &str, proj: &str, p: &str, packed_name: fn(&str) -> String, out: &str) -> Option<SourceKey> {
    let chunk = match proj {
        "q_proj" => 0,
        "k_proj" => 1,
        "v_proj" => 2,
        "out_proj" | "o_proj" => return linear(&format!("{prefix}.{out}"), p),
        _ => return None,
    };
    key(format!("{prefix}.{}", packed_name(p)), Transform::PackedChunk(chunk))
}

fn stage(s: &str) -> Option<usize> {
    s.strip_prefix("layer")?.parse::<usize>().ok().map(|s| s + 1)
}

/// The detectron2 key (and layout change) of the mpf parameter at `path`, or `None`.
pub fn detectron2_key(path: &str) -> Option<SourceKey> {
    let seg: Vec<&str> = path.split('.').collect();
    let id = Transform::Identity;
    match seg.as_slice() {
        // ResNet.
        ["backbone", "conv1", "weight"] => key("backbone.stem.conv1.weight".into(), id),
        ["backbone", "bn1", p] => key(format!("backbone.stem.conv1.norm.{}", leaf(p)), id),
        ["backbone", s, b, "downsample", "conv", "weight"] if s.starts_with("layer") => {
            key(format!("backbone.res{}.{b}.shortcut.weight", stage(s)?), id)
        }
        ["backbone", s, b, "downsample", "norm", p] if s.starts_with("layer") => {
            key(format!("backbone.res{}.{b}.shortcut.norm.{}", stage(s)?, leaf(p)), id)
        }
        ["backbone", s, b, layer, p] if s.starts_with("layer") => {
            let res = stage(s)?;
            if let Some(c) = layer.strip_prefix("conv") {
                key(format!("backbone.res{res}.{b}.conv{c}.{p}"), id)
            } else {
                let c = layer.strip_prefix("bn")?;
                key(format!("backbone.res{res}.{b}.conv{c}.norm.{}", leaf(p)), id)
            }
        }
        // Swin.
        ["backbone", "patch_embed", p] => key(format!("backbone.patch_embed.proj.{p}"), id),
        ["backbone", "embed_norm", p] => key(format!("backbone.patch_embed.norm.{}", leaf(p)), id),
        ["backbone", "out_norms", s, p] => key(format!("backbone.norm{s}.{}", leaf(p)), id),
        ["backbone", "stages", s, "downsample", "norm", p] => {
            key(format!("backbone.layers.{s}.downsample.norm.{}", leaf(p)), id)
        }
        ["backbone", "stages", s, "downsample", "reduction", p] => {
            linear(&format!("backbone.layers.{s}.downsample.reduction"), p)
        }
        ["backbone", "stages", s, "blocks", i, rest @ ..] => {
            let block = format!("backbone.layers.{s}.blocks.{i}");
            match rest {
                [norm @ ("norm1" | "norm2"), p] => key(format!("{block}.{norm}.{}", leaf(p)), id),
                [fc @ ("fc1" | "fc2"), p] => linear(&format!("{block}.mlp.{fc}"), p),
                ["attn", "relative_position_bias_table"] => {
                    key(format!("{block}.attn.relative_position_bias_table"), id)
                }
                ["attn", proj, p] => packed(&format!("{block}.attn"), proj, p, |p| format!("qkv.{p}"), "proj"),
                _ => None,
            }
        }
        // Pixel decoder.
        ["pixel_decoder", "input_proj", i, part, p] => {
            let sub = if *part == "conv" { 0 } else { 1 };
            key(format!("{PIXEL}.input_proj.{i}.{sub}.{}", leaf(p)), id)
        }
        ["pixel_decoder", "level_embed"] => key(format!("{PIXEL}.transformer.level_embed"), id),
        ["pixel_decoder", "encoder", l, "self_attn", proj, p] => {
            linear(&format!("{PIXEL}.transformer.encoder.layers.{l}.self_attn.{proj}"), p)
        }
        ["pixel_decoder", "encoder", l, part, p] => {
            let prefix = format!("{PIXEL}.transformer.encoder.layers.{l}.{part}");
            match *part {
                "norm1" | "norm2" => key(format!("{prefix}.{}", leaf(p)), id),
                "linear1" | "linear2" => linear(&prefix, p),
                _ => None,
            }
        }
        ["pixel_decoder", block @ ("lateral" | "output"), part, p] => {
            let name = if *block == "lateral" { "adapter_1" } else { "layer_1" };
            if *part == "conv" {
                key(format!("{PIXEL}.{name}.{p}"), id)
            } else {
                key(format!("{PIXEL}.{name}.norm.{}", leaf(p)), id)
            }
        }
        ["pixel_decoder", "mask_features", p] => key(format!("{PIXEL}.mask_features.{p}"), id),
        // Transformer decoder.
        ["decoder", name @ ("query_feat" | "query_embed" | "level_embed")] => {
            key(format!("{PREDICTOR}.{name}.weight"), id)
        }
        ["decoder", "input_proj", i, p] => key(format!("{PREDICTOR}.input_proj.{i}.{p}"), id),
        ["decoder", "layers", l, "self_attn", proj, p] => packed(
            &format!("{PREDICTOR}.transformer_self_attention_layers.{l}.self_attn"),
            proj,
            p,
            |p| format!("in_proj_{p}"),
            "out_proj",
        ),
        ["decoder", "layers", l, "cross_attn", proj, p] => packed(
            &format!("{PREDICTOR}.transformer_cross_attention_layers.{l}.multihead_attn"),
            proj,
            p,
            |p| format!("in_proj_{p}"),
            "out_proj",
        ),
        ["decoder", "layers", l, part, p] => {
            let layer = |kind: &str| format!("{PREDICTOR}.transformer_{kind}_layers.{l}");
            match *part {
                "self_norm" => key(format!("{}.norm.{}", layer("self_attention"), leaf(p)), id),
                "cross_norm" => key(format!("{}.norm.{}", layer("cross_attention"), leaf(p)), id),
                "ffn_norm" => key(format!("{}.norm.{}", layer("ffn"), leaf(p)), id),
                "linear1" | "linear2" => linear(&format!("{}.{part}", layer("ffn")), p),
                _ => None,
            }
        }
        ["decoder", "heads", "decoder_norm", p] => key(format!("{PREDICTOR}.decoder_norm.{}", leaf(p)), id),
        ["decoder", "heads", "class_embed", p] => linear(&format!("{PREDICTOR}.class_embed"), p),
        ["decoder", "heads", "mask_embed", i, p] => linear(&format!("{PREDICTOR}.mask_embed.layers.{i}"), p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representative_keys() {
        let k = |p: &str| detectron2_key(p).map(|k| (k.name, k.transform));
        assert_eq!(k("backbone.conv1.weight").unwrap().0, "backbone.stem.conv1.weight");
        assert_eq!(k("backbone.bn1.running_var").unwrap().0, "backbone.stem.conv1.norm.running_var");
        assert_eq!(k("backbone.layer1.0.bn2.gamma").unwrap().0, "backbone.res2.0.conv2.norm.weight");
        assert_eq!(k("backbone.layer4.2.conv3.weight").unwrap().0, "backbone.res5.2.conv3.weight");
        assert_eq!(k("backbone.layer3.0.downsample.conv.weight").unwrap().0, "backbone.res4.0.shortcut.weight");
        assert_eq!(
            k("backbone.stages.2.blocks.1.attn.k_proj.weight").unwrap(),
            ("backbone.layers.2.blocks.1.attn.qkv.weight".into(), Transform::PackedChunk(1))
        );
        assert_eq!(
            k("backbone.stages.2.blocks.1.attn.o_proj.bias").unwrap(),
            ("backbone.layers.2.blocks.1.attn.proj.bias".into(), Transform::Identity)
        );
        assert_eq!(k("backbone.out_norms.3.gamma").unwrap().0, "backbone.norm3.weight");
        assert_eq!(k("backbone.stages.1.downsample.norm.beta").unwrap().0, "backbone.layers.1.downsample.norm.bias");
        assert_eq!(k("pixel_decoder.lateral.conv.weight").unwrap().0, "sem_seg_head.pixel_decoder.adapter_1.weight");
        assert_eq!(k("pixel_decoder.output.norm.beta").unwrap().0, "sem_seg_head.pixel_decoder.layer_1.norm.bias");
        assert_eq!(
            k("decoder.layers.3.self_attn.v_proj.bias").unwrap(),
            (
                "sem_seg_head.predictor.transformer_self_attention_layers.3.self_attn.in_proj_bias".into(),
                Transform::PackedChunk(2)
            )
        );
        assert_eq!(
            k("decoder.layers.3.linear2.weight").unwrap(),
            ("sem_seg_head.predictor.transformer_ffn_layers.3.linear2.weight".into(), Transform::Transpose)
        );
        assert_eq!(k("decoder.heads.mask_embed.2.bias").unwrap().0, "sem_seg_head.predictor.mask_embed.layers.2.bias");
        assert_eq!(k("decoder.nonsense.weight"), None);
        assert!(ignorable("backbone.layers.0.blocks.1.attn.relative_position_index"));
        assert!(!ignorable(LABEL_ENC));
    }
}
