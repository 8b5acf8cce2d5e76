"""Writes the pretrained-weight fixtures of three checkpoint formats.

tests/fixtures/hf_swin_tiny/ -- a tiny random transformers Mask2Former with a Swin backbone:
  model.safetensors, config.json  `save_pretrained` output, i.e. what a user downloads
  reference.safetensors           input and every intermediate output (keys as in hf_tiny)
  detectron2.pkl                  the same weights under the original Mask2Former (detectron2) names,
                                  pickled numpy arrays as in the Mask2Former model zoo, plus an
                                  MP-Former label embedding `sem_seg_head.predictor.label_enc.weight`
  detectron2.pth                  the same dict saved with torch.save, as MP-Former's release
  mpf.toml                        the mpf config of the architecture

tests/fixtures/hf_tiny/detectron2.pth -- the ResNet fixture's weights (hf_tiny/model.safetensors)
  under detectron2 names (`backbone.stem.conv1`, `backbone.res2.0.conv1.norm`, ...), as MP-Former's
  released R50 checkpoint names them.

The detectron2 names are the inverse of transformers' own conversion script
(src/transformers/models/mask2former/convert_mask2former_original_pytorch_checkpoint_to_pytorch.py:
`replace_swin_backbone`, `replace_pixel_module`, `rename_keys_in_masked_attention_decoder`,
`replace_keys_qkv_transformer_decoder`, `replace_universal_segmentation_module`); the ResNet names
are detectron2's `build_resnet_backbone` (`stem.conv1`, `resN.B.convC` with a `.norm` child,
`shortcut`).
"""

import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

K, Q, D = 5, 10, 32
LAYERS = 9  # transformer decoder layers (decoder_layers = LAYERS + 1 predictions)


