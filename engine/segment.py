"""Stage 2: one 2x128^3 ROI per vertebra centre -> segmenter session -> one canonical label volume.

ROIs are built and run in batches; each batch's probabilities are pasted straight into the full
canonical volume and dropped, so memory stays at one batch of ROIs plus two volumes. Overlaps are
resolved by probability: a running max-probability volume remembers the best ROI at every voxel.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from engine.modelio import segmenter_input
from engine.preprocess import box_at_face, box_faces, roi_start
from engine.xp import get_xp, is_numpy, to_numpy


@dataclass
class SegmentParams:
    threshold: float | None = None  # default: the segmenter manifest's preprocess["threshold"] (0.5)
    largest_component: bool = True  # keep each vertebra's largest 26-connected piece
    min_volume_mm3: float = 500.0  # smaller masks are fragments (a duplicate centre, a stray detection)
    # Two centres inside one vertebra (a cluster split in two) segment the same bone: a new mask that
    # overlaps a pasted one by more than this fraction of the smaller is merged into it.
    duplicate_overlap: float = 0.5
    # ``extend``: a recovery ROI takes a found vertebra's voxel only where its probability is at least
    # this much higher than the found one's (so a ROI landing on a found vertebra takes little of it).
    reclaim_margin: float = 0.1
    # The segmenter learned to segment the vertebra within 6 mm of its ROI centre. A ROI further than
    # this from where its vertebra is (a cluster pulled to a neighbour, a sacrum found by one ala) was
    # segmented off-centre and runs once more: in the sagittal plane at its mask's centroid, sideways on
    # the spine's local midline (its neighbours' masks). 0 turns it off.
    recentre_mm: float = 6.0
    midline_neighbours: int = 4  # sideways, a re-run ROI goes to the median of this many nearest masks
    # ``regrow`` (the sacrum): ROIs run at the mask's centroid until it moves less than ``regrow_mm``,
    # at most ``regrow_rounds`` times. 0 turns it off.
    regrow_rounds: int = 3
    regrow_mm: float = 3.0
    regrow_span_mm: float = 15.0  # each round: ROIs at the centroid and this far above and below it
    # ``face_pieces``: a vertebra the field of view cuts is often several pieces inside the scan, joined
    # only beyond its face (a slab through the two inferior facets and the spinous tip). Once the chain
    # is decided, one more ROI at each such vertebra's centre gives it the unclaimed pieces on the faces
    # its mask touches. False turns it off.
    face_pieces: bool = True


@dataclass
class Segmentation:
    """The canonical label volume and per-vertebra facts, in candidate order (top to bottom)."""

    owner: Any  # [k, j, i] uint8/uint16: 0 background, n + 1 = kept vertebra n (renumbered after drops)
    centers_kji: np.ndarray  # (M, 3) float64 mask centroids, canonical array indices
    voxels: np.ndarray  # (M,) int64 voxel counts
    boxes: list[tuple[slice, slice, slice]]  # canonical bounding box of each mask
    source: np.ndarray  # (M,) index of the candidate centre each mask came from
    dropped: list[int] = field(default_factory=list)  # candidate indices whose mask was empty/too small
    merged: list[int] = field(default_factory=list)  # candidate indices merged into an earlier vertebra
    recovered: list[int] = field(default_factory=list)  # vertebrae added by ``extend`` (missed by detection)
    recentred: list[int] = field(default_factory=list)  # candidate indices whose ROI ran again on its mask
    reclaimed: list[int] = field(default_factory=list)  # found vertebrae that gave voxels back in ``extend``
    # [k, j, i] uint8 max probability x 255 (0 outside the kept vertebrae): the masks' sub-voxel boundary
    # when they are resampled to the input grid (engine.preprocess.masks_to_input).
    prob: Any = None


def _window(start: np.ndarray, r, shape):
    """A ROI of edge ``r`` placed at ``start`` and clipped to a volume of ``shape``: its first and last+1
    voxel in the volume, and the slices that pick that part from the volume and from the ROI."""
    lo, hi = np.maximum(start, 0), np.minimum(start + r, shape)
    dst = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo - start, hi - start))
    return lo, hi, dst, src


def _paste(owner, best, prob, start, label: int, thr: float, xp, sizes: dict | None = None,
           dup_overlap: float = 0.0) -> int:
    """Paste one ROI's probabilities: voxels above ``thr`` and above the best so far take ``label``.

    With ``dup_overlap`` > 0, a mask that overlaps an already pasted vertebra by more than that fraction
    of the smaller of the two is the same vertebra seen from a second (duplicate) centre: it is merged
    into that vertebra's label instead. ``sizes`` (label -> mask voxels) is kept up to date. Returns the
    label used (0 if nothing was pasted).
    """
    lo, hi, dst, src = _window(start, np.asarray(prob.shape), owner.shape)
    if np.any(hi <= lo):
        return 0
    p = prob[src]
    above = p > thr
    n_new = int(above.sum())
    if n_new == 0:
        return 0
    if dup_overlap > 0 and sizes:
        hits = to_numpy(xp.bincount(owner[dst][above].astype(xp.int64).ravel(), minlength=label + 1))
        hits[0] = 0
        j = int(np.argmax(hits))
        if hits[j] > dup_overlap * min(n_new, sizes.get(j, n_new)):
            label = j
    if sizes is not None:
        sizes[label] = sizes.get(label, 0) + n_new
    cur = best[dst]
    upd = above & (p > cur)
    # Every voxel keeps its highest probability, below the threshold too: the masks' sub-voxel boundary
    # on the input grid is interpolated from these (ownership only changes where ``upd``).
    best[dst] = xp.maximum(cur, p)
    owner[dst] = xp.where(upd, owner.dtype.type(label), owner[dst])
    return label


def _ndimage(xp):
    if is_numpy(xp):
        import scipy.ndimage as ndi
    else:  # pragma: no cover - GPU only
        import cupyx.scipy.ndimage as ndi
    return ndi


def _keep_largest(owner, boxes, xp) -> None:
    """In place: inside each vertebra's box, keep only its largest 26-connected component."""
    ndi = _ndimage(xp)
    struct = xp.ones((3, 3, 3), dtype=bool)
    for n, box in enumerate(boxes):
        if box is None:
            continue
        view = owner[box]
        m = view == (n + 1)
        lab, k = ndi.label(m, structure=struct)
        if int(k) <= 1:
            continue
        sizes = xp.bincount(lab.ravel(), minlength=int(k) + 1)
        sizes[0] = 0
        big = int(to_numpy(xp.argmax(sizes)))
        view[m & (lab != big)] = 0


