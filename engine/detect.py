"""Stage 1: sagittal slices of the spine band -> detector session -> decoded, NMS-filtered boxes (a BoxSet).

Everything runs on the array module of the canonical volume (numpy, or CuPy on the GPU): band finding
is a projection, decoding is masking, and NMS is the greedy algorithm vectorised across all slices at
once (one Python iteration per *rank* inside a slice, never per box or per slice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from engine.cluster import BoxSet
from engine.modelio import Letterbox, detector_batch
from engine.xp import get_xp, to_numpy


@dataclass
class DetectParams:
    """Stage-1 settings. ``conf``/``iou`` default to the detector manifest's preprocess values."""

    all_slices: bool = False  # the paper's setting: every sagittal slice (the bench compares both)
    stride: int = 1  # run every stride-th slice of the band
    band_margin_mm: float = 10.0  # slices kept beyond the band (the detector saw such negatives in training)
    bone_hu: float = 200.0  # cortical/cancellous bone threshold of the band projection
    min_half_width_mm: float = 35.0  # a vertebra with its transverse processes is >= ~70 mm wide
    max_half_width_mm: float = 80.0  # ribs and pelvis must not widen the band to the whole body
    band_fraction: float = 0.5  # band edge: coverage falls below this fraction of its peak (ribs: ~0.3)
    conf: float | None = None
    iou: float | None = None
    max_candidates: int = 300  # per slice, before NMS (ultralytics' max_det)
    chunk: int = 32  # slices letterboxed at once (host/GPU memory bound), each chunk run in max_batch pieces


@dataclass
class Band:
    """Sagittal slice indices (canonical i) sent to the detector, and how they were chosen."""

    slices: np.ndarray  # int64, ascending
    lo: int  # first slice of the band (inclusive)
    hi: int  # last slice + 1
    peak: int  # slice of the bone projection's peak (-1 if no bone at all)
    mode: str  # "band" or "all"


