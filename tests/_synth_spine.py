"""A tiny synthetic VerSe-style folder for training tests: bright ellipsoid 'vertebrae' stacked along z."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_case(folder: Path, case_id: str, labels=(20, 21, 22), seed: int = 0, shape=(90, 60, 60)) -> None:
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape  # array [k, j, i] of an LPS image: k = superior->inferior after flipping below
    ct = rng.normal(0, 20, size=shape).astype(np.float32) - 50
    lab = np.zeros(shape, np.uint8)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    step = nz // (len(labels) + 1)
    for n, v in enumerate(labels):
        cz, cy, cx = step * (n + 1), ny / 2 + rng.uniform(-3, 3), nx / 2 + rng.uniform(-3, 3)
        r = ((z - cz) / (step * 0.38)) ** 2 + ((y - cy) / 14) ** 2 + ((x - cx) / 18) ** 2
        inside = r <= 1
        lab[inside] = v
        ct[inside] = 700 + rng.normal(0, 30, size=int(inside.sum()))
    for arr, suffix in ((ct.astype(np.int16), "_ct.nii.gz"), (lab, "_seg-vert_msk.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(img, str(folder / f"{case_id}{suffix}"))


def make_folder(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        write_case(folder, f"synth-{s:02d}", seed=s)
    return folder