def _stats(owner, m: int, xp):
    """Voxel counts and centroids (k, j, i) of labels 1..m, in one pass of bincounts."""
    nz = xp.nonzero(owner)
    lab = owner[nz].astype(xp.int64)
    cnt = xp.bincount(lab, minlength=m + 1)[1:]
    sums = xp.stack([xp.bincount(lab, weights=c.astype(xp.float64), minlength=m + 1)[1:] for c in nz], axis=1)
    cnt_h, sums_h = to_numpy(cnt).astype(np.int64), to_numpy(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        ctr = sums_h / np.maximum(cnt_h, 1)[:, None]
    return cnt_h, ctr


def _find_boxes(owner, m: int):
    from scipy.ndimage import find_objects

    # find_objects works on the host; one transfer of a uint8 volume is cheap next to the segmenter.
    objs = find_objects(to_numpy(owner), max_label=m)
    return list(objs) + [None] * (m - len(objs))


def segment(session, iso, centers_kji: np.ndarray, preprocess: dict[str, Any], spacing: float,
            params: SegmentParams | None = None, max_batch: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> Segmentation:
    """Segment the vertebra at each centre (canonical array indices) and fuse the masks into one volume."""
    p = params or SegmentParams()
    xp = get_xp(iso)
    centers = np.asarray(centers_kji, dtype=np.float64).reshape(-1, 3)
    n = centers.shape[0]
    dtype = xp.uint8 if n < 255 else xp.uint16
    owner = xp.zeros(iso.shape, dtype=dtype)
    if n == 0:
        return Segmentation(owner, np.zeros((0, 3)), np.zeros(0, np.int64), [], np.zeros(0, np.int64), [])
    best = xp.zeros(iso.shape, dtype=xp.float32)
    thr, sizes, merged = mask_threshold(p, preprocess), {}, []

    def paste(i: int, prob, start: np.ndarray) -> None:
        used = _paste(owner, best, prob, start, i + 1, thr, xp, sizes, p.duplicate_overlap)
        if used and used != i + 1:
            merged.append(i)

    _run_rois(session, iso, centers, preprocess, max_batch, paste, progress)
    moved, stats = _recentre(session, iso, owner, best, centers, preprocess, max_batch, paste, sizes, p, spacing)
    return replace(_finish(owner, best, thr, n, np.arange(n), merged, p, spacing, xp, stats), recentred=moved)


def _midline(ctr: np.ndarray, ok: np.ndarray, fallback: np.ndarray, k: int) -> np.ndarray:
    """Each mask's left-right target (canonical i): the median of its ``k`` nearest other masks along the
    spine. Not its own centroid: a lopsided mask (a sacrum drawn from one ala) pulls that sideways, and
    following it walked the real abdomen's sacrum ROI onto the pelvis. ``fallback`` where fewer than two
    other masks exist."""
    out = np.asarray(fallback, dtype=np.float64).copy()
    idx = np.nonzero(ok)[0]
    if len(idx) < 3 or k < 1:
        return out
    along = np.abs(ctr[idx, 0][:, None] - ctr[idx, 0][None, :])
    np.fill_diagonal(along, np.inf)
    near = np.argsort(along, axis=1, kind="stable")[:, :min(k, len(idx) - 1)]
    out[idx] = np.median(ctr[idx, 2][near], axis=1)
    return out


def _recentre(session, iso, owner, best, centers: np.ndarray, preprocess: dict[str, Any], max_batch,
              paste: Callable[[int, Any, np.ndarray], None], sizes: dict, p: SegmentParams,
              spacing: float) -> tuple[list[int], tuple[np.ndarray, np.ndarray] | None]:
    """Run again each ROI whose centre lies over ``recentre_mm`` from where its mask says the vertebra is
    (``SegmentParams.recentre_mm``); the old mask is cleared first, so the new one is pasted like any
    other. Returns their indices and, when none ran again, the masks' (voxel counts, centroids) after
    the largest-component pass, which are then final (``_finish`` need not do either again).

    On 22 held-out phantoms (session 14) 4 of 10 missed vertebrae were found; likely because an
    off-centre ROI segments part of a neighbour, whose own mask then takes it.
    """
    if p.recentre_mm <= 0:
        return [], None
    xp, n = get_xp(iso), len(centers)
    boxes = _find_boxes(owner, n)
    if p.largest_component:
        _keep_largest(owner, boxes, xp)  # a stray fragment would pull the centroid off the vertebra
    cnt, ctr = _stats(owner, n, xp)
    ok = cnt > 0
    target = ctr.copy()
    target[:, 2] = _midline(ctr, ok, centers[:, 2], p.midline_neighbours)
    shift = np.linalg.norm((target - centers) * spacing, axis=1)
    move = np.nonzero(ok & (shift > p.recentre_mm))[0]
    if not move.size:
        return [], (cnt, ctr)
    for i in move:
        view_o, view_b = owner[boxes[i]], best[boxes[i]]
        old = view_o == (i + 1)
        view_o[old] = 0
        view_b[old] = 0.0
        sizes.pop(int(i) + 1, None)
    _run_rois(session, iso, target[move], preprocess, max_batch,
              lambda k, prob, start: paste(int(move[k]), prob, start), None)
    return [int(i) for i in move], None


def extend(seg: Segmentation, session, iso, centers_kji: np.ndarray, preprocess: dict[str, Any], spacing: float,
           params: SegmentParams | None = None, max_batch: int | None = None,
           partial: Sequence[bool] | None = None, min_mm3: Sequence[float] | None = None) -> Segmentation:
    """Segment more centres (e.g. where a vertebra was missed) into a finished Segmentation.

    Each new mask takes the unclaimed voxels above threshold and, where a found vertebra holds a voxel
    with a probability at least ``reclaim_margin`` below the new ROI's, that voxel too: a found mask that
    swallowed its missed neighbour (an L5 grown into the sacrum, a C7 into T1) gives the part back. It is
    kept only as a NEW vertebra: one that sees above threshold more than ``duplicate_overlap`` (of the
    smaller of the two) of a found vertebra that holds those voxels surely, or would take more than that
    fraction of one, landed on that vertebra and is discarded, and so is one under ``min_volume_mm3``.
    Found vertebrae keep their numbers (their voxel counts and centres follow what they gave back;
    ``reclaimed`` lists them); kept ones are numbered after them and listed in ``recovered`` (vertebra
    indices); ``source`` gives them -(1 + index into ``centers_kji``).
    All work stays inside each proposal's ROI window: the volume is only copied, never swept.

    ``partial`` marks proposals for a vertebra cut by the field of view (beyond a chain end). Centred on
    a thin slab of bone at the edge, the segmenter mostly segments the whole neighbour it was found
    from; such a proposal that lands on a found vertebra keeps the unclaimed voxels alone, when they
    lie nearer its centre than that vertebra's (the slab beyond the found end).
    ``min_mm3`` (per proposal) replaces ``params.min_volume_mm3`` as the smallest mask kept.
    """
    p = params or SegmentParams()
    xp = get_xp(iso)
    proposals = np.asarray(centers_kji, dtype=np.float64).reshape(-1, 3)
    m0, e = len(seg.voxels), proposals.shape[0]
    if e == 0:
        return seg
    owner = seg.owner.astype(xp.uint16) if m0 + e >= np.iinfo(seg.owner.dtype).max else seg.owner.copy()
    prob = seg.prob.copy() if seg.prob is not None else (seg.owner > 0).astype(xp.uint8) * xp.uint8(255)
    thr, r = mask_threshold(p, preprocess), int(preprocess["roi"])
    floor = np.full(e, p.min_volume_mm3, dtype=np.float64) if min_mm3 is None else np.asarray(min_mm3, np.float64)
    min_vox = np.maximum(1.0, floor / spacing ** 3)
    sizes = {j + 1: int(v) for j, v in enumerate(seg.voxels)}
    centers, voxels = seg.centers_kji.astype(np.float64).copy(), seg.voxels.astype(np.int64).copy()
    reclaimed: set[int] = set()
    kept: list[tuple[np.ndarray, int, tuple[slice, slice, slice], int]] = []  # centre, voxels, box, source

    def paste(i: int, roi_prob, start: np.ndarray) -> None:
        lo, hi, win, src = _window(start, r, owner.shape)
        if np.any(hi <= lo):
            return
        ow, pw = owner[win], prob[win]  # views: pasting writes through
        found = ow > 0
        best = pw.astype(xp.float32) / 255.0
        best = xp.where(found, best + xp.float32(p.reclaim_margin), best)
        # Vertebrae recovered earlier in this pass keep all of theirs: only masks the detector found can
        # have swallowed a missed neighbour (and only their book-keeping is updated by _give_back).
        best = xp.where(ow > m0, xp.float32(2.0), best)
        pr = roi_prob[src]
        above = pr > thr
        take = above & (pr > best)
        if not bool(take.any()):
            return
        if _lands_on_found(ow, above, take, sizes, m0, p.duplicate_overlap, xp):
            if not (partial is not None and partial[i]):
                return
            take = above & ~found
            seen = centers if not kept else np.concatenate([centers, np.stack([k[0] for k in kept])])
            if not bool(take.any()) or not _beyond(take, lo, proposals[i], seen, ow[above & found], xp):
                return
            best = xp.where(found, xp.float32(2.0), best)  # the found vertebrae keep all of theirs
        old = ow.copy()
        label = m0 + len(kept) + 1
        if _paste(ow, best, roi_prob, start - lo, label, thr, xp) != label:
            return
        box = _find_boxes(ow, label)[label - 1]
        if p.largest_component:
            _keep_largest(ow, [None] * (label - 1) + [box], xp)
            back = (ow == 0) & (old > 0)  # pieces cut off the new mask return to their found vertebra
            ow[back] = old[back]
        mask = ow == label
        cnt = int(mask.sum())
        if cnt < min_vox[i]:
            ow[...] = old  # found vertebrae get back what it took
            return
        reclaimed.update(_give_back(old, mask, lo, centers, voxels, sizes, xp))
        sizes[label] = cnt
        new = xp.clip(best * 255.0 + 0.5, 0, 255).astype(xp.uint8)
        new[(ow == 0) & (best > thr) & ~found] = 0  # removed fragments must not come back (see _finish)
        pw[...] = xp.where(found & ~mask, pw, new)
        ctr = _centroid(mask, lo, xp)
        box = tuple(slice(s.start + int(o), s.stop + int(o)) for s, o in zip(_find_boxes(ow, label)[label - 1], lo))
        kept.append((ctr, cnt, box, -1 - i))

    _run_rois(session, iso, proposals, preprocess, max_batch, paste, None)
    if not kept:
        return replace(seg, owner=owner, prob=prob, recovered=[])
    return replace(seg, owner=owner, prob=prob, reclaimed=sorted(reclaimed),
                   centers_kji=np.concatenate([centers, np.stack([k[0] for k in kept])]),
                   voxels=np.concatenate([voxels, np.asarray([k[1] for k in kept], dtype=np.int64)]),
                   boxes=list(seg.boxes) + [k[2] for k in kept],
                   source=np.concatenate([seg.source, np.asarray([k[3] for k in kept], dtype=np.int64)]),
                   recovered=list(range(m0, m0 + len(kept))))


def regrow(seg: Segmentation, session, iso, which: Sequence[int], preprocess: dict[str, Any], spacing: float,
           params: SegmentParams | None = None, max_batch: int | None = None) -> Segmentation:
    """Segment vertebrae ``which`` again from ROIs around their masks' centroids, until each centroid
    moves less than ``regrow_mm``: a bone longer than the segmenter's reach from its ROI centre (the
    sacrum, 100-130 mm along its curve) is segmented only around where the detector or a recovery slab
    found it, and ROIs at the centroid of what was found reach further.

    Each round runs ROIs at the centroid and ``regrow_span_mm`` above and below it along the spine; inside
    their windows the vertebra becomes the union of what they see above threshold on voxels no other
    vertebra holds (then its largest piece). Sideways the ROIs stay on the spine's midline (``_midline``
    of the other masks), as in ``_recentre``.
    """
    p = params or SegmentParams()
    which = [int(i) for i in which]
    if not which or p.regrow_rounds <= 0:
        return seg
    xp = get_xp(iso)
    owner, prob = seg.owner.copy(), seg.prob.copy() if seg.prob is not None else None
    centers, voxels, boxes = seg.centers_kji.astype(np.float64).copy(), seg.voxels.copy(), list(seg.boxes)
    thr, r = mask_threshold(p, preprocess), int(preprocess["roi"])
    steps = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]) * p.regrow_span_mm / spacing
    ran = {i: None for i in which}  # where each vertebra's ROIs were centred last (None: never)
    for _ in range(p.regrow_rounds):
        target = centers.copy()
        target[:, 2] = _midline(centers, voxels > 0, centers[:, 2], p.midline_neighbours)
        todo = [i for i in which if voxels[i] > 0 and (
            ran[i] is None or np.linalg.norm((target[i] - ran[i]) * spacing) > p.regrow_mm)]
        if not todo:
            break
        region: dict[int, tuple[slice, slice, slice]] = {}
        for i in todo:
            ran[i] = target[i]
            rois: list[tuple[Any, np.ndarray]] = []
            _run_rois(session, iso, target[i] + steps, preprocess, max_batch,
                      lambda k, roi_prob, start: rois.append((roi_prob, start)), None)
            starts = np.stack([st for _, st in rois])
            lo, hi = np.maximum(starts.min(0), 0), np.minimum(starts.max(0) + r, owner.shape)
            span = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            # The vertebra now lies within its old box and the windows' union: all later work stays there.
            region[i] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(boxes[i], span))
            ow = owner[span]
            was = ow == i + 1
            ow[was] = 0  # the windows' union is segmented afresh; what lies outside it stays
            seen = xp.zeros(ow.shape, dtype=xp.float32)
            for roi_prob, start in rois:
                a, b = np.maximum(start, lo) - lo, np.minimum(start + r, hi) - lo
                dst = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
                src = tuple(slice(int(x), int(y)) for x, y in zip(a + lo - start, b + lo - start))
                seen[dst] = xp.maximum(seen[dst], roi_prob[src])
            ow[(ow == 0) & (seen > thr)] = i + 1
            if prob is not None:
                # Its voxels take the new probabilities; background keeps the highest seen (a neighbour's
                # sub-voxel boundary is interpolated from them) except where this vertebra was before.
                pw = prob[span]
                new = xp.clip(seen * 255.0 + 0.5, 0, 255).astype(xp.uint8)
                pw[...] = xp.where((ow == i + 1) | was, new, xp.where(ow == 0, xp.maximum(pw, new), pw))
        if p.largest_component:
            _keep_largest(owner, [region.get(n) for n in range(len(voxels))], xp)
        for i in todo:
            view = owner[region[i]]
            if prob is not None:  # pieces cut off must not come back on the input grid
                pv = prob[region[i]]
                pv[(view == 0) & (pv > int(thr * 255))] = 0
            n, boxes[i], ctr = _refit(owner, i, region[i], xp)
            voxels[i] = n
            if n:
                centers[i] = ctr
    return replace(seg, owner=owner, prob=prob, centers_kji=centers, voxels=voxels, boxes=boxes)


