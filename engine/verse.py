"""VerSe-style dataset folders: `<id>_ct.nii.gz`, `<id>_seg-vert_msk.nii.gz`, `<id>_ctd.json`.

Images load lazily (a folder of 100 CTs lists instantly); geometry agreement between CT and mask is
checked from the headers alone.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine import labels as L
from engine.errors import DatasetError, OutputExistsError
from engine.io import read_volume
from engine.types import Volume

SUFFIX = {"ct": "_ct.nii.gz", "msk": "_seg-vert_msk.nii.gz", "ctd": "_ctd.json"}
GEOMETRY_TOL = 1e-3  # mm / cosine: header round-off, not a real mismatch


@dataclass(frozen=True)
class Centroid:
    label: int
    xyz: tuple[float, float, float]  # LPS mm
    extra: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        return {"label": int(self.label), "X": float(self.xyz[0]), "Y": float(self.xyz[1]),
                "Z": float(self.xyz[2]), **self.extra}


def read_ctd(path: str | os.PathLike) -> list[Centroid]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such centroid file") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list of {{label, X, Y, Z}} objects")
    out = []
    for n, item in enumerate(data):
        # VerSe's own files start with a {"direction": [...]} entry: skip such header objects.
        if isinstance(item, dict) and "label" not in item and "direction" in item:
            continue
        if not isinstance(item, dict) or not {"label", "X", "Y", "Z"} <= item.keys():
            raise DatasetError(f"{p}: entry {n} is not a {{label, X, Y, Z}} object")
        try:
            lab = int(item["label"])
            xyz = (float(item["X"]), float(item["Y"]), float(item["Z"]))
        except (TypeError, ValueError):
            raise DatasetError(f"{p}: entry {n} has a non-numeric label or coordinate") from None
        if lab not in L.NAMES:
            raise DatasetError(f"{p}: entry {n} has label {lab}, not a VerSe vertebra ID")
        extra = {k: v for k, v in item.items() if k not in ("label", "X", "Y", "Z")}
        out.append(Centroid(lab, xyz, extra))
    return out


def write_ctd(path: str | os.PathLike, centroids: list[Centroid], overwrite: bool = False) -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} exists (use --overwrite to replace it)")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps([c.to_json() for c in centroids], indent=1))
    return p


def _header(path: Path) -> sitk.ImageFileReader:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError:
        raise DatasetError(f"{path}: not a readable image") from None
    return r


@dataclass
class VerseCase:
    id: str
    folder: Path

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.id}{SUFFIX[kind]}"

    def has(self, kind: str) -> bool:
        return self.path(kind).is_file()

    @cached_property
    def ct(self) -> Volume:
        return read_volume(self.path("ct"), self.id)

    @cached_property
    def labels(self) -> Volume:
        vol = read_volume(self.path("msk"), self.id)
        bad = sorted(set(np.unique(vol.array).tolist()) - set(L.NAMES) - {0})
        if bad:
            raise DatasetError(f"{self.path('msk')}: label values {bad} are not VerSe IDs")
        return vol

    @cached_property
    def centroids(self) -> list[Centroid]:
        return read_ctd(self.path("ctd"))

    def check_geometry(self) -> None:
        """CT and mask must share size, spacing, origin and direction."""
        if not (self.has("ct") and self.has("msk")):
            return
        a, b = _header(self.path("ct")), _header(self.path("msk"))
        if a.GetSize() != b.GetSize():
            raise DatasetError(f"case {self.id}: CT size {a.GetSize()} != mask size {b.GetSize()}")
        for what in ("GetSpacing", "GetOrigin", "GetDirection"):
            va, vb = np.asarray(getattr(a, what)()), np.asarray(getattr(b, what)())
            if not np.allclose(va, vb, atol=GEOMETRY_TOL):
                raise DatasetError(f"case {self.id}: CT and mask differ in {what[3:].lower()} "
                                   f"({va.round(3).tolist()} vs {vb.round(3).tolist()})")


def list_cases(folder: str | os.PathLike, require: tuple[str, ...] = ("ct", "msk", "ctd")) -> list[str]:
    """Case IDs in a folder, sorted; every case must have every ``require``d file."""
    f = Path(folder)
    if not f.is_dir():
        raise DatasetError(f"{f}: no such folder")
    ids: set[str] = set()
    for kind, suf in SUFFIX.items():
        ids.update(p.name[: -len(suf)] for p in f.glob(f"*{suf}"))
    if not ids:
        raise DatasetError(f"{f}: no VerSe-style cases (<id>_ct.nii.gz, <id>_seg-vert_msk.nii.gz, <id>_ctd.json)")
    for cid in sorted(ids):
        missing = [SUFFIX[k] for k in require if not (f / f"{cid}{SUFFIX[k]}").is_file()]
        if missing:
            raise DatasetError(f"{f}: case {cid} lacks {', '.join(cid + m for m in missing)}")
    return sorted(ids)


def read_case(folder: str | os.PathLike, case_id: str, check: bool = True) -> VerseCase:
    case = VerseCase(case_id, Path(folder))
    if not any(case.has(k) for k in SUFFIX):
        raise DatasetError(f"{folder}: no files for case {case_id}")
    if check:
        case.check_geometry()
    return case
