"""Writes tests/fixtures/swin_tiny/: a tiny random transformers `SwinBackbone` (the backbone of the
transformers Swin Mask2Former checkpoints) and its four feature maps on one odd-sized input.

The weights are saved under the key names that released checkpoints use (`embeddings.…`,
`encoder.layers.S.blocks.I.attention.self.query`, `…attention.output.dense`,
`…intermediate.dense`, `…output.dense`, `hidden_states_norms.stageN`): transformers 5 renames
those on load (its `conversion_mapping.py`, entries "swin" and "SwinBackbone"); the inverse
renaming is applied here so the fixture looks like a file a user has.
"""

import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import SwinBackbone, SwinConfig

# transformers' current name -> the checkpoint name (inverse of conversion_mapping.py's "swin"
# and "SwinBackbone" renamings).
INVERSE = [
    (r"^swin\.encoder\.", "encoder."),
    (r"^swin\.embeddings\.", "embeddings."),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.relative_position_bias\.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "intermediate.dense"),
    (r"mlp\.fc2", "output.dense"),
]


def checkpoint_name(key):
    for pattern, repl in INVERSE:
        key = re.sub(pattern, repl, key)
    return key


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    model = SwinBackbone(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {checkpoint_name(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    # 70 x 54: not a multiple of the patch size; stages of 18x14, 9x7, 5x4, 3x2 exercise the
    # window padding, shifted windows with their mask, and odd-sized patch merging.
    x = torch.randn(1, 3, 70, 54)
    with torch.no_grad():
        maps = model(x).feature_maps
    ref = {"pixel_values": x.contiguous()}
    for i, m in enumerate(maps):
        ref[f"stage{i + 1}"] = m.contiguous()
    save_file(ref, str(out / "reference.safetensors"))
    print({k: tuple(v.shape) for k, v in ref.items()})
    print(len(state), "tensors, e.g.", sorted(state)[:3])


if __name__ == "__main__":
    main(sys.argv[1])