def keep_face_pieces(seg: Segmentation, session, iso, preprocess: dict[str, Any], spacing: float,
                     params: SegmentParams | None = None, max_batch: int | None = None) -> Segmentation:
    """Give each vertebra the field of view cuts its pieces on the scan's faces (``face_pieces``).

    Largest-component filtering keeps one piece of a mask; for a vertebra cut by a face the others are
    its own bone, joined beyond the face (held-out hard 100103's T7: its arch's two halves, Dice 0.57 with
    one). A ROI at the vertebra's centre is run again, and the components of its voxels above threshold
    that no other vertebra holds and that reach a face the mask reaches join the vertebra. This runs
    after the chain is decided, so labels and which vertebrae exist do not change: only these masks
    (and the centres computed from them) grow. One ROI per cut vertebra, usually one or two per CT.
    """
    p = params or SegmentParams()
    if not p.face_pieces:
        return seg
    shape = tuple(int(n) for n in seg.owner.shape)
    which = [i for i, b in enumerate(seg.boxes) if b is not None and seg.voxels[i] > 0 and box_at_face(b, shape)]
    if not which:
        return seg
    xp, ndi = get_xp(iso), _ndimage(get_xp(iso))
    owner, prob = seg.owner.copy(), seg.prob.copy() if seg.prob is not None else None
    centers, voxels, boxes = seg.centers_kji.astype(np.float64).copy(), seg.voxels.copy(), list(seg.boxes)
    thr, r = mask_threshold(p, preprocess), int(preprocess["roi"])
    struct = xp.ones((3, 3, 3), dtype=bool)

    region: dict[int, tuple[slice, slice, slice]] = {}

    def paste(k: int, roi_prob, start: np.ndarray) -> None:
        i = which[k]
        lo, hi, win, src = _window(start, r, shape)
        # The grown mask lies within its old box and this window: its box and centroid are found there.
        region[i] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(boxes[i], win))
        ow = owner[win]
        pr = roi_prob[src]
        mine = ow == i + 1
        free = (pr > thr) & (ow == 0)
        lab, n = ndi.label(free, structure=struct)
        if int(n) == 0:
            return
        keep = np.zeros(int(n) + 1, dtype=bool)
        for ax, at in box_faces(boxes[i], shape):
            # Only where the ROI window reaches that face too: elsewhere its edge is no face of the scan.
            if (at == 0 and lo[ax] > 0) or (at == -1 and hi[ax] < shape[ax]):
                continue
            on_face = xp.take(lab, at, axis=ax)
            if bool(xp.take(mine, at, axis=ax).any()):
                keep[to_numpy(xp.unique(on_face))] = True
        keep[0] = False
        if not keep.any():
            return
        add = xp.asarray(keep)[lab]
        ow[add] = i + 1
        if prob is not None:
            pw = prob[win]
            pw[add] = xp.clip(pr[add] * 255.0 + 0.5, 0, 255).astype(xp.uint8)

    _run_rois(session, iso, centers[which], preprocess, max_batch, paste, None)
    for i in which:
        voxels[i], boxes[i], centers[i] = _refit(owner, i, region[i], xp)
    return replace(seg, owner=owner, prob=prob, centers_kji=centers, voxels=voxels, boxes=boxes)


