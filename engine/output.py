"""Contract files of one result (DESIGN.md "Files"): label map, centroids JSON, full result JSON.

    <name>_seg-vert_msk.nii.gz   uint8 VerSe label map, exactly the input image's geometry
    <name>_ctd.json              [{"label", "X", "Y", "Z", "name", "confidence"}], LPS mm
    <name>_result.json           vertebrae, warnings, timings, backend, precision, models, geometry

Nothing is written unless every target may be: existing files need overwrite=True. Each file is written
to a temporary name in the same folder and renamed, so a crash never leaves a half-written contract file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk

from engine.errors import OutputExistsError, SpinertError
from engine.types import SpineResult

SCHEMA = "spinert.resultfile/1"
SUFFIXES = {"mask": "_seg-vert_msk.nii.gz", "ctd": "_ctd.json", "result": "_result.json"}


def output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    d = Path(out_dir)
    return {k: d / f"{name}{suf}" for k, suf in SUFFIXES.items()}


def check_targets(paths: Iterable[Path], overwrite: bool = False) -> None:
    """OutputExistsError naming the existing file(s) unless ``overwrite``; also refuses folders in the way."""
    paths = list(paths)
    for p in paths:
        if p.is_dir():
            raise OutputExistsError(f"{p} is a folder; cannot write a file there")
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]} exists{more}; use --overwrite (overwrite=True) to replace")


def ctd_json(result: SpineResult) -> list[dict[str, Any]]:
    return [v.to_json() for v in result.vertebrae]


def vertebra_record(v) -> dict[str, Any]:
    voxels = int(v.mask.sum()) if v.mask is not None else 0
    return {"label": int(v.label), "name": v.name,
            "center_lps_mm": [round(float(c), 4) for c in v.center_lps],
            "confidence": round(float(v.confidence), 6), "recovered": bool(v.recovered), "voxels": voxels,
            "offset_ijk": [int(o) for o in v.offset_ijk], "shape_ijk": [int(s) for s in v.shape_ijk],
            "scores": {str(k): float(p) for k, p in sorted(v.scores.items())}}


def result_json(result: SpineResult, source: str | None = None) -> dict[str, Any]:
    from spinert import __version__

    sp = np.asarray(result.geometry["spacing"], dtype=np.float64)
    doc = {"schema": SCHEMA, "spinert_version": __version__, "volume_id": result.volume_id,
           "geometry": result.geometry, "backend": result.backend, "precision": result.precision,
           "models": result.models, "warnings": list(result.warnings),
           "timings_ms": {k: round(float(v), 3) for k, v in result.timings_ms.items()},
           "vertebrae": [], "info": _jsonable(result.info)}
    if source is not None:
        doc["source"] = str(source)
    for v in result.vertebrae:
        rec = vertebra_record(v)
        rec["volume_mm3"] = round(rec["voxels"] * float(np.prod(sp)), 2)
        doc["vertebrae"].append(rec)
    return doc


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def label_image(result: SpineResult) -> sitk.Image:
    """The uint8 label map with exactly the input geometry (size, spacing, origin, direction)."""
    img = sitk.GetImageFromArray(result.label_map().astype(np.uint8))
    g = result.geometry
    img.SetSpacing(tuple(float(s) for s in g["spacing"]))
    img.SetOrigin(tuple(float(o) for o in g["origin"]))
    img.SetDirection(tuple(float(d) for d in g["direction"]))
    return img


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_result(result: SpineResult, out_dir: str | os.PathLike, name: str | None = None,
                 overwrite: bool = False, source: str | None = None) -> dict[str, Path]:
    """Write the three contract files of ``result`` into ``out_dir``; returns their paths."""
    name = name or result.volume_id
    paths = output_paths(out_dir, name)
    check_targets(paths.values(), overwrite)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpinertError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    try:
        tmp = paths["mask"].with_name(f".{name}.partial{SUFFIXES['mask']}")
        sitk.WriteImage(label_image(result), str(tmp), True)
        os.replace(tmp, paths["mask"])
        _atomic_text(paths["ctd"], json.dumps(ctd_json(result), indent=2) + "\n")
        _atomic_text(paths["result"], json.dumps(result_json(result, source), indent=2) + "\n")
    except (OSError, RuntimeError) as exc:
        raise SpinertError(f"cannot write results into {out_dir}: {exc}") from None
    return paths
