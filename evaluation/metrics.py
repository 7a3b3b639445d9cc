"""VerSe-style metrics of one case: localisation and identification (VerSe challenge, seed 002),
labelling, and per-vertebra overlap and surface distances (seed 000). Distances in mm on the images'
physical spacing.

Definitions (GT vertebra g, predictions p; all centres LPS mm):
- loc_error_mm: |g - p| for the prediction carrying g's label (VerSe's localisation distance); MLE is its
  mean over the GT vertebrae that have such a prediction; Acc1.5/2.0/3.0 count a vertebra without one
  as a failure.
- identified (VerSe id rate): the prediction closest to g has g's label and lies within 20 mm.
- detected / missed / extra: a one-to-one assignment of predictions to GT vertebrae (Hungarian, minimum
  total distance, pairs > 20 mm forbidden), labels ignored. Unassigned GT = missed, unassigned
  prediction = extra. One-to-one matters where vertebrae are < 20 mm apart (cervical spine): a deleted
  vertebra is still missed although its neighbour's prediction lies within 20 mm.
- labelling accuracy: identified among detected vertebrae (so detection failures do not count twice);
  sequence correct: every GT vertebra identified and no extra prediction.
- Dice, IoU, PA = (TP+TN)/N, FPD = FP/(FP+TN), FND = FN/(TP+FN) over the whole image; MSD = seed 000
  Eqn 7, the mean of the two directed mean surface distances; HD = max of the directed maxima; HD95 = max
  of the directed 95th percentiles. Surfaces = mask minus its 6-connected erosion. An empty prediction
  (or empty GT) leaves the distances None (JSON null) and sets pred_empty: never a fake number.
- at_face: the GT mask touches a face of the image, so the field of view cuts the vertebra. Such partial
  targets (often a few slices of bone) score far lower Dice than whole ones; reports give both groups.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from engine import labels as L
from engine.errors import DatasetError
from engine.preprocess import box_at_face
from engine.types import SpineResult, Volume
from engine.verse import Centroid, VerseCase, label_boxes, same_geometry

ID_RADIUS_MM = 20.0  # VerSe: identified when the closest prediction is within 20 mm
ACC_THRESHOLDS_MM = (1.5, 2.0, 3.0)  # seed 000, Table 2
SEG_KEYS = ("dice", "iou", "pa", "fpd", "fnd", "msd_mm", "hd_mm", "hd95_mm")
_BOX_PAD = 2  # voxels around the union box, so surfaces at the box edge stay surfaces


@dataclass
class VertebraScore:
    """One GT vertebra (a label with a GT centroid and/or GT mask voxels)."""

    case: str
    label: int
    name: str
    region: str
    has_centroid: bool = True         # localisation fields are None when False
    has_mask: bool = False            # segmentation fields are None when False
    loc_error_mm: float | None = None  # to the predicted centroid of the same label
    closest_label: int | None = None   # label of the closest predicted centroid (any label)
    closest_mm: float | None = None
    identified: bool | None = None     # closest prediction has the right label and is within 20 mm
    detected: bool | None = None       # assigned one-to-one to a prediction within 20 mm
    match_label: int | None = None     # label of that assigned prediction
    match_mm: float | None = None      # distance to it (label-agnostic localisation error)
    dice: float | None = None
    iou: float | None = None
    pa: float | None = None
    fpd: float | None = None
    fnd: float | None = None
    msd_mm: float | None = None
    hd_mm: float | None = None
    hd95_mm: float | None = None
    pred_empty: bool | None = None     # no predicted voxel carries this label
    at_face: bool | None = None        # the GT mask touches the image's face (cut by the field of view)

    @property
    def labelled_correctly(self) -> bool | None:
        """Among detected vertebrae: is the label right? None when not detected / no centroid."""
        return self.identified if self.detected else None


@dataclass
class PredictionScore:
    """One predicted centroid and the GT vertebra it was assigned to (None: an extra prediction)."""

    label: int
    xyz: tuple[float, float, float]
    matched_label: int | None = None
    match_mm: float | None = None
    # The ctd's "recovered" key (`spinert run` writes it): found by the chain logic, not the detector.
    # None when the prediction does not say.
    recovered: bool | None = None

    @property
    def correct(self) -> bool:
        return self.matched_label == self.label


@dataclass
class CaseScore:
    case: str
    vertebrae: list[VertebraScore]
    predictions: list[PredictionScore] = field(default_factory=list)
    missing_prediction: bool = False  # no prediction files at all: everything counts as missed
    notes: list[str] = field(default_factory=list)

    @property
    def extra(self) -> list[int]:
        """Labels of predictions assigned to no GT vertebra."""
        return [p.label for p in self.predictions if p.matched_label is None]

    @property
    def missed(self) -> list[int]:
        return [v.label for v in self.vertebrae if v.detected is False]

    @property
    def sequence_correct(self) -> bool:
        located = [v for v in self.vertebrae if v.has_centroid]
        return bool(located) and all(v.identified for v in located) and not self.extra

    def to_json(self) -> dict:
        return {"case": self.case, "sequence_correct": self.sequence_correct, "missed": self.missed,
                "extra": self.extra, "missing_prediction": self.missing_prediction, "notes": self.notes,
                "vertebrae": [_finite(asdict(v)) for v in self.vertebrae],
                "predictions": [_finite({**asdict(p), "correct": p.correct}) for p in self.predictions]}


def _finite(d: dict) -> dict:
    """JSON has no inf/NaN: such values become null (the pred_empty / has_* flags say why)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _points(cs: list[Centroid]) -> tuple[np.ndarray, np.ndarray]:
    lab = np.array([c.label for c in cs], dtype=int)
    xyz = np.array([c.xyz for c in cs], dtype=float).reshape(-1, 3)
    return lab, xyz