def interface(owner, a: int, b: int, box_a, box_b) -> int:
    """Voxel faces where vertebra a's mask meets vertebra b's (0-based indices; boxes from
    Segmentation.boxes): counted only inside the union of the two boxes, grown by one voxel."""
    lo = [max(0, min(x.start, y.start) - 1) for x, y in zip(box_a, box_b)]
    hi = [min(n, max(x.stop, y.stop) + 1) for n, x, y in zip(owner.shape, box_a, box_b)]
    v = owner[tuple(slice(l, h) for l, h in zip(lo, hi))]
    ma, mb = v == a + 1, v == b + 1
    faces = 0
    for ax in range(3):
        n = v.shape[ax]
        lo_, hi_ = [slice(None)] * 3, [slice(None)] * 3
        lo_[ax], hi_[ax] = slice(0, n - 1), slice(1, n)
        lo_, hi_ = tuple(lo_), tuple(hi_)
        faces += int((ma[lo_] & mb[hi_]).sum()) + int((mb[lo_] & ma[hi_]).sum())
    return faces


def discard(seg: Segmentation, which: Sequence[int]) -> Segmentation:
    """Without vertebrae ``which`` (0-based): their voxels become background (and leave the probability
    map, so the output's sub-voxel boundary does not bring them back); the rest keep their order and are
    renumbered. Their candidates go to ``dropped``."""
    gone = sorted({int(i) for i in which})
    if not gone:
        return seg
    xp = get_xp(seg.owner)
    m = len(seg.voxels)
    keep = np.setdiff1d(np.arange(m), gone)
    lut = np.zeros(m + 1, dtype=np.int64)
    lut[keep + 1] = np.arange(1, len(keep) + 1)
    owner = xp.asarray(lut.astype(seg.owner.dtype))[seg.owner]
    prob = seg.prob
    if prob is not None:
        prob = xp.where((owner == 0) & (seg.owner > 0), xp.uint8(0), prob)
    new_of = np.full(m, -1, dtype=np.int64)
    new_of[keep] = np.arange(len(keep))
    return replace(seg, owner=owner, prob=prob, centers_kji=seg.centers_kji[keep], voxels=seg.voxels[keep],
                   boxes=[seg.boxes[i] for i in keep], source=np.asarray(seg.source)[keep],
                   dropped=list(seg.dropped) + [int(seg.source[i]) for i in gone],
                   recovered=[int(new_of[i]) for i in seg.recovered if new_of[i] >= 0],
                   reclaimed=[int(new_of[i]) for i in seg.reclaimed if new_of[i] >= 0])


