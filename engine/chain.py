"""The spine as a chain of vertebra centres: candidates off the chain, and where missed ones should be.

Two facts of anatomy the per-vertebra models do not know:

* neighbouring vertebrae lie on a smooth curve: a candidate far in front of or beside its neighbours
  (sternum, a calcified aorta, a rib head, contrast in the bowel) is not a vertebra, however vertebra-like
  its boxes. The sacrum's centroid sits about 30 mm behind L5's, scoliosis moves the apex about 10 mm
  per level: ``off_chain_mm`` is set above both.
* seed 000's positional logic names a missed level ("T5 between T4 and T6"); the robot needs its centre
  and mask. The decoder has already weighed the labels and the gap against the expected spacing, so its
  verdict, not a raw gap ratio, decides where to look: the missed centres are interpolated along the
  chord between the two found neighbours (the sagitta of a 50 mm kyphotic chord is under 2 mm, well
  inside the segmenter's training offset), then segmented and kept only if the mask is a new vertebra.
* one vertebra seen as two: on a coarse scan the detector's boxes of a vertebra's left and right halves
  can fall into two clusters, and each ROI segments its half (the masks do not overlap, so the
  segmenter's duplicate test cannot tell). Two neighbours far closer than the chain's spacing whose
  masks meet over a whole cross-section (real neighbours touch only at facets or, through a missing
  disc, at an endplate) and whose union is no larger than a vertebra are merged back into one.
* the chain's two ends: a vertebra cut by the field of view leaves a few slices of bone that give the
  detector too few boxes, yet it is a vertebra of the scan (VerSe labels it, the robot may drill next to
  it). One step beyond each end (unless that end is C1, the sacrum or the coccyx), the part of the next
  vertebra inside the field of view is segmented the same way, with a smaller minimum volume. Loose
  bone at the scan's faces beyond an end (a spinous tip) is proposed by ``engine.fragments``.
* the sacrum's top segmented apart: before the sacrum is segmented again around its own centroid
  (``engine.segment.regrow``) its mask may hold only part of it, and the gap to L5 looks like a missed
  level. The recovery then segments S1 as one more vertebra, "L5", and every label above moves one level
  up. A recovered vertebra right above the regrown sacrum whose mask meets it over several of its own
  cross-sections (L5 meets S1 across a disc, at most at its rim) is the sacrum's top: it joins the
  sacrum and the labels above it move one level back down. When the labeller instead reads that piece
  as the transitional L6, it is the same bone whether the detector found it or not, and L5 above it is
  already right: it joins the sacrum and no label moves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.labels import CRANIOCAUDAL, L6, ORDER_INDEX, T13


@dataclass
class ChainParams:
    """``recover``: segment missed levels the decoder names. ``off_chain_mm``: a candidate this far (mm,
    across the spine's axis) from the median of the candidates within ``window_mm`` along it is dropped
    (0 disables); the window widens to hold at least ``min_neighbours`` candidates (itself included)."""

    recover: bool = True
    # Rounds of looking for missed levels: each decodes again with what the last one found, and looks
    # one level past an end the last round extended (three levels missing below the detector's last
    # vertebra need three rounds; new hard 300034). Rounds past ``confirmed_rounds`` walk on from
    # vertebrae recovered before, so errors compound: in 120 HU noise over 58 HU bone (new hard 300001)
    # a walk up the neck drew three "vertebrae" from soft tissue, 21-44 mm from any vertebra. A vertebra
    # those rounds recover is kept only if the labeller gives its decoded level or a neighbouring one at
    # least ``confirm_min_p`` (those three: 0.01-0.04; 300034's L1-L3: 0.59-0.92), and the walk stops.
    recover_rounds: int = 5
    confirmed_rounds: int = 2
    confirm_min_p: float = 0.1
    off_chain_mm: float = 35.0
    window_mm: float = 60.0
    # At a chain's end the window holds few vertebrae, and two strays (a hip and an iliac wing beside the
    # sacrum) outvoted the sacrum itself: it was dropped and a hip kept. Five candidates hold a majority
    # of vertebrae there too.
    min_neighbours: int = 5
    # The median fails where strays outnumber the vertebrae within the window: on new-hard phantom 300001
    # (bone at 58 HU under 120 HU noise) the detector found 5 of T1-T10 and 6 boxes in front of them, so
    # every thoracic candidate was dropped. A second axis follows the longest chain of candidates, top to
    # bottom, each within ``path_slope`` x its k step + ``path_slack_mm`` of the one before (96 % of 474
    # neighbouring true centres on 85 phantoms; the rest are vertebrae cut by the field of view).
    # A candidate is a stray only when it is far from both axes (path_slope < 0: the median alone).
    path_slope: float = 0.8
    path_slack_mm: float = 15.0
    # One vertebra's two sides can fall into two clusters (the sacrum's alae, ~35 mm either side of the
    # midline; a vertebra's halves on a coarse scan): candidates closer than ``halves_k_mm`` along the
    # spine and ``halves_j_mm`` front to back, one on each side of the spine's axis (their mean within a
    # quarter of their distance from it), are joined at their mean before the ROIs are cut (0 disables).
    # Neighbouring vertebrae are >= 14 mm apart along the spine, even in the neck; a stray beside one
    # vertebra (an iliac wing beside the sacrum on a real CT) is not symmetric to it and stays apart.
    halves_k_mm: float = 8.0
    halves_j_mm: float = 20.0
    ends: bool = True  # also look one step beyond each end of the chain
    fragments: bool = True  # and for loose bone at the scan's faces there (engine.fragments)
    # How far from its centre the next vertebra may show, in steps: thoracic spinous processes reach
    # about one level down, so parts of a vertebra whose body is out of view can still be in it.
    end_reach: float = 0.75
    min_partial_mm3: float = 150.0  # smallest recovered mask (a vertebra cut by the field of view)
    # Smallest mask kept for a loose piece at a face (engine.fragments): the piece already holds
    # FragmentParams.min_mm3 of bone, and the segmenter draws a spinous tip short (87 of its 270 mm3 on
    # a held-out phantom), so here the segmenter only confirms it.
    min_piece_mm3: float = 50.0
    # A part recovered beyond an end is the end vertebra's own when both hold (own_part_levels 0 turns
    # this off): its centre lies within ``own_part_levels`` steps of the end vertebra's along the spine, and their masks
    # share more than ``own_part_interface`` x (its volume)^(2/3) mm^2 (one bone, not two across a
    # joint). Held-out 100002 starts inside L1: its arch, left out of the body's mask, came back 0.12
    # steps (4 mm) from L1's centre as a "T12", sharing 7.5x. On the real abdomen CT the T11 sliver (the
    # tips of T11's arch, which reach down beside T12's body) lies 0.28 steps from T12's centre: 1.4x.
    own_part_levels: float = 0.3
    own_part_interface: float = 3.0
    # Or when the labeller tells (0 turns this off): it reads the end vertebra alone as its decoded level
    # (or one next to it) with less than ``own_part_unread``, and the end and the part as one mask with
    # ``own_part_read_gain`` more. A face-cut end segmented as a body without its arch reads as no level at
    # all. Measured on the held-out sets and the real CTs (evaluation/results/2026-12-03-s27/piece_reading):
    # the 29 recoveries that were vertebrae of their own had the end read at >= 0.85 and gained nothing
    # (<= +0.005); hard 100104's L4 arch (gen 4 / 5): 0.03 -> 0.72 / 0.64, the real tptbox crop's top
    # piece 0.11 -> 0.41.
    own_part_unread: float = 0.5
    own_part_read_gain: float = 0.25
    # One vertebra split in two (see the module docstring), all three must hold: centre distance below
    # ``split_ratio`` x the chain's median spacing (0 disables); shared mask surface (mm^2) above
    # ``split_interface`` x (smaller volume)^(2/3) (a cube's face is 1x); union volume below
    # ``split_max_volume`` x the median vertebra. Measured: a split L1 on a 3 mm real CT at 0.46 / 4.1x /
    # 0.99x; on 8 held-out phantoms every neighbour pair >= 0.65 / <= 0.9x.
    split_ratio: float = 0.6
    split_interface: float = 1.5
    split_max_volume: float = 1.5
    # A recovered vertebra above the regrown sacrum is its top (see the module docstring) when their masks
    # share more than ``sacral_piece_interface`` x (its volume)^(2/3) mm^2 (0 disables). Measured on the
    # session-17 outputs: L5-sacrum 0-0.55x on 19 phantom chains, 1.3x on the real abdomen CT (a narrow
    # disc); held-out hard-100104's S1 segmented apart as "L5": 4.2x.
    sacral_piece_interface: float = 2.5

    def __post_init__(self) -> None:
        if self.off_chain_mm < 0 or self.window_mm <= 0:
            raise ValueError("off_chain_mm must be >= 0 and window_mm > 0")
        if self.min_neighbours < 1 or self.halves_k_mm < 0 or self.halves_j_mm < 0:
            raise ValueError("min_neighbours must be >= 1, halves_k_mm and halves_j_mm >= 0")
        if self.recover_rounds < 1 or self.confirmed_rounds < 0 or not 0.0 <= self.confirm_min_p <= 1.0:
            raise ValueError("recover_rounds must be >= 1, confirmed_rounds >= 0, confirm_min_p in [0, 1]")
        if self.min_partial_mm3 <= 0 or self.min_piece_mm3 <= 0:
            raise ValueError("min_partial_mm3 and min_piece_mm3 must be > 0")
        if not 0.0 <= self.own_part_levels < 0.5 or self.own_part_interface < 0:
            raise ValueError("own_part_levels must be in [0, 0.5) and own_part_interface >= 0")
        if not 0.0 <= self.own_part_unread <= 1.0 or not 0.0 <= self.own_part_read_gain <= 1.0:
            raise ValueError("own_part_unread and own_part_read_gain must be in [0, 1]")
        if self.split_ratio < 0 or self.split_interface <= 0 or self.split_max_volume <= 0:
            raise ValueError("split_ratio must be >= 0, split_interface and split_max_volume > 0")
        if self.sacral_piece_interface < 0:
            raise ValueError("sacral_piece_interface must be >= 0")
        if self.path_slack_mm < 0:
            raise ValueError("path_slack_mm must be >= 0")


def off_chain(centers_mm: np.ndarray, params: ChainParams | None = None) -> np.ndarray:
    """(N,) bool: candidates too far from the spine's axis. ``centers_mm`` (N, 3) canonical (k, j, i) in
    mm, k along the spine. Two axes, and a stray is far from both: the median (j, i) of every candidate
    within ``window_mm`` along k (or its ``min_neighbours`` nearest along k if that reaches further,
    itself included), robust while fewer than half of them are strays; and the longest smooth chain of
    candidates (``_path_axis``), robust while the strays do not form a longer one."""
    p = params or ChainParams()
    c = np.asarray(centers_mm, dtype=np.float64).reshape(-1, 3)
    if p.off_chain_mm <= 0 or c.shape[0] < 3:
        return np.zeros(c.shape[0], dtype=bool)
    far = np.linalg.norm(c[:, 1:] - _axis(c, p), axis=1) > p.off_chain_mm
    if p.path_slope >= 0:
        far &= np.linalg.norm(c[:, 1:] - _path_axis(c, p), axis=1) > p.off_chain_mm
    return far


def _path_axis(c: np.ndarray, p: ChainParams) -> np.ndarray:
    """(N, 2) the spine's (j, i) at each centre's k, interpolated along the longest chain of centres (by
    k) whose successive steps stay within ``path_slope`` x dk + ``path_slack_mm`` across the spine; of
    equally long chains, the straightest. Beyond the chain's ends its end centres hold."""
    o = np.argsort(c[:, 0], kind="stable")
    s = c[o]
    n = len(s)
    count, bend, prev = np.ones(n), np.zeros(n), np.full(n, -1)
    for b in range(1, n):  # dynamic programming over the k order (n is a few dozen)
        dji = np.linalg.norm(s[b, 1:] - s[:b, 1:], axis=1)
        ok = dji <= p.path_slope * (s[b, 0] - s[:b, 0]) + p.path_slack_mm
        if ok.any():
            a = int(np.argmax(np.where(ok, count[:b] - 1e-6 * (bend[:b] + dji), -np.inf)))
            count[b], bend[b], prev[b] = count[a] + 1, bend[a] + dji[a], a
    path = [int(np.argmax(count - 1e-6 * bend))]
    while prev[path[-1]] >= 0:
        path.append(int(prev[path[-1]]))
    path = path[::-1]
    axis = np.empty((n, 2))
    axis[o] = np.stack([np.interp(s[:, 0], s[path, 0], s[path, d]) for d in (1, 2)], axis=1)
    return axis


def _axis(c: np.ndarray, p: ChainParams) -> np.ndarray:
    """(N, 2) the spine's (j, i) near each centre of ``c`` (N, 3): the median over the centres within
    ``window_mm`` along k, or over its ``min_neighbours`` nearest along k if that reaches further."""
    dk = np.abs(c[:, None, 0] - c[None, :, 0])  # (N, N), small N
    m = min(p.min_neighbours, c.shape[0]) - 1
    reach = np.maximum(p.window_mm, np.partition(dk, m, axis=1)[:, m])
    ji = np.where((dk <= reach[:, None])[:, :, None], c[None, :, 1:], np.nan)
    return np.nanmedian(ji, axis=1)


def join_halves(centers_mm: np.ndarray, params: ChainParams | None = None) -> np.ndarray:
    """(M <= N, 3) centres, top to bottom along k, with each pair of successive candidates closer than
    ``halves_k_mm`` along k and ``halves_j_mm`` in j, on either side of the spine's axis, replaced by their
    mean: one vertebra's two sides. ``centers_mm`` (N, 3) canonical (k, j, i) in mm."""
    p = params or ChainParams()
    c = np.asarray(centers_mm, dtype=np.float64).reshape(-1, 3)
    c = c[np.argsort(c[:, 0], kind="stable")]
    if p.halves_k_mm <= 0 or c.shape[0] < 3:
        return c
    d = np.abs(np.diff(c, axis=0))
    axis_i = _axis(c, p)[:, 1]
    mid_off = np.abs(0.5 * (c[:-1, 2] + c[1:, 2]) - 0.5 * (axis_i[:-1] + axis_i[1:]))
    same = (d[:, 0] < p.halves_k_mm) & (d[:, 1] < p.halves_j_mm) & (mid_off < 0.25 * d[:, 2])
    same[1:] &= ~same[:-1]  # pairs only: a third close candidate starts a group of its own
    group = np.concatenate([[0], np.cumsum(~same)])
    n = int(group[-1]) + 1
    return np.stack([np.bincount(group, weights=c[:, a], minlength=n) for a in range(3)], axis=1) / \
        np.bincount(group, minlength=n)[:, None]


def close_pairs(centers_mm: np.ndarray, params: ChainParams | None = None) -> list[tuple[int, int]]:
    """Neighbours along the spine (top to bottom by k) closer than ``split_ratio`` x the median spacing:
    (a, b) indices into ``centers_mm`` (N, 3), a above b. The candidates of ``is_split``."""
    p = params or ChainParams()
    c = np.asarray(centers_mm, dtype=np.float64).reshape(-1, 3)
    if p.split_ratio <= 0 or c.shape[0] < 4:  # fewer spacings than that give no reliable median
        return []
    o = np.argsort(c[:, 0], kind="stable")
    d = np.linalg.norm(np.diff(c[o], axis=0), axis=1)
    close = np.flatnonzero(d < p.split_ratio * np.median(d))
    return [(int(o[i]), int(o[i + 1])) for i in close]


def is_split(interface_mm2: float, volume_a_mm3: float, volume_b_mm3: float, median_volume_mm3: float,
             params: ChainParams | None = None) -> bool:
    """Whether two close neighbours' masks are one vertebra: they share a cross-section, not a facet,
    and together are no larger than a vertebra."""
    p = params or ChainParams()
    return (shares_bone(interface_mm2, min(volume_a_mm3, volume_b_mm3), p.split_interface)
            and volume_a_mm3 + volume_b_mm3 < p.split_max_volume * median_volume_mm3)


def is_sacral_piece(interface_mm2: float, volume_mm3: float, recovered: bool,
                    params: ChainParams | None = None, label: int = 0) -> bool:
    """Whether the vertebra right above the regrown sacrum (``above``) is the sacrum's top segmented apart:
    the chain logic recovered it (the detector did not find it) or the labeller read it as the
    transitional L6 (``label``; a level most spines lack, so an extra either way), and its mask meets the
    sacrum's over ``interface_mm2`` above ``sacral_piece_interface`` x ``volume_mm3`` ** (2/3)."""
    p = params or ChainParams()
    extra = recovered or int(label) == L6
    return p.sacral_piece_interface > 0 and extra and shares_bone(interface_mm2, volume_mm3,
                                                                  p.sacral_piece_interface)


def shares_bone(interface_mm2: float, volume_mm3: float, ratio: float) -> bool:
    """Whether a mask of ``volume_mm3`` meets another over more than ``ratio`` of its own cross-sections
    (``interface_mm2`` > ratio x volume^(2/3); a cube's face is 1x): one bone drawn as two masks, not two
    bones across a joint or a disc."""
    return interface_mm2 > ratio * volume_mm3 ** (2.0 / 3.0)


def above(centers: np.ndarray, labels, i: int) -> int | None:
    """Index of the labelled vertebra right above vertebra ``i`` along the spine (canonical k), or None."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    up = np.flatnonzero((np.asarray(labels).reshape(-1) > 0) & (c[:, 0] < c[i, 0]))
    return int(up[np.argmax(c[up, 0])]) if len(up) else None


def one_level_down(labels) -> np.ndarray | None:
    """Each label moved one level towards the feet (T12 -> L1, L4 -> L5), or None when one of them has no
    such level or is transitional (T13 / L6: whether its neighbour was counted through it is unknown)."""
    plain = [lab for lab in CRANIOCAUDAL if lab not in TRANSITIONAL]
    nxt = {a: b for a, b in zip(plain, plain[1:])}
    out = [nxt.get(int(lab)) for lab in np.asarray(labels).reshape(-1)]
    return None if any(lab is None for lab in out) else np.asarray(out, dtype=np.int64)


def missed_centres(centers: np.ndarray, missed: list[tuple[int, int, list[int]]]) -> np.ndarray:
    """(M, 3) centres of the missed levels: ``missed`` holds (above, below, levels) with indices into
    ``centers``; the k levels between two found vertebrae are spaced evenly along their chord."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    out = [c[a] + (c[b] - c[a]) * (j / (len(levels) + 1))
           for a, b, levels in missed for j in range(1, len(levels) + 1)]
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


