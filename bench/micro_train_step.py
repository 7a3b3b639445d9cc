"""Micro-benchmark: one segmenter training step (forward, backward, Adam) in torch's two 3-D memory layouts.

Run: ``python -m bench.micro_train_step [--widths 4,8,16,32,64 8,16,32,64,128] [--repeats 8] [--out DIR]``
(needs the ``train`` extra: torch). Writes ``train_step.json`` and ``train_step.png`` to ``--out``.

``training.segmenter`` trains in channels-last 3-D (NDHWC) because oneDNN's 3-D convolutions are far
faster there on CPU than in the default NCDHW layout; this measures by how much, for the shipped widths
and a wider network, on the batch and sub-crop the training loop uses.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.report import speedup_bars, write_micro


def step_seconds(widths: list[int], channels_last: bool, batch: int = 2, patch: int = 64, repeats: int = 8,
                 warmup: int = 2, threads: int | None = None) -> list[float]:
    """Wall seconds of ``repeats`` training steps (after ``warmup``) of an AttentionUNet3D of ``widths``."""
    import torch

    from training.nets import AttentionUNet3D, UNetConfig
    from training.segmenter import loss_fn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    net = AttentionUNet3D(UNetConfig(widths=widths)).to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 2, patch, patch, patch).to(memory_format=fmt)
    y = (torch.rand(batch, 1, patch, patch, patch) > 0.7).float().to(memory_format=fmt)
    out = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        loss = loss_fn(net.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            out.append(time.perf_counter() - t)
    return out


def run(widths_list: list[list[int]], repeats: int = 8, threads: int | None = None) -> list[dict]:
    import torch

    from training.nets import AttentionUNet3D, UNetConfig, count_params

    rows = []
    for widths in widths_list:
        row = {"widths": widths, "params": count_params(AttentionUNet3D(UNetConfig(widths=widths))),
               "threads": torch.get_num_threads() if not threads else threads}
        for name, cl in (("ncdhw", False), ("channels_last", True)):
            ts = step_seconds(widths, cl, repeats=repeats, threads=threads)
            row[f"{name}_s"] = statistics.median(ts)
            row[f"{name}_s_all"] = [round(t, 4) for t in ts]
        row["speedup"] = row["ncdhw_s"] / row["channels_last_s"]
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    speedup_bars(rows, path, ("ncdhw_s", "NCDHW (default)"), ("channels_last_s", "channels-last 3-D"),
                 [f"{r['widths']}\n{r['params'] / 1e6:.2f} M params" for r in rows], "seconds per training step",
                 "segmenter training step, batch 2 x 64^3, CPU (median)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", nargs="+", default=["4,8,16,32,64", "8,16,32,64,128"])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    rows = run([[int(w) for w in s.split(",")] for s in a.widths], a.repeats, a.threads)
    write_micro(rows, a.out, "train_step", plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