def merge(seg: Segmentation, pairs: list[tuple[int, int]]) -> Segmentation:
    """Merge vertebra b into a for each (a, b) (0-based, disjoint pairs): one mask, its centroid and box;
    the rest keep their order and are renumbered. b's candidate goes to ``merged``."""
    if not pairs:
        return seg
    xp = get_xp(seg.owner)
    m = len(seg.voxels)
    owner = seg.owner
    into = np.arange(m)
    for a, b in pairs:
        into[b] = a
    keep = np.flatnonzero(into == np.arange(m))
    new_of = np.zeros(m, dtype=np.int64)
    new_of[keep] = np.arange(len(keep))
    lut = np.zeros(m + 1, dtype=np.int64)
    lut[1:] = new_of[into] + 1
    owner = xp.asarray(lut.astype(owner.dtype))[owner]
    vox = np.bincount(into, weights=seg.voxels, minlength=m)[keep].astype(np.int64)
    ctr = np.stack([np.bincount(into, weights=seg.voxels * seg.centers_kji[:, d], minlength=m)[keep]
                    for d in range(3)], axis=1) / vox[:, None]
    boxes = []
    for j in keep:
        group = [seg.boxes[i] for i in np.flatnonzero(into == j)]
        boxes.append(tuple(slice(min(g[d].start for g in group), max(g[d].stop for g in group)) for d in range(3)))
    merged = list(seg.merged) + [int(seg.source[b]) for _, b in pairs]
    rec = [int(new_of[i]) for i in seg.recovered if into[i] == i]
    return replace(seg, owner=owner, centers_kji=ctr, voxels=vox, boxes=boxes, source=np.asarray(seg.source)[keep],
                   merged=merged, recovered=rec)


