"""VerSe-style training folders -> canonical cases (isotropic LPI CT + label map + per-vertebra centres).

A folder holds ``<id>_ct.nii.gz`` and ``<id>_seg-vert_msk.nii.gz`` (``<id>_ctd.json`` optional: centres are
recomputed in the canonical frame as the mean voxel index of each label, which is how the ctd files are defined).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import verse
from engine.errors import DatasetError
from engine.verse import CanonicalCase as Case  # noqa: F401 - the training loops' name for it

CT_SUFFIX = verse.SUFFIX["ct"]
SEG_SUFFIX = verse.SUFFIX["msk"]


def list_cases(folder) -> list[str]:
    """Case ids of a VerSe-style folder (sorted); DatasetError if none or if a CT lacks its label map."""
    return verse.list_cases(folder, require=("ct", "msk"))


def load_case(folder, case_id: str, spacing: float = 1.0) -> Case:
    return verse.load_canonical(folder, case_id, spacing)


@dataclass(frozen=True)
class Split:
    """Training and validation cases, each with the folder they are read from."""

    train_dir: Path
    train: list[str]
    val_dir: Path
    val: list[str]


def training_split(args) -> Split:
    """The cases a ``spinert train`` run trains and validates on: the last ``--val-frac`` of ``--data``
    (after ``--max-cases``), or every case of ``--val-data``, a folder of its own. A few hard cases at
    the end of --data validate noisily (session 13: 5 labeller chains swung between 60 and 98 %); a
    generated validation folder can be as large as needed. Its ids must be new: caches are keyed by id."""
    ids = list_cases(args.data)
    if getattr(args, "max_cases", None):
        ids = ids[: args.max_cases]
    val_dir = getattr(args, "val_data", None)
    if not val_dir:
        tr, va = split_ids(ids, args.val_frac)
        return Split(Path(args.data), tr, Path(args.data), va)
    va = list_cases(val_dir)
    both = sorted(set(ids) & set(va))
    if both:
        raise DatasetError(f"--val-data {val_dir} repeats {len(both)} case id(s) of --data (first: {both[0]}): "
                           f"validation cases must be new ones")
    return Split(Path(args.data), ids, Path(val_dir), va)


def split_ids(ids: list[str], val_frac: float = 0.15, min_val: int = 1) -> tuple[list[str], list[str]]:
    """Deterministic split by case (the last cases in sorted order go to validation)."""
    if len(ids) < 2:
        return list(ids), list(ids)  # one case: validate on the training case (smoke runs only)
    n_val = max(min_val, int(round(len(ids) * val_frac)))
    n_val = min(n_val, len(ids) - 1)
    return list(ids[:-n_val]), list(ids[-n_val:])


def unpack_mask(z) -> np.ndarray:
    """The bool mask of a cached crop (.npz written with ``mask=np.packbits(m), shape=m.shape``)."""
    shape = tuple(int(v) for v in z["shape"])
    return np.unpackbits(z["mask"])[: int(np.prod(shape))].reshape(shape).astype(bool)


def cut_flag(z) -> bool | None:
    """Whether a cached vertebra is cut by the field of view (None: cached before the flag existed)."""
    return bool(z["cut"]) if "cut" in z.files else None


def border_touching(labels: np.ndarray) -> set[int]:
    """Labels that touch the volume border (cut by the field of view)."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    return {int(v) for f in faces for v in np.unique(f) if v != 0}
