"""PyTorch's half of the side-by-side benchmark (`cargo xtask bench --peer`).

Builds Hugging Face transformers' Mask2FormerForUniversalSegmentation at the widths of an mpf case,
trains it on the batch mpf wrote (`benches/peer.rs --batch-out`) with the same recipe (AdamW,
global gradient clipping, frozen batch norm, deep supervision, point-sampled losses), and prints
one JSON object in the schema of `benches/peer.rs`: median milliseconds per phase, trainable
parameters, peak resident memory.

transformers hard-codes GroupNorm(32) in the pixel decoder and 4 sampling points per deformable
head; for the tiny case both are patched to mpf's values (GroupNorm(8), 2 points) so the two
networks are the same (the trainable parameter counts are printed to prove it).

    python torch_peer.py --case tiny --mode train --steps 20 --batch DIR/tiny.safetensors [--threads N]
"""
import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
from transformers.models.mask2former import modeling_mask2former as m2f

CASES = {
    # width-8 basic-block ResNet, 32-wide pixel decoder and decoder: configs/synthetic/tiny_mask2former.toml
    "tiny": dict(
        backbone=dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2], layer_type="basic"),
        model=dict(
            feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
            encoder_layers=2, decoder_layers=10, num_attention_heads=4, num_queries=10, num_labels=5,
            train_num_points=1024,
        ),
        gn_groups=8,
        n_points=2,
        lr=1e-3,
    ),
    # ResNet-50 Mask2Former at the paper's widths: configs/coco/instance/mask2former_r50.toml
    "r50": dict(
        backbone=dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                      layer_type="bottleneck"),
        model=dict(num_queries=100, num_labels=80, train_num_points=12544),
        gn_groups=32,
        n_points=4,
        lr=1e-4,
    ),
}


def build(case):
    spec = CASES[case]
    backbone = ResNetConfig(num_channels=3, out_features=["stage1", "stage2", "stage3", "stage4"], **spec["backbone"])
    cfg = Mask2FormerConfig(backbone_config=backbone, dropout=0.0, **spec["model"])
    model = Mask2FormerForUniversalSegmentation(cfg)
    # mpf's pixel-decoder GroupNorm groups and deformable sampling points.
    for mod in model.model.pixel_level_module.decoder.modules():
        if isinstance(mod, torch.nn.GroupNorm):
            mod.num_groups = spec["gn_groups"]
    if spec["n_points"] != 4:
        for layer in model.model.pixel_level_module.decoder.encoder.layers:
            old = layer.self_attn
            layer.self_attn = m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(
                embed_dim=old.d_model, num_heads=old.n_heads, n_levels=old.n_levels, n_points=spec["n_points"]
            )
            model._init_weights(layer.self_attn)
    # Frozen batch norm (detectron2's FrozenBatchNorm2d): fixed affine, no trainable parameters.
    for mod in model.model.pixel_level_module.encoder.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
            mod.weight.data.fill_(1.0)
            mod.requires_grad_(False)
    return model, spec


def freeze_bn_mode(model):
    for mod in model.model.pixel_level_module.encoder.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()


class Laps:
    """Wall time of named modules through forward hooks (CPU: synchronous)."""

    def __init__(self):
        self.start = {}
        self.ms = {}

    def hook(self, module, name):
        def pre(*_):
            self.start[name] = time.perf_counter()

        def post(*_):
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - self.start[name]) * 1e3

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="tiny")
    ap.add_argument("--mode", default="train")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, spec = build(args.case)
    data = load_file(args.batch)
    pixel_values = data["pixel_values"]
    n = pixel_values.shape[0]
    mask_labels = [data[f"mask_labels_{b}"] for b in range(n)]
    class_labels = [data[f"class_labels_{b}"] for b in range(n)]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    warmup = 2
    phases = {}

    def record(name, value, step):
        if step >= warmup:
            phases.setdefault(name, []).append(value)

    if args.mode == "train":
        model.train()
        freeze_bn_mode(model)
        laps = Laps()
        laps.hook(model.model.pixel_level_module.encoder, "backbone")
        laps.hook(model.model.pixel_level_module.decoder, "pixel_decoder")
        laps.hook(model.criterion.matcher, "matcher")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.05)
        for step in range(warmup + args.steps):
            laps.ms = {}
            t0 = time.perf_counter()
            out = model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 0.01)
            opt.step()
            t3 = time.perf_counter()
            fwd_loss = (t1 - t0) * 1e3
            record("backbone", laps.ms["backbone"], step)
            record("pixel_decoder", laps.ms["pixel_decoder"], step)
            record("matcher", laps.ms.get("matcher", 0.0), step)
            # The model's forward includes the loss (transformers computes it inside): decoder and
            # losses are what remains after the timed modules, split at the criterion.
            record("forward_and_loss", fwd_loss, step)
            record("backward", (t2 - t1) * 1e3, step)
            record("optimizer", (t3 - t2) * 1e3, step)
            record("step", (t3 - t0) * 1e3, step)
    elif args.mode == "infer":
        model.eval()
        with torch.inference_mode():
            for step in range(warmup + args.steps):
                t0 = time.perf_counter()
                out = model(pixel_values=pixel_values)
                _ = out.masks_queries_logits.sum().item()
                record("step", (time.perf_counter() - t0) * 1e3, step)
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    print(json.dumps({
        "side": "pytorch", "backend": f"torch {torch.__version__} cpu", "case": args.case, "mode": args.mode,
        "threads": torch.get_num_threads(), "batch": n, "size": int(pixel_values.shape[-1]),
        "objects": sum(len(c) for c in class_labels), "steps": args.steps, "trainable_params": trainable,
        "median_ms": {k: median(v) for k, v in phases.items()},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
