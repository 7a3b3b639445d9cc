"""Function-preserving widening of the segmenter (Net2Net-style, Chen et al. 2016).

The session-13 U-Net was thin (4-8-16-32-64): training and held-out Dice agreed (0.88 vs 0.87), so it
underfit, and most of its error was a one-voxel disagreement at the boundary. Widening it from a trained network keeps
everything learned: the new channels start with random filters whose every consumer weight is zero, so the
widened network computes exactly what the old one did, and training then grows the new channels from there.

Measured (session 8, CPU): the full-resolution level alone widened 4 -> 8 and trained 9 epochs x 120 steps
(lr 3e-4, cosine) stayed at validation Dice 0.785-0.790 against 0.792 before, at 1.6x the step cost; not
shipped. Session 17 widened every level (``spinert train segmenter --init CKPT --widths 8,16,32,64,128``)
and shipped the result (stage 8, its card): training in channels-last 3-D (training.common.train_layout)
made that network's step 0.37 s on 2 CPU cores, less than the thin one's 0.52 s in NCDHW.
"""
from __future__ import annotations

from pathlib import Path

import torch

from training.nets import AttentionUNet3D, UNetConfig


def widen(old: AttentionUNet3D, widths: list[int], seed: int = 0) -> AttentionUNet3D:
    """A copy of ``old`` with every level at least as wide (``widths``, one per level), same outputs.

    Each new channel is a producer with a fresh random filter (it reads the old channels, so it is live),
    and every consumer reads it with zero weights: convolutions, transposed convolutions, attention gates
    and heads alike. A decoder's first convolution reads ``cat([gated skip, upsampled])``, so its old
    columns are copied segment by segment.
    """
    w_old, widths = list(old.cfg.widths), [int(w) for w in widths]
    if len(widths) != len(w_old):
        raise ValueError(f"widths {widths} have {len(widths)} levels, the network {len(w_old)}")
    if any(n < o for n, o in zip(widths, w_old)):
        raise ValueError(f"widths {widths} are narrower than the network's {w_old} somewhere")
    cfg = UNetConfig(**{**old.cfg.__dict__, "widths": widths})
    torch.manual_seed(seed)
    new = AttentionUNet3D(cfg)
    src, dst = old.state_dict(), new.state_dict()
    n_lv, light = len(w_old), old.cfg.light_levels
    # Decoder stage j returns to level n_lv - 2 - j; its first conv reads two blocks of that level's width.
    cat = {}
    for j in range(n_lv - 1):
        lv = n_lv - 2 - j
        cat[f"dec.{j}.0.weight" if lv < light else f"dec.{j}.0.0.weight"] = (w_old[lv], widths[lv])

    merged = {}
    for name, t in dst.items():
        s = src[name]
        if s.shape == t.shape or name.endswith("num_batches_tracked"):
            merged[name] = s.clone()
            continue
        m = t.clone()  # new channels keep the fresh initialisation as producers ...
        if name.startswith("up.") and name.endswith(".weight"):  # ConvTranspose3d weight: [in, out, ...]
            m[s.shape[0]:] = 0.0  # ... but are read with zero weights: the output is unchanged
            m[:s.shape[0], :s.shape[1]] = s
        elif name in cat:
            a, b = cat[name]
            m[:, a:b] = 0.0
            m[:, b + a:] = 0.0
            m[:s.shape[0], :a] = s[:, :a]
            m[:s.shape[0], b:b + a] = s[:, a:]
        elif t.dim() == 5:  # Conv3d weight: [out, in, ...]
            m[:, s.shape[1]:] = 0.0
            m[:s.shape[0], :s.shape[1]] = s
        else:  # per-channel vectors (bias, BatchNorm)
            m[:s.shape[0]] = s
        merged[name] = m
    new.load_state_dict(merged)
    return new


def state_widths(state: dict) -> list[int]:
    """The level widths of an AttentionUNet3D state dict (each encoder block's first conv)."""
    out, i = [], 0
    while True:
        w = state.get(f"enc.{i}.0.weight")
        if w is None or w.dim() != 5:
            w = state.get(f"enc.{i}.0.0.weight")
        if w is None:
            break
        out.append(int(w.shape[0]))
        i += 1
    if not out:
        raise ValueError("not an AttentionUNet3D state (no enc.0 convolution)")
    return out


def onnx_widths(path: Path) -> list[int] | None:
    """The level widths of a shipped segmenter ONNX file, from the manifest.json beside it (the file's
    graph names its weights by node, not by layer); None when no manifest entry lists the file."""
    from engine.models import read_manifest

    if not (Path(path).parent / "manifest.json").is_file():
        return None
    for entry in read_manifest(Path(path).parent)["models"].values():
        if Path(path).name in entry.get("files", {}).values():
            widths = entry.get("arch", {}).get("widths")
            return [int(w) for w in widths] if widths else None
    return None


def init_widths(path) -> list[int] | None:
    """The level widths of --init weights (a checkpoint or a shipped ONNX file); None if unknown."""
    if Path(path).suffix == ".onnx":
        return onnx_widths(path)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    try:
        return state_widths(ck["model"] if "model" in ck else ck)
    except ValueError:
        return None