# Nothing lies above C1 or below the sacrum/coccyx that the cascade should label.
NO_ABOVE = (1,)
NO_BELOW = (26, 27)
TRANSITIONAL = (L6, T13)  # absent in most spines


def levels_between(a: int, b: int) -> int:
    """Anatomical steps from level a to level b (>= 1): transitional T13 / L6 count only when named."""
    ia, ib = sorted((ORDER_INDEX.get(a, 0), ORDER_INDEX.get(b, 0)))
    between = [lab for lab in CRANIOCAUDAL[ia + 1:ib] if lab not in TRANSITIONAL]
    return len(between) + 1


def end_centres(centers: np.ndarray, labels, extent: int, reach: float = 0.75) -> np.ndarray:
    """(M <= 2, 3) where the next vertebra beyond each end of the chain would show in the field of view.

    ``centers`` (N, 3) canonical (k, j, i) with k along the spine in [0, extent); ``labels`` their
    decoded VerSe IDs. The next vertebra is one step (the end pair's distance) beyond the end and
    reaches ``reach`` steps from its centre along the spine; the centre proposed is that of its part
    inside [0, extent): its own centre when it is wholly inside, the middle of the slab in view when
    the field of view cuts it, and none when no slice of it is in view.
    """
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels).reshape(-1)
    if c.shape[0] < 2:
        return np.zeros((0, 3))
    o = np.argsort(c[:, 0], kind="stable")
    out = []
    for end, prev, bad in ((o[0], o[1], NO_ABOVE), (o[-1], o[-2], NO_BELOW)):
        if int(labels[end]) in bad:
            continue
        # One level's step: the decoder may have named a missed level between the end and its neighbour.
        step = (c[end] - c[prev]) / levels_between(int(labels[prev]), int(labels[end]))
        if abs(step[0]) < 1.0:
            continue
        half = reach * abs(step[0])
        ek = c[end, 0] + step[0]
        lo, hi = max(ek - half, 0.0), min(ek + half, extent - 1.0)
        if hi - lo < 1.0:
            continue
        k = 0.5 * (lo + hi)
        out.append(c[end] + step * ((k - c[end, 0]) / step[0]))
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


