"""The scanner side: metal streaks, point-spread blur, resampling onto the output voxel grid, noise,
and the storage orientation (an exact axis permutation/flip via SimpleITK, no interpolation)."""
from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from phantom.grid import WorkGrid

AXIAL_CODES = tuple(a + b + c for a in "LR" for b in "PA" for c in "SI")
ALL_CODES = tuple(
    "".join(p[i][s] for i, s in zip(range(3), signs))
    for p in itertools.permutations(("LR", "PA", "SI"))
    for signs in itertools.product((0, 1), repeat=3)
)


def sample_orientation(rng: np.random.Generator, p_permuted: float, p_odd_flip: float) -> str:
    """A storage orientation code (SimpleITK/DICOM letters: the direction each index axis grows toward)."""
    r = rng.random()
    if r < p_permuted:
        return str(rng.choice(ALL_CODES))
    if rng.random() < p_odd_flip:
        return str(rng.choice(AXIAL_CODES))
    return "LPS" if rng.random() < 0.5 else "RAS"


def metal_streaks(grid: WorkGrid, hu: np.ndarray, metal: np.ndarray, rng: np.random.Generator,
                  strength: float) -> None:
    """Beam-hardening / photon-starvation streaks around metal, made the way a scanner makes them:
    forward-project the metal in each axial slice, take a nonlinear error of the projections, and
    filtered-back-project that error into the slice."""
    from skimage.transform import iradon, radon

    zs = np.nonzero(metal.any(axis=(1, 2)))[0]
    if zs.size == 0:
        return
    ds = 2  # work at 2 mm: streaks are smooth across, and this keeps it fast
    ny, nx = hu.shape[1:]
    n = max(ny, nx) // ds + 1
    theta = np.linspace(0.0, 180.0, 120, endpoint=False)
    prev = None
    for idx, z in enumerate(zs):
        if idx % 2 == 1 and prev is not None:  # neighbouring slices look alike: reuse every other one
            hu[z] += prev
            continue
        m = metal[z].astype(np.float32)
        small = np.zeros((n, n), np.float32)
        ms = m[::ds, ::ds]
        small[: ms.shape[0], : ms.shape[1]] = ms
        sino = radon(small, theta=theta, circle=False) * ds  # mm of metal along each ray
        err = -strength * (np.minimum(sino, 20.0) / 10.0) * (sino / 10.0)  # beam hardening saturates
        err += strength * 0.4 * rng.standard_normal(sino.shape) * (sino > 0) * np.sqrt(sino / 10.0)
        rec = iradon(err, theta=theta, circle=False, output_size=n, filter_name="ramp")
        big = np.kron(rec, np.ones((ds, ds), np.float32))[:ny, :nx] * 6000.0
        big[m > 0] = 0.0
        hu[z] += big
        prev = big


def blur(hu: np.ndarray, sigma_mm_xyz: tuple[float, float, float], h: float) -> np.ndarray:
    """Gaussian point-spread function, sigma per world axis (mm)."""
    sig = [sigma_mm_xyz[2] / h, sigma_mm_xyz[1] / h, sigma_mm_xyz[0] / h]
    return ndimage.gaussian_filter(hu, sig, mode="nearest", truncate=3.0)


def resample_to_output(arr: np.ndarray, grid: WorkGrid, out_origin, out_spacing, out_size, nearest: bool,
                       default: float) -> np.ndarray:
    """Working grid -> an LPS-aligned output grid (identity direction) of the given spacing/size."""
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(tuple(float(o) for o in grid.origin))
    img.SetSpacing((grid.h,) * 3)
    ref = sitk.Image([int(s) for s in out_size], img.GetPixelID())
    ref.SetOrigin(tuple(float(o) for o in out_origin))
    ref.SetSpacing(tuple(float(s) for s in out_spacing))
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(img, ref, sitk.Transform(), interp, default, img.GetPixelID())
    return sitk.GetArrayFromImage(out)


def add_noise(arr: np.ndarray, sigma_hu: float, corr_vox: float, rng: np.random.Generator) -> None:
    """Correlated in-plane (axes y, x of an LPS-ordered [z, y, x] array) Gaussian noise, std ``sigma_hu``."""
    n = rng.standard_normal(arr.shape, dtype=np.float32)
    if corr_vox > 0.2:
        ndimage.gaussian_filter(n, (0.0, corr_vox, corr_vox), output=n, mode="wrap", truncate=2.5)
        n *= 1.0 / (n[:: max(1, n.shape[0] // 8)].std() + 1e-6)
    arr += sigma_hu * n


def to_storage(img: sitk.Image, code: str) -> sitk.Image:
    """Exact reorientation of an LPS-aligned image to the storage orientation ``code``."""
    return sitk.DICOMOrient(img, code)
