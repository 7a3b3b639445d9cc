"""PNG montages of a CT (+ labels): mid-sagittal through the spine, axial through a vertebra, coronal.

    python -m phantom.preview CT.nii.gz [SEG.nii.gz] -o out.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine.preprocess import image_to_volume, labels_to_canonical, to_canonical


def montage(ct_img: sitk.Image, seg_img: sitk.Image | None, out_png: Path, title: str = "",
            window=(-400, 1200)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = image_to_volume(ct_img)
    canon = to_canonical(vol, spacing=1.0)
    a = canon.array  # [inferior, posterior, left]
    lab = labels_to_canonical(image_to_volume(seg_img), canon) if seg_img is not None else None
    if lab is not None and lab.any():
        kk, jj, ii = np.nonzero(lab)
        i_mid, j_mid = int(np.median(ii)), int(np.median(jj))
        ids = np.unique(lab[lab > 0])
        mid_label = ids[len(ids) // 2]
        k_ax = int(np.median(np.nonzero(lab == mid_label)[0]))
    else:
        i_mid, j_mid, k_ax = a.shape[2] // 2, a.shape[1] // 2, a.shape[0] // 2
    views = [("sagittal", a[:, :, i_mid], None if lab is None else lab[:, :, i_mid]),
             ("coronal", a[:, j_mid, :], None if lab is None else lab[:, j_mid, :]),
             ("axial", a[k_ax], None if lab is None else lab[k_ax])]
    fig, axes = plt.subplots(1, 6 if lab is not None else 3, figsize=(24 if lab is not None else 14, 6))
    for n, (name, img, lb) in enumerate(views):
        ax = axes[n]
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        ax.set_title(f"{name}")
        ax.axis("off")
        if lb is not None:
            ax2 = axes[3 + n]
            ax2.imshow(img, cmap="gray", vmin=-200, vmax=600, interpolation="nearest")
            m = np.ma.masked_where(lb == 0, lb)
            ax2.imshow(m, cmap="tab20", alpha=0.35, vmin=0, vmax=28, interpolation="nearest")
            ax2.set_title(f"{name} + labels")
            ax2.axis("off")
    # The sagittal view is head-up, anterior left (columns run posterior); coronal shows patient left right.
    axes[1].invert_xaxis()
    if lab is not None:
        axes[4].invert_xaxis()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=60)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("ct")
    ap.add_argument("seg", nargs="?")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    seg = sitk.ReadImage(args.seg) if args.seg else None
    montage(sitk.ReadImage(args.ct), seg, Path(args.out), title=Path(args.ct).name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def views(ct_img: sitk.Image, seg_img: sitk.Image | None, level: int | None = None):
    """(sagittal, coronal, axial) 1 mm slices through the spine (through vertebra ``level`` if given)."""
    canon = to_canonical(image_to_volume(ct_img), spacing=1.0)
    a = canon.array
    lab = labels_to_canonical(image_to_volume(seg_img), canon) if seg_img is not None else None
    if lab is not None and lab.any():
        ids = np.unique(lab[lab > 0])
        pick = level if level in ids else ids[len(ids) // 2]
        kk, jj, ii = np.nonzero(lab == pick)
        i_mid, j_mid, k_ax = int(np.median(ii)), int(np.median(jj)), int(np.median(kk))
    else:
        i_mid, j_mid, k_ax = a.shape[2] // 2, a.shape[1] // 2, a.shape[0] // 2
    return a[:, :, i_mid], a[:, j_mid, ::-1], a[k_ax]


def compare(rows: list[tuple[str, sitk.Image, sitk.Image | None, int | None]], out_png: Path,
            window=(-300, 900)) -> None:
    """One row per CT: sagittal, coronal, axial at 1 mm, same window and scale (to compare real vs phantom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 5 * len(rows)), squeeze=False)
    for r, (name, ct, seg, level) in enumerate(rows):
        for c, (vname, img) in enumerate(zip(("sagittal", "coronal", "axial"), views(ct, seg, level))):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], interpolation="bilinear")
            ax.set_title(f"{name}: {vname}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=70)
    plt.close(fig)
