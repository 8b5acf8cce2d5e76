"""Reference outputs of a tiny random Mask2Former from Hugging Face transformers.

Writes to OUT_DIR:
  model.safetensors      the model's state dict (what `mpf-train import --from hf` reads)
  reference.safetensors  input and every intermediate output (see KEYS below)
  mpf.toml               the mpf config describing the same architecture

The reference post-processing follows the original Mask2Former (spec section 2.7), written here in
PyTorch, because transformers' own post-processors resize to 384x384 first and so differ from it.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig

torch.manual_seed(0)
out_dir = Path(sys.argv[1])
out_dir.mkdir(parents=True, exist_ok=True)

K, Q, WIDTH = 5, 10, 8
backbone = ResNetConfig(
    num_channels=3,
    embedding_size=WIDTH,
    hidden_sizes=[WIDTH, 2 * WIDTH, 4 * WIDTH, 8 * WIDTH],
    depths=[2, 2, 2, 2],
    layer_type="basic",
    out_features=["stage1", "stage2", "stage3", "stage4"],
)
cfg = Mask2FormerConfig(
    backbone_config=backbone,
    feature_size=32,
    mask_feature_size=32,
    hidden_dim=32,
    encoder_feedforward_dim=64,
    dim_feedforward=64,
    encoder_layers=2,
    decoder_layers=10,
    num_attention_heads=4,
    num_queries=Q,
    num_labels=K,
    dropout=0.0,
)
model = Mask2FormerForUniversalSegmentation(cfg).eval()

# Perturb every parameter and buffer so that zero-initialised parts (attention-weight projections,
# biases) and batch-norm statistics all matter.
with torch.no_grad():
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand_like(t) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(torch.randn_like(t) * 0.1)
        else:
            t.add_(torch.randn_like(t) * 0.05)

# A deterministic RGB test card, normalised as Mask2Former does (H, W multiples of 32).
H, W = 64, 96
yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
rgb = torch.stack([(xx * 255 // W), (yy * 255 // H), ((xx + yy) % 32) * 8]).float()
rgb[:, 10:40, 20:50] = torch.tensor([220.0, 40.0, 40.0])[:, None, None]


def write_png(path, img):
    """8-bit RGB PNG, written with zlib alone (no imaging library needed)."""
    import struct
    import zlib

    c, h, w = img.shape
    raw = b"".join(b"\x00" + bytes(img[:, y, :].t().reshape(-1).to(torch.uint8).tolist()) for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


write_png(out_dir / "input.png", rgb)
mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
pixel_values = ((rgb - mean) / std)[None]

with torch.no_grad():
    out = model(pixel_values, output_hidden_states=True, output_auxiliary_logits=True)
    inner = model.model(pixel_values, output_hidden_states=True, return_dict=True)

ref = {"pixel_values": pixel_values}
for i, f in enumerate(inner.encoder_hidden_states[-4:]):
    ref[f"backbone.res{i + 2}"] = f
# Pixel decoder: multi-scale features in order 1/32, 1/16, 1/8, then mask features at 1/4.
for i, f in enumerate(inner.pixel_decoder_hidden_states):
    ref[f"pixel_decoder.multi_scale.{i}"] = f
ref["pixel_decoder.mask_features"] = inner.pixel_decoder_last_hidden_state
preds = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in out.auxiliary_logits]
preds.append((out.class_queries_logits, out.masks_queries_logits))
assert len(preds) == 10, len(preds)
for i, (c, m) in enumerate(preds):
    ref[f"prediction.{i}.class_logits"] = c
    ref[f"prediction.{i}.mask_logits"] = m

# Original-Mask2Former post-processing (spec 2.7) of the last prediction, image = whole input,
# output size = 2x the input so the resize path is exercised.
cls, masks = out.class_queries_logits[0], out.masks_queries_logits[0]
out_hw = (2 * H, 2 * W)
up = torch.nn.functional.interpolate(masks[None], size=(H, W), mode="bilinear", align_corners=False)[0]
probs = cls.softmax(-1)
sem = torch.einsum("qc,qhw->chw", probs[:, :-1], up.sigmoid())
sem = torch.nn.functional.interpolate(sem[None], size=out_hw, mode="bilinear", align_corners=False)[0]
ref["semantic.scores"] = sem
ref["semantic.labels"] = sem.argmax(0).to(torch.int32)
inst_masks = torch.nn.functional.interpolate(up[None], size=out_hw, mode="bilinear", align_corners=False)[0]
scores = probs[:, :-1].flatten()
top_scores, top_idx = scores.topk(20, sorted=True)
query, label = top_idx // K, top_idx % K
binary = (inst_masks[query] > 0).float()
mask_score = (inst_masks[query].sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
ref["instance.query"] = query.to(torch.int32)
ref["instance.label"] = label.to(torch.int32)
ref["instance.score"] = top_scores * mask_score
ref["instance.area"] = binary.flatten(1).sum(1).to(torch.int32)

save_file({k: v.contiguous().float() if v.is_floating_point() else v.contiguous() for k, v in ref.items()}, out_dir / "reference.safetensors")
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")

# The same backbone weights as a torchvision-style ResNet state dict (torchvision's key names,
# saved with torch.save), plus a classification head that the importer must skip.
import re

tv = {}
prefix = "model.pixel_level_module.encoder."
for k, v in model.state_dict().items():
    if not k.startswith(prefix):
        continue
    k = k[len(prefix):]
    k = k.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
    m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", k)
    if m:
        s, b, rest = int(m.group(1)), m.group(2), m.group(3)
        rest = re.sub(r"layer\.(\d+)\.convolution", lambda x: f"conv{int(x.group(1)) + 1}", rest)
        rest = re.sub(r"layer\.(\d+)\.normalization", lambda x: f"bn{int(x.group(1)) + 1}", rest)
        rest = rest.replace("shortcut.convolution", "downsample.0").replace("shortcut.normalization", "downsample.1")
        k = f"layer{s + 1}.{b}.{rest}"
    tv[k] = v.clone()
tv["fc.weight"] = torch.randn(10, 8 * WIDTH)
tv["fc.bias"] = torch.randn(10)
torch.save(tv, out_dir / "resnet_torchvision.pth")

(out_dir / "mpf.toml").write_text(
    f"""# The mpf architecture of the Hugging Face reference model in this folder (made by
# scripts/parity/make_fixture.py). transformers hard-codes GroupNorm(32) and 4 sampling points.
seed = 0
task = "instance"

[model]
num_classes = {K}

[model.backbone]
depth = 18
width = {WIDTH}
norm = "frozen_bn"

[model.pixel_decoder]
conv_dim = 32
mask_dim = 32
num_heads = 4
num_points = 4
encoder_layers = 2
ffn_dim = 64
gn_groups = 32

[model.decoder]
hidden_dim = 32
num_queries = {Q}
num_heads = 4
ffn_dim = 64
num_layers = 9
use_query_pos_embed = true

[test]
detections_per_image = 20
"""
)
for k, v in ref.items():
    print(k, tuple(v.shape))
