"""Bone-density spread: a crop as an osteoporotic (or differently calibrated) patient's scan would show it.

The real CTs in ../shared/data/real have vertebrae at median 147-163 HU (cancellous 64-122 HU); the held-out
phantoms at 246-558 HU (cancellous 159-323). The session-13 segmenter under-segments the real ones (predicted /
true volume 0.70). Scaling everything above soft tissue toward it reproduces thinner, fainter bone while
soft tissue, fat and air stay as they are.

A real vertebra is not faint evenly: its transverse processes sit at 145-210 HU in the real CTs (median),
hardly above its body (84-149), while the default phantoms draw them as solid cortex at 360-500 HU, twice
their body. The session-20 segmenter stops at the pedicles of real vertebrae: of the voxels it misses more
than a voxel deep, 75 % lie behind the body (mean over the 8 whole real vertebrae;
evaluation/results/2026-12-02-s22). So half the draws scale by a smooth random field instead of one
number, a few cells across the crop (~36 mm each), so that body, processes and neighbours fade
independently. The session-22 segmenter (shipped in session 23) trained with it in 40 % of its samples.
"""
from __future__ import annotations

import numpy as np

SOFT_TISSUE_HU = 100.0  # above this, a voxel holds bone (or contrast): its excess is scaled
DENSITY = {"scale": [0.35, 1.0], "field_p": 0.5, "field_scale": [0.15, 1.0], "field_cells": 4}


def scale_bone(ct: np.ndarray, scale, knee_hu: float = SOFT_TISSUE_HU) -> np.ndarray:
    """HU above ``knee_hu`` brought toward it by ``scale`` (1 = unchanged; a number or a field of ``ct``'s
    shape); below it untouched."""
    out = np.asarray(ct, dtype=np.float32).copy()
    hi = out > knee_hu
    s = np.asarray(scale, dtype=np.float32)
    out[hi] = knee_hu + (out[hi] - knee_hu) * (s[hi] if s.ndim else s)
    return out


def smooth_field(shape, rng: np.random.Generator, lo: float, hi: float, cells: int) -> np.ndarray:
    """A float32 field of ``shape``, trilinear between ``cells``^3 values drawn uniformly in [lo, hi] (cell
    centres spread evenly over each axis)."""
    coarse = rng.uniform(lo, hi, size=(cells,) * len(shape))
    # Separable hat-function weights: an einsum is over 20x faster than ndimage.zoom on a 146^3 crop
    # (bench.micro_density_field, bench/results/cpu-2026-12-02-s22).
    ws = [np.stack([np.interp((np.arange(n) + 0.5) * cells / n - 0.5, np.arange(cells), e)
                    for e in np.eye(cells)], axis=1) for n in shape]
    cell, out = "abcdef"[:len(shape)], "klmnop"[:len(shape)]
    spec = cell + "," + ",".join(o + c for o, c in zip(out, cell)) + "->" + out
    return np.einsum(spec, coarse, *ws, optimize=True).astype(np.float32)


def random_density(ct: np.ndarray, rng: np.random.Generator, cfg: dict = DENSITY) -> np.ndarray:
    """Fainter bone: one scale for the whole crop, or (``field_p`` of the draws) a smooth field of scales."""
    if rng.uniform() < cfg.get("field_p", 0.0):
        return scale_bone(ct, smooth_field(np.shape(ct), rng, *cfg["field_scale"], int(cfg["field_cells"])))
    return scale_bone(ct, float(rng.uniform(*cfg["scale"])))
