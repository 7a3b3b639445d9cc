"""Stage 3: each vertebra's mask (+ CT) -> labeller session -> class probabilities -> sequence decoding.

The labeller input of a vertebra only depends on a neighbourhood of it, so each input is built from a
small crop of the canonical volume (the vertebra's box grown to the labeller's field of view) instead
of a full-volume mask per vertebra; ``engine.modelio.labeller_input`` then resamples it exactly as
training did.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.modelio import labeller_input
from engine.preprocess import AIR_HU, crop_centered
from engine.xp import get_xp, to_numpy


def _crop_size(center: np.ndarray, box: tuple[slice, slice, slice] | None, pp: dict, spacing: float) -> np.ndarray:
    """Size (per axis, voxels) of a crop centred on round(center) that holds everything labeller_input reads."""
    c = np.round(center)
    need = np.zeros(3)
    if pp.get("crop", "fixed") == "fixed":
        need = np.ceil(np.asarray(pp["extent_mm"], dtype=np.float64) / spacing) + 2
    if box is not None:
        lo = np.array([s.start for s in box], dtype=np.float64)
        hi = np.array([s.stop for s in box], dtype=np.float64)
        m = np.ceil(float(pp.get("margin_mm", 2.0)) / spacing) + 2
        half = np.maximum(np.abs(c - lo), np.abs(hi - c)) + m
        need = np.maximum(need, 2 * half + 1)
    return need.astype(int) + 1


def vertebra_input(owner, iso, center_kji, box, label: int, pp: dict, spacing: float):
    """Labeller input [C, D, H, W] of the vertebra ``owner == label`` with centroid ``center_kji``.

    Built from a crop around it; identical to ``labeller_input`` on the full volume because the crop
    (padded like crop_centered pads: air / background) holds every voxel that call would read.
    """
    xp = get_xp(iso)
    c = np.asarray(center_kji, dtype=np.float64)
    size = _crop_size(c, box, pp, spacing) + 2
    # An even start keeps np.round (half to even) of the shifted centre equal to the shifted rounded
    # centre, so the crop reproduces the full-volume call voxel for voxel.
    start = np.round(c).astype(int) - size // 2
    start -= start % 2
    mid = start + size // 2  # crop_centered(arr, mid, size) starts exactly at ``start``
    sub_owner = crop_centered(owner, mid, size, fill=0, xp=xp)
    sub_iso = crop_centered(iso, mid, size, fill=AIR_HU, xp=xp)
    return labeller_input(sub_owner == label, sub_iso, c - start, pp, xp=xp)


def labeller_inputs(owner, iso, centers_kji, boxes, pp: dict, spacing: float, first: int = 0):
    """Stack [M, C, D, H, W] for vertebrae first+1 .. first+M of ``owner`` (centres/boxes given for those)."""
    xp = get_xp(iso)
    out = [vertebra_input(owner, iso, c, boxes[n] if n < len(boxes) else None, first + n + 1, pp, spacing)
           for n, c in enumerate(np.asarray(centers_kji, dtype=np.float64).reshape(-1, 3))]
    if not out:
        shape = tuple(int(s) for s in pp["shape"])
        return xp.zeros((0, len(pp.get("channels", ["mask"])), *shape), dtype=xp.float32)
    return xp.stack(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(session, owner, iso, centers_kji, boxes, pp: dict, spacing: float, max_batch: int | None = None,
             progress: Callable[[int, int], None] | None = None, first: int = 0) -> np.ndarray:
    """Labeller probabilities (M, K) on the host, built and run in batches, of vertebrae first+1 ..
    first+M of ``owner`` (``centers_kji``/``boxes`` are those vertebrae's)."""
    xp = get_xp(iso)
    m = len(centers_kji)
    in_name, out_name = session.input_names[0], session.output_names[0]
    mb = int(max_batch or session.max_batch or 16)
    probs = []
    for s0 in range(0, m, mb):
        x = labeller_inputs(owner, iso, centers_kji[s0:s0 + mb], boxes[s0:s0 + mb], pp, spacing, first=first + s0)
        logits = to_numpy(session.run({in_name: x}, max_batch=mb)[out_name]).astype(np.float64)
        probs.append(softmax(logits))
        if progress:
            progress(min(m, s0 + mb), m)
    return np.concatenate(probs) if probs else np.zeros((0, 0))


def decode_labels(probs: np.ndarray, classes, centers_lps: np.ndarray, end=None,
                  volumes=None, cut=None, ribs=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels + confidences of vertebrae from their labeller probabilities and centres (engine.sequence).

    The chain model needs the candidates top to bottom; they are sorted by height here (LPS +Z is
    superior) and the answer is returned in the caller's order. info: the SequenceResult and warnings.
    ``end``: (N,) int, -1 / +1 for the part of a vertebra cut by the field of view beyond the chain's
    top / bottom end (it goes first / last whatever its centroid's height: a spinous tip hanging from
    the vertebra above can sit below the first body), 0 for the others. ``volumes``: (N,) mask volumes
    and ``cut``: (N,) whether the field of view cuts each (a small one it does not cut may be decoded
    as no vertebra: label 0, listed in info["dropped"]). ``ribs``: (N,) int, the rib cue of each
    (engine.ribs.rib_evidence: 1 a rib seen, 0 none where one would show, 2 the ilium beside it, -1
    unknown).
    """
    from engine import labels as L
    from engine.sequence import decode_sequence

    probs = np.asarray(probs, dtype=np.float64)
    centers_lps = np.asarray(centers_lps, dtype=np.float64).reshape(-1, 3)
    n = probs.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), {"warnings": [], "missed": [], "dropped": []}
    end = np.zeros(n, dtype=np.int64) if end is None else np.asarray(end, dtype=np.int64).reshape(-1)
    order = np.lexsort((-centers_lps[:, 2], end))  # top end, then highest first, then bottom end
    # Levels are counted along the spine, in the sagittal plane: a centre's left-right place says nothing
    # of its level, and a wide bone segmented from one side (a sacral ala) moves its centroid sideways by
    # centimetres, which would read as a missed level. The gaps the decoder weighs ignore LPS x.
    sagittal = centers_lps * np.array([0.0, 1.0, 1.0])
    seq = decode_sequence(probs[order], [int(c) for c in classes], sagittal[order], partial=end[order] != 0,
                          volumes=None if volumes is None else np.asarray(volumes, dtype=np.float64)[order],
                          cut=None if cut is None else np.asarray(cut, dtype=bool)[order],
                          ribs=None if ribs is None else np.asarray(ribs, dtype=np.int64)[order])
    labels = np.empty(n, dtype=np.int64)
    conf = np.empty(n, dtype=np.float64)
    labels[order] = seq.labels
    conf[order] = seq.confidence
    warnings = []
    # Missed levels as (vertebra above, vertebra below, levels) in the caller's order; the one below is
    # the next candidate kept (the decoder may drop candidates that are not vertebrae: label 0).
    gone = set(seq.dropped)
    kept = [t for t in range(n) if t not in gone]
    below = {a: b for a, b in zip(kept, kept[1:])}
    missed = [(int(order[t]), int(order[below[t]]), [int(x) for x in levels]) for t, levels in seq.missed]
    if not seq.consistent:
        warnings.append("labels could not be made anatomically consistent (more vertebrae than levels)")
    for t, levels in seq.missed:
        a, b = L.name(seq.labels[t]), L.name(seq.labels[below[t]])
        warnings.append(f"vertebra(e) {', '.join(L.name(x) for x in levels)} between {a} and {b} "
                        f"appear missing (not detected)")
    warnings += level_warnings(np.asarray(seq.labels), None if ribs is None else np.asarray(ribs)[order])
    return labels, conf, {"warnings": warnings, "scale": seq.scale, "log_score": seq.log_score, "missed": missed,
                          "dropped": sorted(int(order[t]) for t in seq.dropped)}


# Levels that carry ribs / none, as the decoder weighs the rib cue (engine.sequence.RIB_LIKELIHOOD: a
# rib seen on L1-L4 0.03, none where one would show on T2-T11 0.02 and T12 / T13 0.06).
_RIBBED = frozenset(range(9, 20)) | {28}
_RIBLESS = frozenset(range(20, 24))
_LANDMARKS = frozenset({1, 2, 26})  # C1, C2, the sacrum: levels no shape elsewhere is mistaken for


def level_warnings(labels, ribs=None) -> list[str]:
    """Warnings on the level count of a decoded chain (``labels`` top to bottom, 0 = dropped; ``ribs``
    the rib cue in the same order, engine.ribs codes). Wrong-level surgery comes from counting without
    a landmark, and a labeller trained on phantoms reads real crops a level off while its decoded
    confidence stays high (the real T11-L2 crop: T10-L1 at 0.92; the L2-L4 crop: L1-L3 at 0.66).

    * the rib cue disagrees with the labels: a rib-bearing level without a rib, or L1-L4 with one;
    * no landmark in view: no C1, C2 or sacrum decoded and no rib cue changing between two
      neighbours (the last rib, or the first), so every level rests on vertebra shape alone.
    """
    from engine import labels as L
    from engine.ribs import NO_RIBS, RIBS

    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep = lab > 0
    rb = np.full(lab.shape, -1, np.int64) if ribs is None else np.asarray(ribs, dtype=np.int64).reshape(-1)
    lab, rb = lab[keep], rb[keep]
    if not lab.size:
        return []
    out = []
    odd = [f"{L.name(v)} without a rib" for v, r in zip(lab, rb) if r == NO_RIBS and int(v) in _RIBBED]
    odd += [f"{L.name(v)} with a rib" for v, r in zip(lab, rb) if r == RIBS and int(v) in _RIBLESS]
    if odd:
        out.append(f"the rib cue disagrees with the labels ({', '.join(odd)}): the level count may be off by "
                   f"one; confirm it from a landmark")
    pairs = set(zip(rb[:-1].tolist(), rb[1:].tolist()))
    if not (set(lab.tolist()) & _LANDMARKS) and (RIBS, NO_RIBS) not in pairs and (NO_RIBS, RIBS) not in pairs:
        out.append("no landmark in view (C1-C2, the sacrum, or where the ribs start or stop): the levels "
                   "rest on each vertebra's shape alone; confirm the count")
    return out