def _lands_on_found(ow, above, take, sizes: dict, m0: int, overlap: float, xp) -> bool:
    """Whether a recovery ROI landed on a found vertebra: it sees above threshold more than ``overlap``
    (of the smaller of the two) of one that holds those voxels surely, or would take more than that
    fraction of one."""
    n = max(m0, max(sizes, default=0)) + 1  # labels of vertebrae recovered earlier in this pass too
    given = to_numpy(xp.bincount(ow[take].astype(xp.int64).ravel(), minlength=n))
    kept_by = to_numpy(xp.bincount(ow[above & ~take].astype(xp.int64).ravel(), minlength=n))
    n_above = int(above.sum())
    for j in np.flatnonzero(given[1:] + kept_by[1:]) + 1:
        size = sizes.get(int(j), 0)
        if kept_by[j] > overlap * min(n_above, size) or given[j] > overlap * size:
            return True
    return False


def _beyond(take, lo, centre: np.ndarray, centers: np.ndarray, seen_labels, xp) -> bool:
    """Whether the voxels ``take`` (window at ``lo``) lie nearer the proposal's ``centre`` than the
    centre of the found vertebra the proposal mostly saw (``seen_labels``: its labels under the ROI)."""
    j = int(np.argmax(to_numpy(xp.bincount(seen_labels.astype(xp.int64).ravel())))) - 1  # labels are >= 1
    c = _centroid(take, lo, xp)
    return float(np.linalg.norm(c - centre)) < float(np.linalg.norm(c - centers[j]))


