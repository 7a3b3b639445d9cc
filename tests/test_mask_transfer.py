"""Canonical masks back onto the input grid (engine.preprocess.masks_to_input), with real SimpleITK."""
from __future__ import annotations

import numpy as np

from engine.preprocess import canonical_to_input, masks_to_input, to_canonical
from engine.types import Volume


def _scan(spacing=(0.55, 0.55, 1.2), shape_kji=(60, 140, 140)) -> Volume:
    """An LPS-stored scan of two balls (r 9 and 7 mm), finer than the 1 mm canonical grid in-plane."""
    k, j, i = (np.arange(n) + 0.5 for n in shape_kji)
    z, y, x = np.meshgrid(k * spacing[2], j * spacing[1], i * spacing[0], indexing="ij")
    a = np.full(shape_kji, -1000.0, np.float32)
    for (cx, cy, cz, r) in ((30.0, 38.0, 36.0, 9.0), (50.0, 40.0, 34.0, 7.0)):
        a[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r] = 1000.0
    return Volume(a, spacing, (-10.0, 5.0, 20.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), "balls")


def _truth(vol: Volume) -> np.ndarray:
    return vol.array > 0


def _canonical_masks(vol: Volume):
    """Label map and a smooth probability (0-255) of the balls on the 1 mm canonical grid."""
    canon = to_canonical(vol, 1.0)
    from scipy import ndimage as ndi

    p = np.clip((canon.array + 1000.0) / 2000.0, 0, 1)  # trilinear-resampled HU: a blurred edge
    owner = ndi.label(p > 0.5)[0].astype(np.uint8)  # the two balls: labels 1 and 2
    return canon, owner, np.round(p * 255).astype(np.uint8)


def _dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_probability_boundaries_beat_nearest_neighbour_on_a_finer_grid():
    vol = _scan()
    canon, owner, prob = _canonical_masks(vol)
    nn = masks_to_input(owner, None, canon, vol, 0.5) > 0
    sub = masks_to_input(owner, prob, canon, vol, 0.5) > 0
    truth = _truth(vol)
    assert _dice(sub, truth) > _dice(nn, truth) + 0.02
    assert _dice(sub, truth) > 0.95
    # Voxels gained at a boundary take the label of the ball they belong to.
    lab = masks_to_input(owner, prob, canon, vol, 0.5)
    k, j, i = np.nonzero(lab)
    x = (i + 0.5) * vol.spacing[0]
    assert set(np.unique(lab[lab > 0][x < 40])) == {1} and set(np.unique(lab[lab > 0][x >= 40])) == {2}


def test_box_restricted_resampling_equals_the_whole_grid():
    vol = _scan()
    canon, owner, _ = _canonical_masks(vol)
    whole = canonical_to_input(owner, canon, vol)
    np.testing.assert_array_equal(masks_to_input(owner, None, canon, vol, 0.5), whole)
    empty = masks_to_input(np.zeros_like(owner), None, canon, vol, 0.5)
    assert empty.shape == whole.shape and not empty.any()
