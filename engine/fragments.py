"""Bone of a vertebra cut by the field of view: unclaimed pieces at the scan's top and bottom faces.

A vertebra whose body is out of view can still leave bone in it. In the thoracic spine the spinous
processes slope down like shingles, so the tip of the vertebra above the first one in view hangs into
the top slices, some 40 mm behind the bodies; at the bottom face the next vertebra's lamina shows
before its body does. VerSe labels such a piece (its centroid is the vertebra's, as seen), and the
detector, trained on whole cross-sections, gives it no boxes. ``engine.chain.end_centres`` looks on
the chain's axis only; this looks for unclaimed bone touching the face, in a corridor behind the end
vertebra, and proposes its centroid. The segmenter then decides (``engine.segment.extend``): the piece
is kept only if its ROI segments a new vertebra, not one already found. The decoder places it next to
its end (``engine.sequence.decode_sequence``, ``partial``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.chain import NO_ABOVE, NO_BELOW, levels_between
from engine.xp import get_xp, is_numpy, to_numpy


@dataclass
class FragmentParams:
    """Where to look, in mm, around the end vertebra's centre: ``lateral_mm`` either side (the spinous
    processes and laminae are midline; rib heads and transverse processes lie 20-40 mm out),
    ``front_mm`` in front and ``back_mm`` behind (a thoracic spinous tip: ~40 mm). Bone is above
    ``bone_hu`` and not in any mask; a piece must touch the face and hold ``min_mm3``. The end vertebra
    must lie within ``reach`` chain steps of the face (farther, nothing of the next one is in view),
    but at least ``min_in_view`` steps from it: an end vertebra cut through its own body leaves its own
    arch loose at the face (on the held-out phantoms, all three pieces found next to such an end were
    the end vertebra's own; all nine next to ends farther in were the next vertebra's).
    A piece whose surface touches the masks over more than ``max_contact`` of it is the rest of a
    vertebra already found (its mask stopped short of the face), a rib on its head, not a new one: the
    next vertebra's spinous tip or lamina lies apart, across an interspinous gap or a joint space."""

    lateral_mm: float = 20.0
    front_mm: float = 10.0
    back_mm: float = 70.0
    bone_hu: float = 200.0
    min_mm3: float = 150.0
    reach: float = 1.0
    min_in_view: float = 0.25
    max_contact: float = 0.1

    def __post_init__(self) -> None:
        if min(self.lateral_mm, self.back_mm, self.min_mm3, self.reach) <= 0 or self.front_mm < 0:
            raise ValueError("lateral_mm, back_mm, min_mm3 and reach must be > 0, front_mm >= 0")
        if not 0.0 <= self.max_contact <= 1.0:
            raise ValueError("max_contact must be in [0, 1]")


def _label(xp, mask):
    if is_numpy(xp):
        from scipy import ndimage as ndi
    else:  # pragma: no cover - GPU only
        from cupyx.scipy import ndimage as ndi
    return ndi.label(mask)


def border_fragments(iso, owner, centers: np.ndarray, labels, spacing: float,
                     params: FragmentParams | None = None) -> np.ndarray:
    """(M <= 2, 3) canonical (k, j, i) centroids of the largest unclaimed bone piece touching the top
    (k = 0) or bottom face next to each end of the chain. ``iso``: canonical HU volume; ``owner``: its
    vertebra labels (0 = unclaimed); ``centers`` (N, 3) canonical; ``labels``: their decoded VerSe IDs.
    No piece is looked for beyond C1 or the sacrum."""
    p = params or FragmentParams()
    xp = get_xp(iso)
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels).reshape(-1)
    if c.shape[0] < 2:
        return np.zeros((0, 3))
    K, J, I = (int(s) for s in iso.shape)
    o = np.argsort(c[:, 0], kind="stable")
    out = []
    for end, prev, bad, top in ((o[0], o[1], NO_ABOVE, True), (o[-1], o[-2], NO_BELOW, False)):
        if int(labels[end]) in bad:
            continue
        step = abs(c[end, 0] - c[prev, 0]) / levels_between(int(labels[prev]), int(labels[end]))
        ke = c[end, 0]
        if not p.min_in_view * step <= (ke if top else K - 1 - ke) <= p.reach * step:
            continue
        k0, k1 = (0, int(ke) + 1) if top else (int(ke), K)
        j0 = max(0, int(c[end, 1] - p.front_mm / spacing))
        j1 = min(J, int(c[end, 1] + p.back_mm / spacing) + 1)
        i0 = max(0, int(c[end, 2] - p.lateral_mm / spacing))
        i1 = min(I, int(c[end, 2] + p.lateral_mm / spacing) + 1)
        if k1 <= k0 or j1 <= j0 or i1 <= i0:
            continue
        win = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
        ow = owner[win]
        lab, n = _label(xp, (iso[win] > p.bone_hu) & (ow == 0))
        if not n:
            continue
        face = lab[0] if top else lab[-1]
        touching = np.zeros(n + 1, dtype=bool)
        touching[to_numpy(xp.unique(face))] = True
        touching[0] = False
        size = to_numpy(xp.bincount(lab.ravel(), minlength=n + 1))
        size[~touching | (size * spacing ** 3 < p.min_mm3)] = 0
        if not size.any():
            continue
        # Contact: of each piece's face-neighbour pairs leaving it, the share that lands in a mask.
        out_all, out_mask = np.zeros(n + 1), np.zeros(n + 1)
        for ax in range(3):
            for a, b in ((0, 1), (1, 0)):
                la = lab[(slice(None),) * ax + (slice(a, lab.shape[ax] - 1 + a),)]
                lb = lab[(slice(None),) * ax + (slice(b, lab.shape[ax] - 1 + b),)]
                ob = ow[(slice(None),) * ax + (slice(b, lab.shape[ax] - 1 + b),)]
                leave = (la > 0) & (lb != la)
                out_all += to_numpy(xp.bincount(la[leave].ravel(), minlength=n + 1))
                out_mask += to_numpy(xp.bincount(la[leave & (ob > 0)].ravel(), minlength=n + 1))
        contact = out_mask / np.maximum(out_all, 1.0)
        size[contact > p.max_contact] = 0
        best = int(np.argmax(size))
        if size[best] == 0:
            continue
        kji = to_numpy(xp.stack([a.astype(xp.float64).mean() for a in xp.nonzero(lab == best)]))
        out.append(kji + np.array([k0, j0, i0], dtype=np.float64))
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)