def _smooth1d(p: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(p.astype(np.float64), sigma, mode="constant") if sigma > 0 else p.astype(np.float64)


def spine_band(iso, spacing: float, params: DetectParams | None = None) -> Band:
    """Slices that can contain spine, from a bone-threshold projection onto the left-right axis.

    The spine is the one bone column that runs the whole length of the scan: per sagittal slice, the
    profile is the fraction of axial levels (every 2nd is plenty) whose antero-posterior line holds
    at least 3 mm of bone. Pelvis, femora, ribs and metal hold more bone voxels than the spine in some
    slices (a hip prosthesis does), but only over part of the length, so a bone-voxel count is not used.
    The profile, smoothed, peaks at the spine near the body's left-right midline; the band grows from
    the peak while it stays above ``band_fraction`` of the peak, clamped to [min, max] half widths, plus
    a margin. Only 1-D profiles leave the device.
    """
    p = params or DetectParams()
    n_i = int(iso.shape[2])
    sub = iso[::2]
    bone = sub > p.bone_hu
    line = bone.sum(axis=1)  # (k, i): bone voxels along each antero-posterior line
    inside = sub > -300.0
    levels = to_numpy(inside.any(axis=(1, 2)))
    body = to_numpy(inside.sum(axis=(0, 1))).astype(np.float64)
    if not levels.any() or not bool(bone.any()):
        return Band(np.zeros(0, dtype=np.int64), 0, 0, -1, "band")
    present = to_numpy(line >= max(1, int(round(3.0 / spacing))))[levels]
    prof = _smooth1d(present.mean(axis=0).astype(np.float64), 5.0 / spacing)
    ii = np.arange(n_i, dtype=np.float64)
    if body.sum() > 0:
        mid = float((ii * body).sum() / body.sum())
        inside = np.nonzero(body > 0.05 * body.max())[0]
        width = float(inside[-1] - inside[0] + 1) if inside.size else float(n_i)
    else:
        mid, width = (n_i - 1) / 2.0, float(n_i)
    # The spine lies near the midline; allow scoliotic shifts of a quarter body width (>= 40 mm).
    reach = max(0.25 * width, 40.0 / spacing)
    win = (ii >= mid - reach) & (ii <= mid + reach)
    if not np.any(win & (prof > 0)):
        win = prof > 0
    if not np.any(prof > 0):
        return Band(np.zeros(0, dtype=np.int64), 0, 0, -1, "band")
    peak = int(np.argmax(np.where(win, prof, -1.0)))
    below = prof < p.band_fraction * prof[peak]
    left = np.nonzero(below[:peak])[0]
    right = np.nonzero(below[peak + 1:])[0]
    a = int(left[-1] + 1) if left.size else 0
    b = int(peak + 1 + right[0]) if right.size else n_i  # exclusive
    hmin, hmax = p.min_half_width_mm / spacing, p.max_half_width_mm / spacing
    a = int(np.clip(a, np.floor(peak - hmax), np.floor(peak - hmin)))
    b = int(np.clip(b, np.ceil(peak + hmin) + 1, np.ceil(peak + hmax) + 1))
    m = int(np.ceil(p.band_margin_mm / spacing))
    lo, hi = max(0, a - m), min(n_i, b + m)
    return Band(np.arange(lo, hi, max(1, int(p.stride)), dtype=np.int64), lo, hi, peak, "band")


def select_slices(iso, spacing: float, params: DetectParams | None = None) -> Band:
    p = params or DetectParams()
    if p.all_slices:
        n_i = int(iso.shape[2])
        return Band(np.arange(0, n_i, max(1, int(p.stride)), dtype=np.int64), 0, n_i, -1, "all")
    return spine_band(iso, spacing, p)


# ------------------------------------------------------------------------------------------- decoding
def decode(raw, conf: float, max_candidates: int = 300):
    """Raw ultralytics output [N, 5, A] (cx, cy, w, h, score) -> candidates above ``conf``.

    Returns (n, xywh, score): slice position in the batch, boxes in letterboxed pixels, scores; sorted by
    (n, score descending) and cut to the best ``max_candidates`` per slice.
    """
    xp = get_xp(raw)
    score = raw[:, 4, :]
    n, a = xp.nonzero(score > conf)
    s = score[n, a]
    xywh = raw[n, :4, a] if n.shape[0] else xp.zeros((0, 4), dtype=raw.dtype)
    if n.shape[0] == 0:
        return n, xywh.reshape(0, 4), s
    order = xp.lexsort(xp.stack([-s, n]))  # primary key: slice, then best score first
    n, xywh, s = n[order], xywh[order], s[order]
    rank = _rank_in_group(n, xp)
    keep = rank < int(max_candidates)
    return n[keep], xywh[keep], s[keep]


def _rank_in_group(g, xp):
    """Position of each element inside its run of equal values (``g`` sorted ascending)."""
    if g.shape[0] == 0:
        return xp.zeros(0, dtype=xp.int64)
    first = xp.searchsorted(g, g, side="left")  # portable numpy/CuPy (no ufunc.accumulate needed)
    return xp.arange(g.shape[0], dtype=xp.int64) - first.astype(xp.int64)


def nms(group, xywh, score, iou_thr: float):
    """Greedy NMS inside each group (slice), vectorised over groups: boolean keep mask.

    Input sorted by (group, score desc), as ``decode`` returns it. Boxes are laid out in a [G, K] grid
    (G groups, K = largest group); iteration r decides every group's r-th box at once: kept unless a
    kept higher-scoring box of its group overlaps it by more than ``iou_thr``. Equal to the per-slice
    greedy NMS of ultralytics/torchvision (ties broken by the input order).
    """
    xp = get_xp(xywh)
    m = int(score.shape[0])
    if m == 0:
        return xp.zeros(0, dtype=bool)
    _, gi = xp.unique(group, return_inverse=True)
    gi = gi.reshape(-1)
    rank = _rank_in_group(gi, xp)
    g, k = int(gi.max()) + 1, int(rank.max()) + 1
    x1 = xp.full((g, k), np.nan, dtype=xp.float64)
    y1, x2, y2 = x1.copy(), x1.copy(), x1.copy()
    b = xywh.astype(xp.float64)
    x1[gi, rank] = b[:, 0] - b[:, 2] / 2
    y1[gi, rank] = b[:, 1] - b[:, 3] / 2
    x2[gi, rank] = b[:, 0] + b[:, 2] / 2
    y2[gi, rank] = b[:, 1] + b[:, 3] / 2
    valid = xp.zeros((g, k), dtype=bool)
    valid[gi, rank] = True
    area = xp.where(valid, (x2 - x1) * (y2 - y1), 0.0)
    supp = ~valid
    keep = xp.zeros((g, k), dtype=bool)
    cols = xp.arange(k)
    for r in range(k):
        kr = ~supp[:, r]
        if not bool(kr.any()):
            continue
        keep[:, r] = kr
        iw = xp.clip(xp.minimum(x2[:, r:r + 1], x2) - xp.maximum(x1[:, r:r + 1], x1), 0, None)
        ih = xp.clip(xp.minimum(y2[:, r:r + 1], y2) - xp.maximum(y1[:, r:r + 1], y1), 0, None)
        inter = iw * ih
        iou = inter / xp.maximum(area[:, r:r + 1] + area - inter, 1e-12)
        iou = xp.where(valid, iou, 0.0)
        supp |= kr[:, None] & (iou > iou_thr) & (cols[None, :] > r)
    return keep[gi, rank]


def to_boxset(slice_idx, group, xywh, score, lb: Letterbox, spacing: float) -> BoxSet:
    """Kept boxes (letterboxed pixels) -> BoxSet in slice pixels: rows = k (y), cols = j (x)."""
    xp = get_xp(xywh)
    b = xywh.astype(xp.float64)
    cx = (b[:, 0] - lb.pad_x) / lb.scale
    cy = (b[:, 1] - lb.pad_y) / lb.scale
    w = b[:, 2] / lb.scale
    h = b[:, 3] / lb.scale
    return BoxSet(slice_index=xp.asarray(slice_idx)[group], center_rc=xp.stack([cy, cx], axis=1),
                  size_hw=xp.stack([h, w], axis=1), score=score.astype(xp.float64), spacing=float(spacing))


def detect(session, iso, slices: np.ndarray, preprocess: dict[str, Any], spacing: float,
           params: DetectParams | None = None, max_batch: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> BoxSet:
    """Run the detector on sagittal ``slices`` of ``iso`` and return the NMS-filtered boxes of all of them."""
    p = params or DetectParams()
    xp = get_xp(iso)
    conf = float(p.conf if p.conf is not None else preprocess.get("conf", 0.25))
    iou = float(p.iou if p.iou is not None else preprocess.get("iou", 0.5))
    slices = np.asarray(slices, dtype=np.int64)
    if slices.size == 0:
        return BoxSet.empty(spacing)
    in_name, out_name = session.input_names[0], session.output_names[0]
    groups, boxes, scores, lb = [], [], [], None
    chunk = max(1, int(p.chunk))
    for s0 in range(0, slices.size, chunk):
        part = slices[s0:s0 + chunk]
        x, lb = detector_batch(iso, part, preprocess, xp=xp)
        raw = session.run({in_name: x}, max_batch=max_batch)[out_name]
        raw = xp.asarray(raw)
        n, xywh, s = decode(raw, conf, p.max_candidates)
        groups.append(n + s0)
        boxes.append(xywh)
        scores.append(s)
        if progress:
            progress(min(s0 + chunk, slices.size), slices.size)
    group = xp.concatenate(groups)
    xywh = xp.concatenate(boxes)
    score = xp.concatenate(scores)
    if group.shape[0] == 0:
        return BoxSet.empty(spacing)
    keep = nms(group, xywh, score, iou)
    return to_boxset(xp.asarray(slices), group[keep], xywh[keep], score[keep], lb, spacing)
