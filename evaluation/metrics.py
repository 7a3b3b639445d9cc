"""VerSe-style metrics: localisation, identification, labelling (seed 002) and per-vertebra overlap and
surface distances (seed 000). All distances in mm on the images' physical spacing."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from engine import labels as L
from engine.verse import Centroid
from engine.types import Volume

ID_RADIUS_MM = 20.0  # VerSe: a vertebra is identified when the closest prediction is within 20 mm


@dataclass
class VertebraScore:
    case: str
    label: int
    name: str
    region: str
    loc_error_mm: float | None = None  # to the predicted centroid of the same label
    closest_label: int | None = None   # label of the closest predicted centroid (any label)
    closest_mm: float | None = None
    identified: bool = False           # closest prediction has the right label and is within 20 mm
    detected: bool = False             # some prediction within 20 mm
    dice: float | None = None
    iou: float | None = None
    pa: float | None = None
    fpd: float | None = None
    fnd: float | None = None
    msd_mm: float | None = None
    hd_mm: float | None = None
    hd95_mm: float | None = None


@dataclass
class CaseScore:
    case: str
    vertebrae: list[VertebraScore]
    extra: list[int] = field(default_factory=list)  # predicted labels with no GT vertebra within 20 mm
    missing_prediction: bool = False

    @property
    def sequence_correct(self) -> bool:
        return all(v.identified for v in self.vertebrae) and not self.extra

    def to_json(self) -> dict:
        return {"case": self.case, "sequence_correct": self.sequence_correct, "extra": self.extra,
                "missing_prediction": self.missing_prediction, "vertebrae": [asdict(v) for v in self.vertebrae]}


def _points(cs: list[Centroid]) -> tuple[np.ndarray, np.ndarray]:
    lab = np.array([c.label for c in cs], dtype=int)
    xyz = np.array([c.xyz for c in cs], dtype=float).reshape(-1, 3)
    return lab, xyz


def localisation(case: str, gt: list[Centroid], pred: list[Centroid]) -> CaseScore:
    """Match every GT centroid to the predictions (vectorised distance matrix)."""
    gl, gx = _points(gt)
    pl, px = _points(pred)
    d = np.linalg.norm(gx[:, None, :] - px[None, :, :], axis=-1) if len(pl) else np.zeros((len(gl), 0))
    scores = []
    for n, lab in enumerate(gl):
        v = VertebraScore(case, int(lab), L.name(lab), L.region(lab))
        if d.shape[1]:
            j = int(np.argmin(d[n]))
            v.closest_label, v.closest_mm = int(pl[j]), float(d[n, j])
            v.detected = bool(v.closest_mm <= ID_RADIUS_MM)
            v.identified = bool(v.detected and v.closest_label == int(lab))
            same = np.flatnonzero(pl == lab)
            if len(same):
                v.loc_error_mm = float(d[n, same].min())
        scores.append(v)
    near = d.min(axis=0) <= ID_RADIUS_MM if d.shape[0] else np.zeros(len(pl), bool)
    extra = [int(lab) for lab in pl[~near]]
    return CaseScore(case, scores, extra)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, sampling) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from a's surface voxels to b's surface, and from b's to a's."""
    sa, sb = _surface(a), _surface(b)
    da = ndimage.distance_transform_edt(~sb, sampling=sampling)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=sampling)[sb]
    return da, db


def overlap(gt_map: np.ndarray, pred_map: np.ndarray, label: int, sampling) -> dict:
    """Dice, IoU, PA, FPD, FND and surface distances of one label; work restricted to its bounding box."""
    g, p = gt_map == label, pred_map == label
    tp = int(np.count_nonzero(g & p))
    ng, npred = int(np.count_nonzero(g)), int(np.count_nonzero(p))
    fp, fn = npred - tp, ng - tp
    tn = g.size - tp - fp - fn
    out = {"dice": 2 * tp / (ng + npred) if ng + npred else 1.0,
           "iou": tp / (ng + npred - tp) if ng + npred - tp else 1.0,
           "pa": (tp + tn) / g.size, "fpd": fp / (fp + tn) if fp + tn else 0.0,
           "fnd": fn / (tp + fn) if tp + fn else 0.0,
           "msd_mm": None, "hd_mm": None, "hd95_mm": None}
    if ng == 0 or npred == 0:
        return out  # distances undefined: reported as null, not as a number
    box = ndimage.find_objects((g | p).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)  # room for the surface at the box edge
    da, db = surface_distances(g[box], p[box], sampling)
    out["msd_mm"] = float(0.5 * (da.mean() + db.mean()))
    out["hd_mm"] = float(max(da.max(), db.max()))
    out["hd95_mm"] = float(max(np.percentile(da, 95), np.percentile(db, 95)))
    return out


def evaluate_case(case: str, gt_labels: Volume | None, gt_ctd: list[Centroid],
                  pred_labels: Volume | None, pred_ctd: list[Centroid]) -> CaseScore:
    """All metrics of one case. Masks must share the GT geometry (the engine writes input geometry)."""
    score = localisation(case, gt_ctd, pred_ctd)
    if gt_labels is None:
        return score
    sampling = tuple(float(s) for s in gt_labels.spacing[::-1])  # array axes are [k, j, i]
    pred_map = pred_labels.array if pred_labels is not None else np.zeros_like(gt_labels.array)
    if pred_map.shape != gt_labels.array.shape:
        from engine.errors import DatasetError
        raise DatasetError(f"case {case}: predicted mask size {pred_map.shape[::-1]} != GT size "
                           f"{gt_labels.array.shape[::-1]} (masks must be on the input grid)")
    present = set(np.unique(gt_labels.array).tolist()) - {0}
    for v in score.vertebrae:
        if v.label in present:
            for k, val in overlap(gt_labels.array, pred_map, v.label, sampling).items():
                setattr(v, k, val)
    return score
