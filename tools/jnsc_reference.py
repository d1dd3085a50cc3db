#!/usr/bin/env python3
"""Independent PyTorch implementation of the JNSC network (src/jnsc/network.rs), used to check
the Candle implementation: same architecture, same weight names, loaded from the same
safetensors file.

  python3 tools/jnsc_reference.py MODEL.safetensors --vector tests/vectors/jnsc-reference
      perturbs the normalisation scales and shifts and the biases (so that they matter),
      rewrites MODEL with them (metadata kept), runs the network on the fixed input below and
      writes VECTOR.logits.f32 (segmentation logits, little-endian float32, [2, 1, 32, 32, 32])
      and VECTOR.json (class logits of the fixed candidate boxes).
  python3 tools/jnsc_reference.py MODEL.safetensors --bench [--size 64] [--rounds 3] [--device cuda]
      times forward and forward+backward on one patch (PyTorch CPU peer of `jnsc bench network`).

Input: x[n, 0, d, h, w] = sin(0.3 d + 0.2 h) * cos(0.25 w) + 0.1 n.
Boxes (batch, [d, h, w] min, max, voxels): (0, [3,4,5], [9,7,12], 60), (1, [20,2,11], [23,6,14], 18).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

BOXES = [(0, [3, 4, 5], [9, 7, 12], 60), (1, [20, 2, 11], [23, 6, 14], 18)]


def load(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta, json.loads(meta["jnsc.config"])


def norm_relu(y, t, prefix):
    y = F.instance_norm(y, eps=1e-5)
    c = y.shape[1]
    return F.relu(y * t[prefix + ".norm.weight"].view(1, c, 1, 1, 1)
                  + t[prefix + ".norm.bias"].view(1, c, 1, 1, 1))


def block(x, t, prefix, convs, residual, shortcut):
    y = x
    for j in range(max(convs, 1)):
        p = f"{prefix}.conv{j + 1}"
        w = t[p + ".weight"]
        y = norm_relu(F.conv3d(y, w, padding=w.shape[2] // 2), t, p)
    return y + shortcut if residual else y


def segment(x, t, cfg):
    widths, convs, residual = cfg["widths"], cfg["convs_per_block"], cfg["residual"]
    encoder, y = [], x
    for level in range(5):
        shortcut = y.expand(-1, widths[0], -1, -1, -1) if level == 0 else y
        out = block(y, t, f"enc{level + 1}", convs[level], residual, shortcut)
        encoder.append(out)
        if level < 4:
            y = norm_relu(F.conv3d(out, t[f"down{level + 1}.weight"], stride=2), t, f"down{level + 1}")
        else:
            y = out
    for level in reversed(range(4)):
        up = norm_relu(F.conv_transpose3d(y, t[f"up{level + 1}.weight"], stride=2), t, f"up{level + 1}")
        joined = torch.cat([up, encoder[level]], 1)
        y = block(joined, t, f"dec{level + 1}", convs[level], residual, up)
    logits = F.conv3d(y, t["head.weight"]) + t["head.bias"].view(1, 1, 1, 1, 1)
    return logits, encoder


def classify(encoder, t, boxes):
    rows = []
    for batch, lo, hi, voxels in boxes:
        parts = []
        for level, feats in enumerate(encoder):
            s = 1 << level
            item = feats[batch:batch + 1]
            dims = item.shape[2:]
            start = [min(lo[a] // s, dims[a] - 1) for a in range(3)]
            end = [max(min(hi[a] // s, dims[a] - 1), start[a]) for a in range(3)]
            crop = item[:, :, start[0]:end[0] + 1, start[1]:end[1] + 1, start[2]:end[2] + 1]
            mixed = F.conv3d(crop, t[f"feat{level + 1}.weight"])
            pooled = F.adaptive_max_pool3d(mixed, 2 if level < 2 else 1)
            parts.append(pooled.flatten())
        parts.append(torch.tensor([voxels ** (1.0 / 3.0) / 10.0]))
        rows.append(torch.cat(parts))
    return F.linear(torch.stack(rows), t["classifier.weight"], t["classifier.bias"])


def fixed_input(n=2, size=32):
    d = torch.arange(size, dtype=torch.float64).view(1, 1, size, 1, 1)
    h = torch.arange(size, dtype=torch.float64).view(1, 1, 1, size, 1)
    w = torch.arange(size, dtype=torch.float64).view(1, 1, 1, 1, size)
    b = torch.arange(n, dtype=torch.float64).view(n, 1, 1, 1, 1)
    return (torch.sin(0.3 * d + 0.2 * h) * torch.cos(0.25 * w) + 0.1 * b).float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--vector")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bench only)")
    args = ap.parse_args()
    t, meta, cfg = load(args.model)
    if args.vector:
        g = torch.Generator().manual_seed(7)
        for k in list(t):
            if k.endswith("norm.weight"):
                t[k] = 1.0 + 0.2 * torch.randn(t[k].shape, generator=g)
            elif k.endswith("norm.bias") or k.endswith(".bias"):
                t[k] = 0.2 * torch.randn(t[k].shape, generator=g)
        save_file({k: v.contiguous() for k, v in t.items()}, args.model, metadata=meta)
        with torch.no_grad():
            logits, encoder = segment(fixed_input(), t, cfg)
            classes = classify(encoder, t, BOXES)
        logits.numpy().astype("<f4").tofile(args.vector + ".logits.f32")
        with open(args.vector + ".json", "w") as f:
            json.dump({"torch": torch.__version__, "boxes": BOXES,
                       "class_logits": classes.tolist()}, f, indent=1)
        print("wrote", args.vector, "class logits", classes.tolist())
    if args.bench:
        torch.set_num_threads(2)
        dev = torch.device(args.device)
        torch.backends.cudnn.allow_tf32 = False  # full f32, like jnsc (cuBLAS without TF32)
        x = torch.randn(1, 1, args.size, args.size, args.size, device=dev)
        t = {k: v.to(dev).requires_grad_(True) for k, v in t.items()}
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        warm_up = 1 if dev.type == "cuda" else 0
        for backward in (False, True):
            times = []
            for round in range(args.rounds + warm_up):
                start = time.perf_counter()
                if backward:
                    logits, _ = segment(x, t, cfg)
                    logits.square().mean().backward()
                else:
                    with torch.no_grad():
                        segment(x, t, cfg)
                sync()
                if round >= warm_up:
                    times.append(time.perf_counter() - start)
            times.sort()
            print(f"{'forward+backward' if backward else 'forward'} {times[len(times) // 2]:.4f}")


if __name__ == "__main__":
    main()
