"""CT and label-map I/O through SimpleITK: NIfTI, NRRD, MHA files and DICOM series folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine.errors import InputError, OutputExistsError
from engine.types import Volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_name(path: str | os.PathLike) -> str:
    """The <name> of the output files: file stem without image suffixes, or the series folder's name."""
    p = Path(path)
    if p.is_dir():
        return p.resolve().name
    n = p.name
    for suf in IMAGE_SUFFIXES + (".dcm",):
        if n.lower().endswith(suf):
            return n[: -len(suf)]
    return p.stem


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    # Several series in one folder: take the one with the most slices (the CT, not a scout).
    files = max((reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids), key=len)
    reader.SetFileNames(files)
    return reader.Execute()


def read_image(path: str | os.PathLike) -> sitk.Image:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    try:
        img = _read_dicom_series(p) if p.is_dir() else sitk.ReadImage(str(p))
    except InputError:
        raise
    except RuntimeError as exc:  # SimpleITK reports every reader failure as RuntimeError
        # SimpleITK's first lines are source locations; the useful reason is the last non-empty line.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "sitk" not in ln and ".cxx" not in ln]
        why = lines[-1][:160] if lines else "not a readable NIfTI/NRRD/MHA/DICOM image"
        raise InputError(f"{p}: cannot read image ({why})") from None
    if img.GetDimension() != 3:
        raise InputError(f"{p}: expected a 3-D image, got {img.GetDimension()}-D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components")
    return img


def read_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    img = read_image(path)
    return Volume(sitk.GetArrayFromImage(img), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                  tuple(img.GetDirection()), name or volume_name(path))


def write_volume(vol: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} exists (use --overwrite to replace it)")
    p.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing(tuple(float(s) for s in vol.spacing))
    img.SetOrigin(tuple(float(o) for o in vol.origin))
    img.SetDirection(tuple(float(d) for d in vol.direction))
    sitk.WriteImage(img, str(p), True)  # compressed
    return p