def to_detectron2(state, hidden):
    """transformers checkpoint names -> original Mask2Former names (qkv packed again)."""
    out = {}
    packed = {}
    for key, v in state.items():
        k = key
        if k in ("criterion.empty_weight",):
            out[k] = v
            continue
        if k.endswith("num_batches_tracked") or k.endswith("swin.layernorm.weight") or k.endswith("swin.layernorm.bias"):
            continue
        m = re.match(r"model\.pixel_level_module\.encoder\.(.*)", k)
        if m:
            r = m.group(1)
            # Swin
            r2 = r.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
            r2 = r2.replace("embeddings.norm", "patch_embed.norm")
            s = re.match(r"hidden_states_norms\.stage(\d)\.(.*)", r2)
            if s:
                out[f"backbone.norm{int(s.group(1)) - 1}.{s.group(2)}"] = v
                continue
            b = re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)", r2)
            if b:
                pre = f"backbone.layers.{b.group(1)}.blocks.{b.group(2)}"
                rest = b.group(3)
                q = re.match(r"attention\.self\.(query|key|value)\.(weight|bias)", rest)
                if q:
                    packed.setdefault(f"{pre}.attn.qkv.{q.group(2)}", {})[q.group(1)] = v
                    continue
                rest = (
                    rest.replace("layernorm_before", "norm1")
                    .replace("layernorm_after", "norm2")
                    .replace("attention.self.relative_position_bias_table", "attn.relative_position_bias_table")
                    .replace("attention.output.dense", "attn.proj")
                    .replace("intermediate.dense", "mlp.fc1")
                    .replace("output.dense", "mlp.fc2")
                )
                out[f"{pre}.{rest}"] = v
                continue
            d = re.match(r"encoder\.layers\.(\d+)\.downsample\.(.*)", r2)
            if d:
                out[f"backbone.layers.{d.group(1)}.downsample.{d.group(2)}"] = v
                continue
            if r2.startswith("patch_embed"):
                out[f"backbone.{r2}"] = v
                continue
            # ResNet (transformers ResNetBackbone -> detectron2 ResNet)
            e = re.match(r"embedder\.embedder\.(convolution|normalization)\.(.*)", r)
            if e:
                out["backbone.stem.conv1." + ("weight" if e.group(1) == "convolution" else "norm." + e.group(2))] = v
                continue
            e = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", r)
            if e:
                pre = f"backbone.res{int(e.group(1)) + 2}.{e.group(2)}"
                rest = e.group(3)
                c = re.match(r"layer\.(\d+)\.(convolution|normalization)\.(.*)", rest)
                if c:
                    conv = f"{pre}.conv{int(c.group(1)) + 1}"
                    out[conv + (".weight" if c.group(2) == "convolution" else f".norm.{c.group(3)}")] = v
                    continue
                c = re.match(r"shortcut\.(convolution|normalization)\.(.*)", rest)
                if c:
                    out[f"{pre}.shortcut" + (".weight" if c.group(1) == "convolution" else f".norm.{c.group(2)}")] = v
                    continue
            raise KeyError(key)
        m = re.match(r"model\.pixel_level_module\.decoder\.(.*)", k)
        if m:
            r = m.group(1)
            pre = "sem_seg_head.pixel_decoder"
            r = re.sub(r"^input_projections\.", "input_proj.", r)
            r = re.sub(r"^level_embed$", "transformer.level_embed", r)
            r = re.sub(r"^mask_projection\.", "mask_features.", r)
            r = re.sub(r"^(adapter_1|layer_1)\.0\.weight$", r"\1.weight", r)
            r = re.sub(r"^(adapter_1|layer_1)\.1\.", r"\1.norm.", r)
            e = re.match(r"encoder\.layers\.(\d+)\.(.*)", r)
            if e:
                rest = (
                    e.group(2)
                    .replace("self_attn_layer_norm", "norm1")
                    .replace("final_layer_norm", "norm2")
                    .replace("fc1", "linear1")
                    .replace("fc2", "linear2")
                )
                r = f"transformer.encoder.layers.{e.group(1)}.{rest}"
            out[f"{pre}.{r}"] = v
            continue
        m = re.match(r"model\.transformer_module\.(.*)", k)
        if m:
            r = m.group(1)
            pre = "sem_seg_head.predictor"
            simple = {
                "queries_embedder.weight": "query_embed.weight",
                "queries_features.weight": "query_feat.weight",
                "level_embed.weight": "level_embed.weight",
            }
            if r in simple:
                out[f"{pre}.{simple[r]}"] = v
                continue
            r = re.sub(r"^input_projections\.", "input_proj.", r)
            if r.startswith("input_proj."):
                out[f"{pre}.{r}"] = v
                continue
            r = r.replace("decoder.layernorm.", "decoder_norm.")
            r = re.sub(r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.", r"mask_embed.layers.\1.", r)
            e = re.match(r"decoder\.layers\.(\d+)\.(.*)", r)
            if e:
                i, rest = e.group(1), e.group(2)
                q = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
                if q:
                    name = "in_proj_weight" if q.group(2) == "weight" else "in_proj_bias"
                    key = f"{pre}.transformer_self_attention_layers.{i}.self_attn.{name}"
                    packed.setdefault(key, {})[{"q": "query", "k": "key", "v": "value"}[q.group(1)]] = v
                    continue
                table = [
                    (r"^self_attn\.out_proj\.", f"transformer_self_attention_layers.{i}.self_attn.out_proj."),
                    (r"^self_attn_layer_norm\.", f"transformer_self_attention_layers.{i}.norm."),
                    (r"^cross_attn\.", f"transformer_cross_attention_layers.{i}.multihead_attn."),
                    (r"^cross_attn_layer_norm\.", f"transformer_cross_attention_layers.{i}.norm."),
                    (r"^fc1\.", f"transformer_ffn_layers.{i}.linear1."),
                    (r"^fc2\.", f"transformer_ffn_layers.{i}.linear2."),
                    (r"^final_layer_norm\.", f"transformer_ffn_layers.{i}.norm."),
                ]
                for pattern, repl in table:
                    if re.match(pattern, rest):
                        out[f"{pre}.{re.sub(pattern, repl, rest)}"] = v
                        break
                else:
                    raise KeyError(key)
                continue
            out[f"{pre}.{r}"] = v
            continue
        if k.startswith("class_predictor."):
            out["sem_seg_head.predictor.class_embed." + k.split(".")[-1]] = v
            continue
        raise KeyError(key)
    for key, parts in packed.items():
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def swin_relative_index(window):
    """The `relative_position_index` buffer the original Swin stores in every block."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def save_detectron2(state, out_dir, pkl):
    torch.save({"model": state, "iteration": 0}, out_dir / "detectron2.pth")
    if pkl:
        arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
        with open(out_dir / "detectron2.pkl", "wb") as f:
            pickle.dump({"model": arrays, "__author__": "mpf fixture", "matching_heuristics": False}, f)


def swin_fixture(out_dir, pixel_values):
    torch.manual_seed(0)
    backbone = SwinConfig(
        embed_dim=8,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=D,
        mask_feature_size=D,
        hidden_dim=D,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=2,
        decoder_layers=LAYERS + 1,
        num_attention_heads=4,
        num_queries=Q,
        num_labels=K,
        dropout=0.0,
        id2label={i: name for i, name in enumerate(["circle", "square", "triangle", "ring", "star"])},
    )
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
    model.save_pretrained(out_dir)

    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True, output_auxiliary_logits=True)
        inner = model.model(pixel_values, output_hidden_states=True, return_dict=True)
    ref = {"pixel_values": pixel_values}
    for i, f in enumerate(inner.encoder_hidden_states[-4:]):
        ref[f"backbone.res{i + 2}"] = f
    for i, f in enumerate(inner.pixel_decoder_hidden_states):
        ref[f"pixel_decoder.multi_scale.{i}"] = f
    ref["pixel_decoder.mask_features"] = inner.pixel_decoder_last_hidden_state
    preds = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in out.auxiliary_logits]
    preds.append((out.class_queries_logits, out.masks_queries_logits))
    assert len(preds) == LAYERS + 1, len(preds)
    for i, (c, m) in enumerate(preds):
        ref[f"prediction.{i}.class_logits"] = c
        ref[f"prediction.{i}.mask_logits"] = m
    save_file({k: v.contiguous().float() for k, v in ref.items()}, out_dir / "reference.safetensors")

    # The detectron2 twin, from the file just written (checkpoint names), plus what the original
    # code stores and transformers drops: each block's relative-position index and MP-Former's
    # label embedding (K rows, no row for "no object").
    state = load_file(out_dir / "model.safetensors")
    d2 = to_detectron2(state, D)
    for s, depth in enumerate(backbone.depths):
        for b in range(depth):
            d2[f"backbone.layers.{s}.blocks.{b}.attn.relative_position_index"] = swin_relative_index(4)
    d2["sem_seg_head.predictor.label_enc.weight"] = torch.randn(K, D)
    save_detectron2(d2, out_dir, pkl=True)
    print(len(state), "transformers tensors,", len(d2), "detectron2 tensors")


def resnet_twin(hf_tiny):
    state = load_file(hf_tiny / "model.safetensors")
    d2 = to_detectron2(state, D)
    torch.save({"model": d2, "iteration": 0}, hf_tiny / "detectron2.pth")
    print(len(d2), "detectron2 tensors for the ResNet fixture")


def main(root):
    root = Path(root)
    hf_tiny = root / "hf_tiny"
    pixel_values = load_file(hf_tiny / "reference.safetensors")["pixel_values"]
    out_dir = root / "hf_swin_tiny"
    out_dir.mkdir(parents=True, exist_ok=True)
    swin_fixture(out_dir, pixel_values)
    resnet_twin(hf_tiny)


if __name__ == "__main__":
    main(sys.argv[1])
