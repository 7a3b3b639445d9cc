"""VerSe-style dataset folders: `<id>_ct.nii.gz`, `<id>_seg-vert_msk.nii.gz`, `<id>_ctd.json`.

Images load lazily (a folder of 100 CTs lists instantly); geometry agreement between CT and mask is
checked from the headers alone. Unknown files in a folder (e.g. `<id>_labels-info.json`) are ignored.
Every problem with a folder or a case is a DatasetError naming the file and what is wrong with it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from engine import labels as L
from engine.errors import DatasetError, InputError, OutputExistsError
from engine.io import read_volume
from engine.types import Volume

SUFFIX = {"ct": "_ct.nii.gz", "msk": "_seg-vert_msk.nii.gz", "ctd": "_ctd.json"}
KINDS = tuple(SUFFIX)
GEOMETRY_TOL = 1e-3  # mm / cosine: header round-off, not a real mismatch


@dataclass(frozen=True)
class Centroid:
    """One vertebra centre: VerSe label and LPS mm. ``extra`` keeps any other keys of the JSON object."""

    label: int
    xyz: tuple[float, float, float]  # LPS mm
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return L.name(self.label)

    def to_json(self) -> dict:
        return {"label": int(self.label), "X": float(self.xyz[0]), "Y": float(self.xyz[1]),
                "Z": float(self.xyz[2]), **self.extra}


def parse_ctd(data, source: str = "centroids", allow_duplicates: bool = False) -> list[Centroid]:
    """Validate an already-loaded ctd JSON value (a list of {label, X, Y, Z} objects).

    Ground truth must name each label once; a prediction may repeat one (allow_duplicates): that is
    an error to score, not a broken file."""
    if not isinstance(data, list):
        raise DatasetError(f"{source}: expected a JSON list of {{label, X, Y, Z}} objects, "
                           f"got a JSON {type(data).__name__}")
    out: list[Centroid] = []
    seen: set[int] = set()
    for n, item in enumerate(data):
        # VerSe's own files start with a {"direction": [...]} entry: skip such header objects.
        if isinstance(item, dict) and "label" not in item and "direction" in item:
            continue
        if not isinstance(item, dict) or not {"label", "X", "Y", "Z"} <= item.keys():
            raise DatasetError(f"{source}: entry {n} is not a {{label, X, Y, Z}} object ({str(item)[:60]})")
        try:
            lab_f = float(item["label"])
            xyz = (float(item["X"]), float(item["Y"]), float(item["Z"]))
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: entry {n} has a non-numeric label or coordinate") from None
        if isinstance(item["label"], bool) or lab_f != int(lab_f) or int(lab_f) not in L.NAMES:
            raise DatasetError(f"{source}: entry {n} has label {item['label']!r}, not a VerSe vertebra ID "
                               f"(1-28, see engine/labels.py)")
        if not all(math.isfinite(c) for c in xyz):
            raise DatasetError(f"{source}: entry {n} (label {int(lab_f)}) has a non-finite coordinate")
        lab = int(lab_f)
        if lab in seen and not allow_duplicates:
            raise DatasetError(f"{source}: label {lab} ({L.name(lab)}) appears twice")
        seen.add(lab)
        extra = {k: v for k, v in item.items() if k not in ("label", "X", "Y", "Z")}
        out.append(Centroid(lab, xyz, extra))
    return out


def read_ctd(path: str | os.PathLike, allow_duplicates: bool = False) -> list[Centroid]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such centroid file") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{p}: not valid JSON ({exc})") from None
    return parse_ctd(data, str(p), allow_duplicates)


def write_ctd(path: str | os.PathLike, centroids: Iterable[Centroid], overwrite: bool = False) -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} exists (use --overwrite to replace it)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    tmp.write_text(json.dumps([c.to_json() for c in centroids], indent=1))
    tmp.replace(p)  # never leave a half-written ctd behind
    return p


def centroids_from_labels(vol: Volume) -> list[Centroid]:
    """Centroid of every label in a label map (mean voxel index -> LPS mm), in craniocaudal order."""
    arr = vol.array
    out = []
    for lab, box in label_boxes(arr, str(vol.name)).items():
        # per label inside its own box: a few small arrays instead of full-volume index grids
        kji = np.argwhere(arr[box] == lab).mean(axis=0) + [s.start for s in box]
        out.append(Centroid(lab, tuple(float(c) for c in vol.index_to_lps(kji[::-1]))))
    return sorted(out, key=lambda c: L.ORDER_INDEX[c.label])


def label_boxes(arr: np.ndarray, source: str = "label map") -> dict[int, tuple[slice, ...]]:
    """{label: bounding box (array slices)} of every non-zero value of a label map, checked against the
    VerSe contract set. One pass of ndimage.find_objects; the boxes let callers work on small crops."""
    from scipy import ndimage
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise DatasetError(f"{source}: label map holds non-integer values")
        arr = arr.astype(np.int32)
    elif arr.dtype.kind == "b":
        arr = arr.view(np.uint8)
    elif arr.dtype.kind not in "iu":
        raise DatasetError(f"{source}: label map has dtype {arr.dtype}, expected integers")
    lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
    if lo < 0 or hi > max(L.NAMES):
        bad = np.unique(arr[(arr < 0) | (arr > max(L.NAMES))])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise DatasetError(f"{source}: label values {bad[:8].tolist()}{more} are not VerSe IDs (1-28)")
    if arr.dtype.itemsize > 4 or arr.dtype == np.uint32:
        arr = arr.astype(np.int32)  # find_objects wants a native int type; values are <= 28 here
    boxes = {i + 1: b for i, b in enumerate(ndimage.find_objects(arr)) if b is not None}
    bad = [v for v in boxes if v not in L.NAMES]
    if bad:
        raise DatasetError(f"{source}: label values {bad} are not VerSe IDs (1-28)")
    return boxes


def label_values(arr: np.ndarray, source: str = "label map") -> list[int]:
    """Non-zero values of a label map, checked against the VerSe contract set."""
    return list(label_boxes(arr, source))


def _header(path: Path) -> sitk.ImageFileReader:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError:
        raise DatasetError(f"{path}: not a readable image") from None
    return r


def same_geometry(a: dict, b: dict) -> str | None:
    """None when two geometries (size, spacing, origin, direction) agree, else what differs."""
    if list(a["size"]) != list(b["size"]):
        return f"size {list(a['size'])} vs {list(b['size'])}"
    for key in ("spacing", "origin", "direction"):
        va, vb = np.asarray(a[key], float), np.asarray(b[key], float)
        if not np.allclose(va, vb, atol=GEOMETRY_TOL):
            return f"{key} {va.round(3).tolist()} vs {vb.round(3).tolist()}"
    return None


def _header_geometry(r: sitk.ImageFileReader) -> dict:
    return {"size": r.GetSize(), "spacing": r.GetSpacing(), "origin": r.GetOrigin(),
            "direction": r.GetDirection()}


@dataclass
class VerseCase:
    """One case of a VerSe-style folder. ``ct`` / ``labels`` load on first access (None if the file is
    absent); ``centroids`` is [] when the case has no ctd file."""

    id: str
    folder: Path

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.id}{SUFFIX[kind]}"

    def has(self, kind: str) -> bool:
        return self.path(kind).is_file()

    def _read(self, kind: str) -> Volume | None:
        if not self.has(kind):
            return None
        try:
            return read_volume(self.path(kind), self.id)
        except InputError as exc:
            raise DatasetError(str(exc)) from None

    @cached_property
    def ct(self) -> Volume | None:
        return self._read("ct")

    @cached_property
    def labels(self) -> Volume | None:
        vol = self._read("msk")
        if vol is not None:
            label_values(vol.array, str(self.path("msk")))
        return vol

    @cached_property
    def centroids(self) -> list[Centroid]:
        return read_ctd(self.path("ctd")) if self.has("ctd") else []

    def check_geometry(self) -> None:
        """CT and mask must share size, spacing, origin and direction (checked from the headers)."""
        if not (self.has("ct") and self.has("msk")):
            return
        why = same_geometry(_header_geometry(_header(self.path("ct"))),
                            _header_geometry(_header(self.path("msk"))))
        if why:
            raise DatasetError(f"case {self.id}: CT and mask geometry differ ({why})")


def _case_ids(folder: Path) -> set[str]:
    ids: set[str] = set()
    for suf in SUFFIX.values():
        ids.update(p.name[: -len(suf)] for p in folder.glob(f"*{suf}") if p.is_file())
    return ids


def list_cases(folder: str | os.PathLike, require: tuple[str, ...] = ("ct", "msk", "ctd")) -> list[str]:
    """Case IDs in a folder, sorted; every case must have every ``require``d file ("ct", "msk", "ctd")."""
    f = Path(folder)
    unknown = set(require) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown file kinds {sorted(unknown)}; expected some of {KINDS}")
    if not f.exists():
        raise DatasetError(f"{f}: no such folder")
    if not f.is_dir():
        raise DatasetError(f"{f}: not a folder")
    ids = _case_ids(f)
    if not ids:
        raise DatasetError(f"{f}: no VerSe-style cases (<id>_ct.nii.gz, <id>_seg-vert_msk.nii.gz, <id>_ctd.json)")
    for cid in sorted(ids):
        missing = [cid + SUFFIX[k] for k in require if not (f / f"{cid}{SUFFIX[k]}").is_file()]
        if missing:
            raise DatasetError(f"{f}: case {cid} lacks {', '.join(missing)}")
    return sorted(ids)


def read_case(folder: str | os.PathLike, case_id: str, require: tuple[str, ...] = (),
              check: bool = True) -> VerseCase:
    """A lazily loaded case; ``require``d files must exist; ``check`` compares CT and mask headers."""
    f = Path(folder)
    if not f.is_dir():
        raise DatasetError(f"{f}: no such folder")
    case = VerseCase(case_id, f)
    if not any(case.has(k) for k in KINDS):
        raise DatasetError(f"{f}: no files for case {case_id}")
    missing = [case.path(k).name for k in require if not case.has(k)]
    if missing:
        raise DatasetError(f"{f}: case {case_id} lacks {', '.join(missing)}")
    if check:
        case.check_geometry()
    return case


def read_folder(folder: str | os.PathLike, require: tuple[str, ...] = ("ct", "msk", "ctd"),
                check: bool = True) -> list[VerseCase]:
    """Every case of a folder (lazy), validated as list_cases + read_case do."""
    return [read_case(folder, cid, require=require, check=check) for cid in list_cases(folder, require)]


@dataclass
class CanonicalCase:
    """One case in the cascade's canonical frame (engine.preprocess: isotropic, LPI): CT in HU, label map
    on the same grid, and per-label centres as [k, j, i] voxel indices (mean voxel index, as ctd files)."""

    case_id: str
    iso: np.ndarray
    labels: np.ndarray
    centers: dict[int, np.ndarray]
    spacing: float


def load_canonical(folder: str | os.PathLike, case_id: str, spacing: float = 1.0) -> CanonicalCase:
    """Read ``<id>_ct`` and ``<id>_seg-vert_msk`` and bring both to the canonical frame (what the models see).

    Centres are recomputed on the canonical grid rather than read from the ctd file, so they match the
    label map exactly whatever the stored orientation. DatasetError for unreadable or mismatched files.
    """
    from scipy import ndimage

    from engine.preprocess import labels_to_canonical, to_canonical

    root = Path(folder)
    try:
        ct = read_volume(root / f"{case_id}{SUFFIX['ct']}")
        seg = read_volume(root / f"{case_id}{SUFFIX['msk']}")
    except InputError as exc:
        raise DatasetError(str(exc)) from None
    if ct.size != seg.size:
        raise DatasetError(f"{root}: case {case_id}: CT size {ct.size} != label map size {seg.size}")
    canon = to_canonical(ct, spacing)
    seg.array = seg.array.astype(np.uint8)
    lab = labels_to_canonical(seg, canon)
    ids = [int(v) for v in np.unique(lab) if v != 0]
    centers: dict[int, np.ndarray] = {}
    if ids:
        com = ndimage.center_of_mass(np.ones_like(lab, dtype=np.uint8), lab, ids)
        centers = {i: np.asarray(c, dtype=np.float64) for i, c in zip(ids, com)}
    return CanonicalCase(case_id, canon.array, lab, centers, float(spacing))
