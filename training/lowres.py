"""Coarse-scanner simulation: a 1 mm crop as the runtime would see it from a scan with larger voxels.

The phantoms are drawn with 0.5-1.0 mm pixels; real scans come as coarse as 1.5 mm (the TPTBox crop) and
3 mm (the TotalSegmentator sample). The runtime resamples any scan to 1 mm with linear interpolation, so a
coarse scan reaches the models blurred by its voxel and blocky along its grid. This reproduces that chain
on a cached 1 mm crop (as nnU-Net's low-resolution simulation does): average over the coarse voxel, sample
on the coarse grid, interpolate linearly back to 1 mm. A mask goes through the same chain and is
re-thresholded: what a segmenter can draw on such a scan.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

# Coarse voxel ranges (mm): in-plane pixel, slice spacing (axis 0 = k, the axial axis).
COARSE_VOXEL = {"inplane_mm": [1.0, 3.2], "slice_mm": [1.0, 5.0]}


def coarse_voxel(rng: np.random.Generator, cfg: dict = COARSE_VOXEL) -> np.ndarray:
    """A random coarse voxel (k, j, i) in mm: square pixels, slice thickness drawn on its own (thin slices
    with coarse pixels exist too)."""
    px = rng.uniform(*cfg["inplane_mm"])
    sl = rng.uniform(*cfg["slice_mm"])
    return np.array([sl, px, px])


def simulate_resolution(vol: np.ndarray, voxel_mm: np.ndarray, spacing: float = 1.0,
                        mask: np.ndarray | None = None):
    """``vol`` (float, [k, j, i] at ``spacing`` mm) as seen through voxels of ``voxel_mm``; same shape.
    With ``mask``, also the mask through the same chain (threshold 0.5). Axes with voxels no larger than
    ``spacing`` are left alone."""
    f = np.maximum(np.asarray(voxel_mm, dtype=np.float64) / spacing, 1.0)
    # A box of f voxels has variance (f^2 - 1)/12 more than one voxel: the Gaussian of that variance.
    sigma = np.sqrt((f * f - 1.0) / 12.0)
    shape = np.asarray(vol.shape)

    def chain(a: np.ndarray) -> np.ndarray:
        a = gaussian_filter(a, sigma, mode="nearest") if sigma.any() else a
        small = np.maximum(np.round(shape / f).astype(int), 2)
        down = zoom(a, small / shape, order=1, mode="nearest", grid_mode=True)
        return zoom(down, shape / np.asarray(down.shape), order=1, mode="nearest", grid_mode=True)

    out = chain(np.asarray(vol, dtype=np.float32)).astype(np.float32, copy=False)
    if mask is None:
        return out
    return out, chain(mask.astype(np.float32)) > 0.5
