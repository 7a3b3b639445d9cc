"""Bone-density spread: a crop as an osteoporotic (or differently calibrated) patient's scan would show it.

The real CTs in ../shared/data/real have vertebrae at median 147-163 HU (cancellous 64-122 HU); the held-out
phantoms at 246-558 HU (cancellous 159-323). The shipped segmenter under-segments the real ones (predicted /
true volume 0.70). Scaling everything above soft tissue toward it reproduces thinner, fainter bone while
soft tissue, fat and air stay as they are.
"""
from __future__ import annotations

import numpy as np

SOFT_TISSUE_HU = 100.0  # above this, a voxel holds bone (or contrast): its excess is scaled
DENSITY = {"scale": [0.35, 1.0]}


def scale_bone(ct: np.ndarray, scale: float, knee_hu: float = SOFT_TISSUE_HU) -> np.ndarray:
    """HU above ``knee_hu`` brought toward it by ``scale`` (1 = unchanged); below it untouched."""
    out = np.asarray(ct, dtype=np.float32).copy()
    hi = out > knee_hu
    out[hi] = knee_hu + (out[hi] - knee_hu) * np.float32(scale)
    return out


def random_density(ct: np.ndarray, rng: np.random.Generator, cfg: dict = DENSITY) -> np.ndarray:
    return scale_bone(ct, float(rng.uniform(*cfg["scale"])))