def _centroid(mask, lo, xp) -> np.ndarray:
    """(k, j, i) centroid on the host of a non-empty ``mask`` cut from the volume at ``lo``."""
    return to_numpy(xp.stack([c.astype(xp.float64).mean() for c in xp.nonzero(mask)])) + lo


def _refit(owner, i: int, region: tuple[slice, ...], xp) -> tuple[int, Any, Any]:
    """Voxel count, bounding box and centroid of vertebra ``i`` (0-based), looked for only inside
    ``region`` (which must hold all of it); (0, None, None) if it has no voxel left."""
    rel = _find_boxes(owner[region], i + 1)[i]
    if rel is None:
        return 0, None, None
    box = tuple(slice(s.start + f.start, s.stop + f.start) for s, f in zip(rel, region))
    mask = owner[box] == i + 1
    return int(mask.sum()), box, _centroid(mask, np.array([b.start for b in box]), xp)


def _give_back(old, mask, lo, centers: np.ndarray, voxels: np.ndarray, sizes: dict, xp) -> set[int]:
    """In place: found vertebrae whose voxels (``old`` labels inside a window at ``lo``) a new ``mask``
    took lose them from their counts and centroids (boxes stay supersets). Returns their indices."""
    m0 = len(voxels)
    lost = mask & (old > 0) & (old <= m0)
    if not bool(lost.any()):
        return set()
    idx = xp.nonzero(lost)
    who = old[idx].astype(xp.int64) - 1
    n_lost = to_numpy(xp.bincount(who, minlength=m0))
    s_lost = np.stack([to_numpy(xp.bincount(who, weights=c.astype(xp.float64) + float(o), minlength=m0))
                       for c, o in zip(idx, lo)], axis=1)
    out = set()
    for j in np.flatnonzero(n_lost):
        v = voxels[j]
        centers[j] = (centers[j] * v - s_lost[j]) / max(v - n_lost[j], 1)
        voxels[j] = v - n_lost[j]
        sizes[j + 1] = int(voxels[j])
        out.add(int(j))
    return out


