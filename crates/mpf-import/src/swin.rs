//! Key table of a Swin backbone ([`mpf_model::swin::SwinTransformer`]) in the checkpoints of
//! transformers' `SwinBackbone` (the backbone of its Swin Mask2Former checkpoints), under the names
//! those files use (`embeddings.…`, `encoder.layers.S.blocks.I.attention.self.query`, …); the
//! names transformers 5 renames them to on load are listed in its `conversion_mapping.py`.

use crate::{SourceKey, Transform};

/// The checkpoint key of the Swin parameter at `path` (relative to the backbone), or `None`.
pub fn hf_swin_key(path: &str) -> Option<SourceKey> {
    let seg: Vec<&str> = path.split('.').collect();
    let (id, tr) = (Transform::Identity, Transform::Transpose);
    let norm = |p: &str| if p == "gamma" { "weight".to_string() } else { "bias".to_string() };
    let linear = |p: &str| if p == "weight" { tr } else { id };
    let (name, transform) = match seg.as_slice() {
        ["patch_embed", p] => (format!("embeddings.patch_embeddings.projection.{p}"), id),
        ["embed_norm", p] => (format!("embeddings.norm.{}", norm(p)), id),
        ["out_norms", s, p] => (format!("hidden_states_norms.stage{}.{}", s.parse::<usize>().ok()? + 1, norm(p)), id),
        ["stages", s, "downsample", "norm", p] => (format!("encoder.layers.{s}.downsample.norm.{}", norm(p)), id),
        ["stages", s, "downsample", "reduction", p] => (format!("encoder.layers.{s}.downsample.reduction.{p}"), tr),
        ["stages", s, "blocks", i, rest @ ..] => {
            let block = format!("encoder.layers.{s}.blocks.{i}");
            match rest {
                ["norm1", p] => (format!("{block}.layernorm_before.{}", norm(p)), id),
                ["norm2", p] => (format!("{block}.layernorm_after.{}", norm(p)), id),
                ["fc1", p] => (format!("{block}.intermediate.dense.{p}"), linear(p)),
                ["fc2", p] => (format!("{block}.output.dense.{p}"), linear(p)),
                ["attn", "relative_position_bias_table"] => {
                    (format!("{block}.attention.self.relative_position_bias_table"), id)
                }
                ["attn", proj, p] => {
                    let sub = match *proj {
                        "q_proj" => "self.query",
                        "k_proj" => "self.key",
                        "v_proj" => "self.value",
                        "o_proj" => "output.dense",
                        _ => return None,
                    };
                    (format!("{block}.attention.{sub}.{p}"), linear(p))
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(SourceKey { name, transform })
}

/// Entries of a Swin checkpoint the backbone does not use: the final `layernorm` of transformers'
/// `SwinModel` (the backbone normalises each stage with `hidden_states_norms` instead; transformers
/// itself ignores it when loading a `SwinBackbone`).
pub fn hf_swin_ignorable(key: &str) -> bool {
    matches!(key, "layernorm.weight" | "layernorm.bias" | "swin.layernorm.weight" | "swin.layernorm.bias")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_swin_parameter_has_a_key() {
        let cfg = mpf_model::swin::SwinConfig::new().with_depths(vec![2, 2, 2, 2]);
        let model = cfg.init::<burn::backend::Flex>(&Default::default());
        let paths = crate::param_paths(&model);
        for p in &paths {
            assert!(hf_swin_key(p).is_some(), "no key for {p}");
        }
        let k = |p: &str| hf_swin_key(p).unwrap();
        assert_eq!(
            k("stages.2.blocks.1.attn.o_proj.weight").name,
            "encoder.layers.2.blocks.1.attention.output.dense.weight"
        );
        assert_eq!(k("stages.2.blocks.1.attn.o_proj.weight").transform, Transform::Transpose);
        assert_eq!(k("out_norms.3.gamma").name, "hidden_states_norms.stage4.weight");
        assert_eq!(k("stages.0.downsample.reduction.weight").transform, Transform::Transpose);
        assert!(hf_swin_key("stages.0.blocks.0.attn.w_proj.weight").is_none());
    }
}
