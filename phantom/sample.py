"""The sample CT shipped for `spinert demo`: spinert/data/sample_{ct.nii.gz,seg-vert_msk.nii.gz,ctd.json}.

A default-profile phantom, seed DEMO_SEED, field of view forced to T10...sacrum, 1 mm voxels, stored RAS.
Rebuild with ``python -m phantom.sample [--overwrite]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine.errors import OutputExistsError
from engine.preprocess import image_to_volume, volume_to_image
from phantom import DEMO_SEED
from phantom.generator import Case, generate, label_centroids

DEMO_SPAN = (17, 26)  # T10 ... S (VerSe IDs)


DEMO_SPACING = (1.0, 1.0, 1.5)
DEMO_CROP_MM = (140.0, 160.0)  # in-plane (left-right, anterior-posterior) around the spine: keeps the file small


def demo_case() -> Case:
    case = generate(DEMO_SEED, "default", orientation="RAS", span=DEMO_SPAN, spacing=DEMO_SPACING)
    ct, seg = crop_around_spine(volume_to_image(case.ct), volume_to_image(case.labels), DEMO_CROP_MM)
    return Case("sample", image_to_volume(ct, "sample"), image_to_volume(seg, "sample"), label_centroids(seg),
                dict(case.meta, size=list(ct.GetSize()), cropped_mm=list(DEMO_CROP_MM)))


def crop_around_spine(ct: sitk.Image, seg: sitk.Image, crop_mm) -> tuple[sitk.Image, sitk.Image]:
    """Crop the in-plane (first two, axial storage) axes to ``crop_mm`` around the labelled voxels' centre,
    moving nearer the posterior so the whole neural arch stays in. Geometry stays exact (RegionOfInterest)."""
    arr = sitk.GetArrayViewFromImage(seg)
    k, j, i = np.nonzero(arr)
    size = list(ct.GetSize())
    index = [0, 0, 0]
    sp = ct.GetSpacing()
    for ax, c in ((0, i.mean()), (1, j.mean())):
        n = min(size[ax], int(round(crop_mm[ax] / sp[ax])))
        start = int(round(c - n / 2))
        index[ax] = int(np.clip(start, 0, size[ax] - n))
        size[ax] = n
    return sitk.RegionOfInterest(ct, size, index), sitk.RegionOfInterest(seg, size, index)


def write_sample(out_dir: Path, overwrite: bool = False) -> list[Path]:
    case = demo_case()
    paths = [out_dir / "sample_ct.nii.gz", out_dir / "sample_seg-vert_msk.nii.gz", out_dir / "sample_ctd.json"]
    if not overwrite and any(p.exists() for p in paths):
        raise OutputExistsError(f"{out_dir}: sample files exist; use --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume_to_image(case.ct), str(paths[0]), useCompression=True)
    sitk.WriteImage(volume_to_image(case.labels), str(paths[1]), useCompression=True)
    paths[2].write_text(json.dumps(case.centroids, indent=1))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "spinert" / "data"))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    for p in write_sample(Path(args.out), args.overwrite):
        print(p, p.stat().st_size // 1024, "KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