def _run_rois(session, iso, centers, preprocess, max_batch, paste: Callable[[int, Any, np.ndarray], None],
              progress) -> None:
    """Segment ``centers`` in batches; ``paste(i, prob_128^3, roi_start)`` takes each ROI's output."""
    xp = get_xp(iso)
    r = int(preprocess["roi"])
    in_name, out_name = session.input_names[0], session.output_names[0]
    mb = int(max_batch or session.max_batch or 2)
    n = len(centers)
    for s0 in range(0, n, mb):
        idx = range(s0, min(n, s0 + mb))
        x = xp.stack([segmenter_input(iso, centers[i], preprocess, xp=xp) for i in idx])
        prob = xp.asarray(session.run({in_name: x}, max_batch=mb)[out_name])
        for b, i in enumerate(idx):
            paste(i, prob[b, 0], roi_start(centers[i], (r, r, r)))
        if progress:
            progress(idx[-1] + 1, n)


def mask_threshold(p: SegmentParams, preprocess: dict[str, Any]) -> float:
    """The probability above which a voxel belongs to a mask: the parameter, else the manifest's."""
    return float(p.threshold if p.threshold is not None else preprocess.get("threshold", 0.5))


def _finish(owner, best, thr: float, m: int, source: np.ndarray, merged: list[int],
            p: SegmentParams, spacing: float, xp,
            stats: tuple[np.ndarray, np.ndarray] | None = None) -> Segmentation:
    """Largest components, size filter and renumbering of labels 1..m into a Segmentation; ``best``
    (max probability, float) becomes its uint8 ``prob`` map. ``stats``: the (voxel counts, centroids)
    of masks whose largest components were already taken."""
    if stats is None:
        if p.largest_component:
            _keep_largest(owner, _find_boxes(owner, m), xp)
        stats = _stats(owner, m, xp)
    cnt, ctr = stats
    ok = cnt >= max(1.0, p.min_volume_mm3 / spacing ** 3)
    gone = set(merged)
    dropped = [int(i) for i in np.nonzero(~ok)[0] if int(i) not in gone]
    if not ok.all():
        # Renumber the survivors 1..M in order; dropped labels become background.
        lut = np.zeros(m + 1, dtype=np.int64)
        lut[1:][ok] = np.arange(1, int(ok.sum()) + 1)
        owner = xp.asarray(lut.astype(owner.dtype))[owner]
    boxes = _find_boxes(owner, int(ok.sum()))
    # Voxels above threshold that no kept vertebra owns (fragments, dropped masks) must not come back
    # when the probabilities are interpolated: they are cleared.
    prob = xp.clip(best * 255.0 + 0.5, 0, 255).astype(xp.uint8)
    prob[(owner == 0) & (best > thr)] = 0
    return Segmentation(owner, ctr[ok], cnt[ok], boxes, np.asarray(source)[ok], dropped, list(merged), prob=prob)
