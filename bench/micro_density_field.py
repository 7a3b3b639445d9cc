"""Micro-benchmark: the smooth density field of ``training.density`` against ``scipy.ndimage.zoom``.

Run: ``python -m bench.micro_density_field [--sizes 64 96 146] [--repeats 5] [--out DIR]``. Writes
``density_field.json`` and ``density_field.png`` to ``--out``.

``training.density.smooth_field`` draws a trilinear field over each training crop that fades its bone
(146^3 voxels: the 128^3 ROI plus the offset margin). ``ndimage.zoom(order=1, grid_mode=True)`` gives the
same field. The hand-written separable einsum is kept only because it is much cheaper per sample; this
measures both on the same cells and checks that they agree.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from bench.report import speedup_bars, write_micro
from bench.runner import time_ms

CELLS = 4


def _median_s(fn, repeats: int) -> float:
    return statistics.median(time_ms(fn, repeats, warmup=0)) / 1e3


def run(sizes: list[int], repeats: int = 5) -> list[dict]:
    from scipy.ndimage import zoom

    from training.density import smooth_field

    rows = []
    for n in sizes:
        shape = (n, n, n)
        cells = np.random.default_rng(0).uniform(0.15, 1.0, size=(CELLS,) * 3)
        ours = smooth_field(shape, np.random.default_rng(0), 0.15, 1.0, CELLS)
        ref = zoom(cells, [s / CELLS for s in shape], order=1, mode="nearest", grid_mode=True)
        t_ours = _median_s(lambda: smooth_field(shape, np.random.default_rng(0), 0.15, 1.0, CELLS), repeats)
        t_ref = _median_s(lambda: zoom(cells, [s / CELLS for s in shape], order=1, mode="nearest",
                                       grid_mode=True), repeats)
        rows.append({"size": n, "einsum_s": t_ours, "zoom_s": t_ref, "speedup": t_ref / t_ours,
                     "max_abs_diff": float(np.abs(ours - ref).max())})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    speedup_bars(rows, path, ("zoom_s", "scipy.ndimage.zoom"), ("einsum_s", "separable einsum"),
                 [f"{r['size']}^3" for r in rows], "ms per field (median)",
                 f"trilinear density field from {CELLS}^3 cells, CPU", scale=1e3, fmt="{:.0f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 146])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    rows = run(a.sizes, a.repeats)
    write_micro(rows, a.out, "density_field", plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
