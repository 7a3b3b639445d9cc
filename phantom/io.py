"""Writing a phantom case as VerSe-style files."""
from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from engine.errors import OutputExistsError, SpinertError
from engine.preprocess import volume_to_image
from phantom.generator import Case


def case_paths(case_id: str, out_dir: Path) -> dict[str, Path]:
    return {
        "ct": out_dir / f"{case_id}_ct.nii.gz",
        "seg": out_dir / f"{case_id}_seg-vert_msk.nii.gz",
        "ctd": out_dir / f"{case_id}_ctd.json",
        "meta": out_dir / f"{case_id}_meta.json",
    }


def write_case(case: Case, out_dir, overwrite: bool = False, meta: bool = True) -> dict[str, Path]:
    """Write ``<id>_ct.nii.gz`` (int16 HU), ``<id>_seg-vert_msk.nii.gz`` (uint8 VerSe IDs), ``<id>_ctd.json``
    (list of {"label", "X", "Y", "Z"} LPS mm) and, unless ``meta=False``, ``<id>_meta.json`` (what was drawn).

    Raises OutputExistsError if any of them exists and ``overwrite`` is False (nothing is written then).
    """
    out = Path(out_dir)
    paths = case_paths(case.case_id, out)
    if not meta:
        paths.pop("meta")
    if not overwrite:
        existing = [p.name for p in paths.values() if p.exists()]
        if existing:
            raise OutputExistsError(f"{out}: {', '.join(existing)} already exist(s); use --overwrite to replace")
    try:
        out.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume_to_image(case.ct), str(paths["ct"]), useCompression=True)
        sitk.WriteImage(volume_to_image(case.labels), str(paths["seg"]), useCompression=True)
        paths["ctd"].write_text(json.dumps(case.centroids, indent=1))
        if meta:
            paths["meta"].write_text(json.dumps(case.meta, indent=1, default=str))
    except (OSError, RuntimeError) as exc:
        raise SpinertError(f"cannot write phantom case to {out}: {exc}") from None
    return paths
