"""VerSe-style training folders -> canonical cases (isotropic LPI CT + label map + per-vertebra centres).

A folder holds ``<id>_ct.nii.gz`` and ``<id>_seg-vert_msk.nii.gz`` (``<id>_ctd.json`` optional: centres are
recomputed in the canonical frame as the mean voxel index of each label, which is how the ctd files are defined).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.errors import DatasetError
from engine.io import read_volume
from engine.preprocess import labels_to_canonical, to_canonical

CT_SUFFIX = "_ct.nii.gz"
SEG_SUFFIX = "_seg-vert_msk.nii.gz"


@dataclass
class Case:
    case_id: str
    iso: np.ndarray  # float32 HU [k, j, i], canonical frame
    labels: np.ndarray  # uint8 VerSe IDs, same grid
    centers: dict[int, np.ndarray]  # VerSe ID -> centre [k, j, i] (float)
    spacing: float


def list_cases(folder: str | Path) -> list[str]:
    """Case ids of a VerSe-style folder (sorted); DatasetError if none or if a CT lacks its label map."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    ids = sorted(p.name[: -len(CT_SUFFIX)] for p in root.glob(f"*{CT_SUFFIX}"))
    if not ids:
        raise DatasetError(f"no '*{CT_SUFFIX}' files in {root}")
    missing = [i for i in ids if not (root / f"{i}{SEG_SUFFIX}").is_file()]
    if missing:
        raise DatasetError(f"{root}: no label map '{missing[0]}{SEG_SUFFIX}' for CT '{missing[0]}{CT_SUFFIX}'"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return ids


def load_case(folder: str | Path, case_id: str, spacing: float = 1.0) -> Case:
    root = Path(folder)
    ct = read_volume(root / f"{case_id}{CT_SUFFIX}")
    seg = read_volume(root / f"{case_id}{SEG_SUFFIX}")
    if ct.size != seg.size:
        raise DatasetError(f"{case_id}: CT size {ct.size} != label map size {seg.size}")
    canon = to_canonical(ct, spacing)
    seg.array = seg.array.astype(np.uint8)
    lab = labels_to_canonical(seg, canon)
    ids = [int(v) for v in np.unique(lab) if v != 0]
    centers = {}
    if ids:
        com = ndimage.center_of_mass(np.ones_like(lab, dtype=np.uint8), lab, ids)
        centers = {i: np.asarray(c, dtype=np.float64) for i, c in zip(ids, com)}
    return Case(case_id, canon.array, lab, centers, spacing)


def split_ids(ids: list[str], val_frac: float = 0.15, min_val: int = 1) -> tuple[list[str], list[str]]:
    """Deterministic split by case (the last cases in sorted order go to validation)."""
    if len(ids) < 2:
        return list(ids), list(ids)  # one case: validate on the training case (smoke runs only)
    n_val = max(min_val, int(round(len(ids) * val_frac)))
    n_val = min(n_val, len(ids) - 1)
    return list(ids[:-n_val]), list(ids[-n_val:])


def border_touching(labels: np.ndarray) -> set[int]:
    """Labels that touch the volume border (cut by the field of view)."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    return {int(v) for f in faces for v in np.unique(f) if v != 0}