def localisation(case: str, gt: list[Centroid], pred: list[Centroid]
                 ) -> tuple[list[VertebraScore], list[PredictionScore]]:
    """Localisation, identification and one-to-one matching of one case (vectorised distance matrix)."""
    gl, gx = _points(gt)
    pl, px = _points(pred)
    d = np.linalg.norm(gx[:, None, :] - px[None, :, :], axis=-1)  # (n_gt, n_pred)
    # Hungarian assignment: forbidden pairs get a cost larger than any sum of allowed ones, so the
    # number of pairs within 20 mm is maximised first, their total distance second.
    cost = np.where(d <= ID_RADIUS_MM, d, 1e9)
    rows, cols = linear_sum_assignment(cost) if d.size else (np.zeros(0, int), np.zeros(0, int))
    keep = d[rows, cols] <= ID_RADIUS_MM
    g2p = dict(zip(rows[keep].tolist(), cols[keep].tolist()))
    p2g = {p: g for g, p in g2p.items()}

    verts = []
    for n, lab in enumerate(gl.tolist()):
        v = VertebraScore(case, lab, L.name(lab), L.region(lab), identified=False, detected=n in g2p)
        if len(pl):
            j = int(np.argmin(d[n]))
            v.closest_label, v.closest_mm = int(pl[j]), float(d[n, j])
            v.identified = bool(v.closest_mm <= ID_RADIUS_MM and v.closest_label == lab)
            same = np.flatnonzero(pl == lab)
            if len(same):
                v.loc_error_mm = float(d[n, same].min())
        if v.detected:
            j = g2p[n]
            v.match_label, v.match_mm = int(pl[j]), float(d[n, j])
        verts.append(v)
    said = [c.extra.get("recovered") for c in pred]
    preds = [PredictionScore(int(pl[j]), tuple(float(c) for c in px[j]),
                             int(gl[p2g[j]]) if j in p2g else None,
                             float(d[p2g[j], j]) if j in p2g else None,
                             bool(said[j]) if isinstance(said[j], bool) else None) for j in range(len(pl))]
    return verts, preds


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, sampling) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from a's surface voxels to b's surface, and from b's to a's. Both non-empty."""
    sa, sb = _surface(a), _surface(b)
    da = ndimage.distance_transform_edt(~sb, sampling=sampling)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=sampling)[sb]
    return da, db


def _union_box(boxes, shape) -> tuple[slice, ...]:
    boxes = [b for b in boxes if b is not None]
    return tuple(slice(max(min(b[ax].start for b in boxes) - _BOX_PAD, 0),
                       min(max(b[ax].stop for b in boxes) + _BOX_PAD, shape[ax])) for ax in range(len(shape)))


def overlap(gt_map: np.ndarray, pred_map: np.ndarray, label: int, sampling, boxes=None) -> dict:
    """Dice, IoU, PA, FPD, FND and surface distances of one label.

    Work is restricted to the box around both masks (``boxes``: the {label: box} dicts of
    engine.verse.label_boxes for the two maps, computed once per case); TN, which lies mostly outside,
    follows from the image size."""
    if boxes is None:
        boxes = (label_boxes(gt_map), label_boxes(pred_map))
    gb, pb = boxes[0].get(label), boxes[1].get(label)
    n_all = gt_map.size
    if gb is None and pb is None:
        return {"dice": None, "iou": None, "pa": 1.0, "fpd": 0.0, "fnd": None, "msd_mm": None,
                "hd_mm": None, "hd95_mm": None, "pred_empty": True}
    box = _union_box([gb, pb], gt_map.shape)
    g, p = gt_map[box] == label, pred_map[box] == label
    tp = int(np.count_nonzero(g & p))
    ng, npred = int(np.count_nonzero(g)), int(np.count_nonzero(p))
    fp, fn = npred - tp, ng - tp
    tn = n_all - tp - fp - fn
    out = {"dice": 2 * tp / (ng + npred), "iou": tp / (ng + npred - tp), "pa": (tp + tn) / n_all,
           "fpd": fp / (fp + tn) if fp + tn else 0.0, "fnd": fn / (tp + fn) if tp + fn else None,
           "msd_mm": None, "hd_mm": None, "hd95_mm": None, "pred_empty": npred == 0}
    if ng and npred:
        da, db = surface_distances(g, p, sampling)
        out["msd_mm"] = float(0.5 * (da.mean() + db.mean()))
        out["hd_mm"] = float(max(da.max(), db.max()))
        out["hd95_mm"] = float(max(np.percentile(da, 95), np.percentile(db, 95)))
    return out


def _check_prediction(case: str, gt: Volume, pred: Volume) -> None:
    why = same_geometry(gt.geometry(), pred.geometry())
    if why:
        raise DatasetError(f"case {case}: predicted mask is not on the GT image grid ({why}); "
                           f"masks must have the input image's geometry")


def evaluate_case(case: str, gt_labels: Volume | None, gt_ctd: list[Centroid],
                  pred_labels: Volume | None, pred_ctd: list[Centroid]) -> CaseScore:
    """All metrics of one case.

    gt_labels / pred_labels: VerSe label maps (None: no mask; a missing prediction scores Dice 0);
    the predicted map must have the GT map's geometry (the engine writes input geometry).
    gt_ctd / pred_ctd: centroids, LPS mm. Vertebrae = labels with a GT centroid or GT mask voxels."""
    verts, preds = localisation(case, gt_ctd, pred_ctd)
    score = CaseScore(case, verts, preds)
    if gt_labels is None:
        return score
    gt_boxes = label_boxes(gt_labels.array, f"case {case} GT mask")
    gt_present = list(gt_boxes)
    if pred_labels is not None:
        _check_prediction(case, gt_labels, pred_labels)
        pred_boxes = label_boxes(pred_labels.array, f"case {case} predicted mask")
        pred_map = pred_labels.array
    else:
        pred_boxes, pred_map = {}, np.zeros_like(gt_labels.array)
    by_label = {v.label: v for v in verts}
    for lab in gt_present:
        if lab not in by_label:  # mask voxels but no GT centroid: scored for segmentation only
            v = VertebraScore(case, lab, L.name(lab), L.region(lab), has_centroid=False)
            by_label[lab] = v
            verts.append(v)
            score.notes.append(f"GT mask has {L.name(lab)} but the GT ctd has no centroid for it")
    sampling = tuple(float(s) for s in gt_labels.spacing[::-1])  # array axes are [k, j, i]
    boxes = (gt_boxes, pred_boxes)
    for lab in gt_present:
        v = by_label[lab]
        v.has_mask = True
        v.at_face = box_at_face(gt_boxes[lab], gt_labels.array.shape)
        for k, val in overlap(gt_labels.array, pred_map, lab, sampling, boxes).items():
            setattr(v, k, val)
    verts.sort(key=lambda v: L.ORDER_INDEX[v.label])
    return score


def evaluate_verse_case(gt: VerseCase, pred_labels: Volume | None, pred_ctd: list[Centroid]) -> CaseScore:
    """evaluate_case for a GT case read with engine.verse.read_case."""
    return evaluate_case(gt.id, gt.labels, gt.centroids, pred_labels, pred_ctd)


def prediction_from_result(result: SpineResult) -> tuple[Volume, list[Centroid]]:
    """The label map and centroids `spinert run` would write for a result, without touching disk."""
    g = result.geometry
    vol = Volume(result.label_map(), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]),
                 result.volume_id)
    ctd = [Centroid(int(v.label), tuple(float(c) for c in v.center_lps),
                    {"confidence": float(v.confidence), "recovered": bool(v.recovered)}) for v in result.vertebrae]
    return vol, ctd


def evaluate_result(gt: VerseCase, result: SpineResult) -> CaseScore:
    """Score an in-memory engine result against a GT case (held-out evaluation without files)."""
    vol, ctd = prediction_from_result(result)
    return evaluate_verse_case(gt, vol, ctd)