def same_vertebra_beyond_ends(kind: np.ndarray, side: np.ndarray, first: int = 0) -> list[tuple[int, int]]:
    """Pairs (a, b) of kept recoveries that are one vertebra: a slab beyond an end (kind 1) and a loose
    piece at the face (kind 2, engine.fragments) on the same side (-1 top, +1 bottom) are the next
    vertebra's body and arch. With its body only a slab in view, nothing further is in view, so one
    vertebra at most lies beyond each end. ``kind``/``side`` per kept recovery (kind 0, a missed level,
    never pairs); indices are offset by ``first``."""
    kind, side = np.asarray(kind).reshape(-1), np.asarray(side).reshape(-1)
    pairs = []
    for s in (-1, 1):
        new = np.flatnonzero((kind > 0) & (side == s))
        if len(new) == 2:
            pairs.append((first + int(new[0]), first + int(new[1])))
    return pairs


def own_parts_beyond_ends(centers: np.ndarray, labels, first: int, kind, side,
                          levels: float = 0.3) -> list[tuple[int, int]]:
    """Pairs (end, i): recoveries beyond an end (``kind`` > 0, on ``side`` -1 top / +1 bottom) near
    enough to be the end vertebra's own parts, their centre within ``levels`` steps of its centre along
    the spine (ChainParams.own_part_levels; the caller checks their shared surface, ``shares_bone``).
    ``centers`` (N, 3) canonical (k, j, i), k along the spine: the chain found before, ``labels`` its
    decoded IDs, then the recoveries from index ``first`` on; ``kind``/``side`` per recovery. A step is the chain's median k distance per level: a face-cut end vertebra's
    centre is its visible part's, so the end pair's own distance says little (held-out 100002: L1's
    body slab lies half a step above L2 in k and 35 mm in front of its arch)."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    kind, side = np.asarray(kind).reshape(-1), np.asarray(side).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if first < 2 or levels <= 0:
        return []
    o = np.argsort(c[:first, 0], kind="stable")
    gaps = np.array([levels_between(int(labels[a]), int(labels[b])) for a, b in zip(o[:-1], o[1:])])
    step = float(np.median(np.diff(c[o, 0]) / gaps))
    if step < 1.0:
        return []
    pairs = []
    for s, end in ((-1, o[0]), (1, o[-1])):
        new = first + np.flatnonzero((kind > 0) & (side == s))
        pairs += [(int(end), int(i)) for i in new[np.abs(c[new, 0] - c[end, 0]) < levels * step]]
    return pairs


def near_level_p(probs: np.ndarray, label: int, classes) -> float:
    """The labeller's probability (``probs`` over ``classes``) of ``label`` or a level next to it: what
    a vertebra recovered by an unconfirmed round needs (``ChainParams.confirm_min_p``). The transitional
    T13 and L6 sit half a level past T12 and L5, so T12's neighbours are T11, T13 and L1. 0 for label 0
    (no vertebra)."""
    if int(label) not in _RANK:
        return 0.0
    r = _RANK[int(label)]
    near = np.array([abs(_RANK.get(int(c), np.inf) - r) <= 1.0 for c in classes])
    return float(np.asarray(probs, dtype=np.float64)[near].sum())


_RANK: dict[int, float] = {lab: float(i) for i, lab in enumerate(v for v in CRANIOCAUDAL if v not in (25, 28))}
_RANK.update({28: _RANK[19] + 0.5, 25: _RANK[24] + 0.5})
