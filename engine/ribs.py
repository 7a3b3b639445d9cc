"""Which vertebrae carry ribs: the cue a radiologist counts levels by, measured from the CT and the masks.

The labeller reads each vertebra alone, and its thoraco-lumbar reading drifts with the scanner and the
patient: on the real abdomen crops it read T11-L2 one level high (sessions 11-14), a coin flip that no
sacrum anchored. Ribs settle it: T1-T12 carry them, lumbar and cervical vertebrae do not (but for rare
lumbar or cervical ribs), and a rib head sits against its vertebra's body and transverse process.

For each vertebra, in a slab of the canonical volume around its mask (its own levels along the spine,
``j_front_mm`` in front of its centroid to ``j_back_mm`` behind it, ``reach_mm`` to either side), bone
that no vertebra mask holds is split into connected pieces; a piece touching the mask and reaching
``reach_mm`` sideways from the vertebra's centre is a rib. A transverse process the mask missed reaches
45-55 mm, a rib in the vertebra's own slab 65-90 mm (measured on 48 phantoms and the real abdomen CT:
``evaluation/results/2026-12-01-s15``).

A rib not seen is evidence only where it would have been seen: a whole vertebra (not cut by the field of
view, at least ``whole_ratio`` of the median mask), ``room_mm`` of field of view on both sides, in a scan
where some vertebra shows a rib, and no piece past ``none_mm`` even at the fainter ``faint_hu``: a
phantom with osteoporotic ribs showed one rib at 200 HU and read "no rib" on nine thoracic vertebrae
until absence was checked at 120 HU (presence and absence with two thresholds, like a hysteresis).
``rib-cue/`` in the results folder above has the counts per level.

This runs on the host on a 2 mm grid (``stride``): a few small boxes per vertebra, no full-volume pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.xp import to_numpy


@dataclass
class RibParams:
    """``rib_cue``: feed the cue to the decoder (``spinert run --no-ribs`` turns it off). ``bone_hu``:
    bone threshold (ribs are thin cortical bone; 300 HU lost the real abdomen's T12 ribs, 200 kept
    them). ``reach_mm``: how far sideways from the vertebra's centre a touching piece must reach to be
    a rib. ``stride``: grid step in voxels (ribs are ~10 mm thick, a 2 mm grid keeps them connected)."""

    rib_cue: bool = True
    bone_hu: float = 200.0
    reach_mm: float = 62.0
    j_front_mm: float = 40.0
    j_back_mm: float = 60.0
    stride: int = 2
    min_piece_mm3: float = 24.0  # smaller touching pieces are noise, not a rib
    none_mm: float = 50.0  # "no rib": nothing touching reaches this far (a missed transverse process does)
    faint_hu: float = 120.0  # ... even with this bone threshold
    room_mm: float = 70.0  # ... with this much field of view on both sides of the vertebra's centre
    whole_ratio: float = 0.5  # ... a mask at least this share of the median one (for "rib" too), not cut


RIBS, NO_RIBS, UNKNOWN = 1, 0, -1  # rib_evidence codes (engine.sequence.decode_sequence's ``ribs``)


def rib_reach(iso, owner, centers_kji: np.ndarray, boxes, spacing: float,
              params: RibParams | None = None, bone_hu=None) -> np.ndarray:
    """(N,) mm: how far sideways (canonical i) from each vertebra's centre the bone touching its mask and
    held by no mask reaches, within the vertebra's slab and ``params.reach_mm`` (+ one grid step); 0 when
    nothing touches it. ``owner``: label volume (vertebra n is ``n + 1``), ``boxes``: each mask's box.
    ``bone_hu``: the bone threshold (default ``params.bone_hu``); a sequence of T thresholds gives (N, T)
    from one pass over the windows."""
    from scipy import ndimage

    p = params or RibParams()
    hu = np.atleast_1d(np.asarray(p.bone_hu if bone_hu is None else bone_hu, dtype=np.float64))
    s = max(1, int(p.stride))
    centers = np.asarray(centers_kji, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(centers), hu.size))
    shape = np.asarray(owner.shape)
    half_i = int(np.ceil(p.reach_mm / spacing)) + 2 * s
    cube = np.ones((3, 3, 3), dtype=bool)
    min_vox = max(1, int(round(p.min_piece_mm3 / (spacing * s) ** 3)))
    for n, (c, box) in enumerate(zip(centers, boxes)):
        if box is None:
            continue
        _, cj, ci = np.round(c).astype(int)
        lo = np.array([box[0].start - s, cj - int(p.j_front_mm / spacing), ci - half_i])
        hi = np.array([box[0].stop + s, cj + int(p.j_back_mm / spacing) + 1, ci + half_i + 1])
        lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        if np.any(hi <= lo):
            continue
        win = tuple(slice(int(a), int(b), s) for a, b in zip(lo, hi))
        ow = to_numpy(owner[win])
        ct = to_numpy(iso[win])
        near = ndimage.binary_dilation(ow == n + 1, structure=cube)
        for t, thr in enumerate(hu):
            pieces, count = ndimage.label((ct > thr) & (ow == 0), structure=cube)
            hit = np.unique(pieces[near & (pieces > 0)])
            if hit.size:
                hit = hit[np.bincount(pieces.ravel(), minlength=count + 1)[hit] >= min_vox]
            if hit.size == 0:
                continue
            cols = np.flatnonzero(np.isin(pieces, hit).any(axis=(0, 1)))  # grid columns along i with rib bone
            out[n, t] = float(np.abs((lo[2] + cols * s - c[2]) * spacing).max())
    return out[:, 0] if np.ndim(p.bone_hu if bone_hu is None else bone_hu) == 0 else out


def rib_evidence(iso, owner, centers_kji: np.ndarray, boxes, voxels, cut, spacing: float,
                 params: RibParams | None = None) -> np.ndarray:
    """(N,) int8 per vertebra: RIBS (a rib touches it), NO_RIBS (none where one would show) or UNKNOWN.
    ``voxels``: mask sizes; ``cut``: (N,) bool, the field of view cuts the mask along the spine (the
    decoder's own flags, engine.pipeline)."""
    p = params or RibParams()
    centers = np.asarray(centers_kji, dtype=np.float64).reshape(-1, 3)
    out = np.full(len(centers), UNKNOWN, dtype=np.int8)
    if not len(centers):
        return out
    # Presence at bone_hu, absence at the fainter threshold (more bone: a reach at least as long).
    thresholds = (p.bone_hu, min(p.faint_hu, p.bone_hu))
    reach, reach_faint = rib_reach(iso, owner, centers, boxes, spacing, p, thresholds).T
    # A small mask (a slab at the scan's face, a piece) says nothing either way: the bone it touches may
    # be its neighbour's rib or the pelvis (a 2 k-voxel L3 slab at a new hard phantom's bottom face
    # touched a 12th rib's tip and was then decoded as no vertebra).
    vox = np.asarray(voxels, dtype=np.float64).reshape(-1)
    big = vox >= p.whole_ratio * np.median(vox)
    seen = big & (reach >= p.reach_mm)
    out[seen] = RIBS
    if not seen.any():
        return out  # no rib anywhere: a lumbar or cervical scan, or bone too faint to tell
    cut = np.asarray(cut, dtype=bool).reshape(-1)
    width = int(owner.shape[2])
    room = np.minimum(centers[:, 2], width - 1 - centers[:, 2]) * spacing
    clear = big & ~seen & ~cut & (room >= p.room_mm) & (reach_faint < p.none_mm)
    out[clear] = NO_RIBS
    return out
