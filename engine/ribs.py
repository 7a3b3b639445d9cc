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

The same touching bone marks the sacrum, the lowest vertebra in view: the ilium flanks it, past
``ilium_far_mm`` sideways, on nearly all its levels, where ribs are a few oblique bars (ILIUM,
``ilium_share``). That is the sacrum anchor that does not come from the labeller: the phantom-trained
labellers read the real sacrum's shape as L5 or L6 (session 18).

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
    # The ilium beside a whole vertebra (ILIUM): touching bone past ``ilium_far_mm`` sideways on at least
    # ``ilium_rows`` of its levels, looking ``ilium_half_mm`` out, with ``ilium_room_mm`` of field of view
    # on both sides. On ground-truth masks (evaluation/results/2026-12-02-s19): 0.84-1.0 on 13 whole sacra
    # (the real one 1.0), 0.0-0.19 on 96 L1-L5, 0.23-0.6 on rib-bearing T10-T12 but for three with the
    # field of view 55-70 mm from the spine on one side (0.97-1.0: ribs of one side alone). Dense rib fans
    # fill the rows too (new hard phantom 300028: 9 of T2-T12), so only the lowest vertebra with bone
    # beside it is measured, and the decoder weighs ILIUM as "sacrum, or thoracic", never as lumbar
    # (engine.sequence.SequenceParams.ilium_likelihood).
    ilium_far_mm: float = 60.0
    ilium_half_mm: float = 150.0
    ilium_rows: float = 0.8
    ilium_room_mm: float = 80.0


RIBS, NO_RIBS, UNKNOWN, ILIUM = 1, 0, -1, 2  # rib_evidence codes (engine.sequence.decode_sequence's ``ribs``)


def _touching(iso, owner, n: int, c: np.ndarray, box, half_i: int, hu, spacing: float, p: "RibParams"):
    """Bone above each threshold in ``hu`` that touches vertebra ``n``'s mask and no mask holds, in its slab
    (its own levels, ``j_front_mm`` / ``j_back_mm`` around its centre, ``half_i`` voxels to either side) on
    the ``p.stride`` grid: (lo, [bool grid per threshold]), or None when the slab is empty."""
    from scipy import ndimage

    s = max(1, int(p.stride))
    shape = np.asarray(owner.shape)
    _, cj, ci = np.round(c).astype(int)
    lo = np.array([box[0].start - s, cj - int(p.j_front_mm / spacing), ci - half_i])
    hi = np.array([box[0].stop + s, cj + int(p.j_back_mm / spacing) + 1, ci + half_i + 1])
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    if np.any(hi <= lo):
        return None
    win = tuple(slice(int(a), int(b), s) for a, b in zip(lo, hi))
    ow = to_numpy(owner[win])
    ct = to_numpy(iso[win])
    cube = np.ones((3, 3, 3), dtype=bool)
    near = ndimage.binary_dilation(ow == n + 1, structure=cube)
    min_vox = max(1, int(round(p.min_piece_mm3 / (spacing * s) ** 3)))
    out = []
    for thr in hu:
        pieces, count = ndimage.label((ct > thr) & (ow == 0), structure=cube)
        hit = np.unique(pieces[near & (pieces > 0)])
        if hit.size:
            hit = hit[np.bincount(pieces.ravel(), minlength=count + 1)[hit] >= min_vox]
        out.append(np.isin(pieces, hit) if hit.size else np.zeros(pieces.shape, dtype=bool))
    return lo, out


def rib_reach(iso, owner, centers_kji: np.ndarray, boxes, spacing: float,
              params: RibParams | None = None, bone_hu=None) -> np.ndarray:
    """(N,) mm: how far sideways (canonical i) from each vertebra's centre the bone touching its mask and
    held by no mask reaches, within the vertebra's slab and ``params.reach_mm`` (+ one grid step); 0 when
    nothing touches it. ``owner``: label volume (vertebra n is ``n + 1``), ``boxes``: each mask's box.
    ``bone_hu``: the bone threshold (default ``params.bone_hu``); a sequence of T thresholds gives (N, T)
    from one pass over the windows."""
    p = params or RibParams()
    hu = np.atleast_1d(np.asarray(p.bone_hu if bone_hu is None else bone_hu, dtype=np.float64))
    s = max(1, int(p.stride))
    centers = np.asarray(centers_kji, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(centers), hu.size))
    half_i = int(np.ceil(p.reach_mm / spacing)) + 2 * s
    for n, (c, box) in enumerate(zip(centers, boxes)):
        got = None if box is None else _touching(iso, owner, n, c, box, half_i, hu, spacing, p)
        if got is None:
            continue
        lo, bone = got
        for t, sel in enumerate(bone):
            cols = np.flatnonzero(sel.any(axis=(0, 1)))  # grid columns along i with rib bone
            if cols.size:
                out[n, t] = float(np.abs((lo[2] + cols * s - c[2]) * spacing).max())
    return out[:, 0] if np.ndim(p.bone_hu if bone_hu is None else bone_hu) == 0 else out


def ilium_share(iso, owner, centers_kji: np.ndarray, boxes, spacing: float,
                params: RibParams | None = None, which=None) -> np.ndarray:
    """(N,) share of each vertebra's levels (grid rows along k) where bone touching its mask and held by no
    mask lies more than ``params.ilium_far_mm`` to the side, looking ``ilium_half_mm`` out: the ilium,
    which flanks the sacrum over its whole height, fills ~1; ribs, a few oblique bars, 0.2-0.6.
    ``which``: (N,) bool, the vertebrae to measure (0 for the others)."""
    p = params or RibParams()
    s = max(1, int(p.stride))
    centers = np.asarray(centers_kji, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(len(centers))
    half_i = int(np.ceil(p.ilium_half_mm / spacing))
    todo = np.ones(len(centers), dtype=bool) if which is None else np.asarray(which, dtype=bool).reshape(-1)
    for n in np.flatnonzero(todo):
        c, box = centers[n], boxes[n]
        got = None if box is None else _touching(iso, owner, int(n), c, box, half_i, (p.bone_hu,), spacing, p)
        if got is None:
            continue
        lo, (sel,) = got
        far = np.abs((lo[2] + np.arange(sel.shape[2]) * s - c[2]) * spacing) > p.ilium_far_mm
        out[n] = float(sel[:, :, far].any(axis=(1, 2)).mean())
    return out


def rib_evidence(iso, owner, centers_kji: np.ndarray, boxes, voxels, cut, spacing: float,
                 params: RibParams | None = None) -> np.ndarray:
    """(N,) int8 per vertebra: RIBS (a rib touches it), NO_RIBS (none where one would show), ILIUM (the
    ilium flanks it: a sacrum, whatever a labeller reads in its shape) or UNKNOWN.
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
    # The ilium reaches past reach_mm, so it is "seen" first. The sacrum is the lowest vertebra in view:
    # only the lowest seen one is measured (a rib fan can fill a thoracic vertebra's rows too, and the
    # wide window costs more than the rib cue itself).
    low = np.flatnonzero(seen)[np.argmax(centers[seen, 0])]
    if room[low] >= p.ilium_room_mm:
        which = np.arange(len(centers)) == low
        if ilium_share(iso, owner, centers, boxes, spacing, p, which=which)[low] >= p.ilium_rows:
            out[low] = ILIUM
    return out
