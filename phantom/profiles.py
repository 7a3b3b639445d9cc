"""Sampling profiles: the rates and ranges one phantom run draws from.

A profile only changes *how often* and *how strongly* things happen (pathology, noise, odd orientations);
the anatomy model is the same for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from engine.errors import SpinertError


@dataclass(frozen=True)
class Profile:
    name: str
    # Field of view along the spine (mm of patient z) and in-plane.
    fov_z_mm: tuple[float, float] = (100.0, 350.0)
    fov_xy_mm: tuple[float, float] = (150.0, 300.0)
    p_full_body_fov: float = 0.2          # in-plane FOV covers the whole body cross-section (like a clinical scan)
    # Voxel spacing (mm).
    inplane_mm: tuple[float, float] = (0.5, 1.0)
    slice_mm: tuple[float, float] = (0.6, 3.0)
    # Coarse scans: low-dose protocols, old scanners, and archives that store a downsampled copy (real
    # test data comes at 1.5 and 3 mm pixels). Drawn instead of the ranges above with p_coarse.
    p_coarse: float = 0.2
    coarse_inplane_mm: tuple[float, float] = (1.0, 3.0)
    coarse_slice_mm: tuple[float, float] = (1.5, 3.0)  # the runtime refuses coarser (engine.preprocess)
    max_voxels: int = 40_000_000
    # Storage orientation: probability of a non-axial (permuted) layout, and of an odd flip within axial.
    p_permuted: float = 0.15
    p_odd_flip: float = 0.15
    # Scanner.
    noise_hu: tuple[float, float] = (12.0, 60.0)
    psf_mm: tuple[float, float] = (0.35, 0.8)   # in-plane Gaussian sigma
    # Anatomy variation.
    curve_scale: tuple[float, float] = (0.6, 1.35)   # lordosis/kyphosis strength
    p_scoliosis: float = 0.12
    scoliosis_deg: tuple[float, float] = (4.0, 18.0)
    p_fracture_case: float = 0.12
    fractures_per_case: tuple[int, int] = (1, 2)
    p_t13: float = 0.03
    p_l6: float = 0.03
    p_t11_last_rib: float = 0.02    # 11 rib pairs: T12 without ribs (what readers call "T12 ribs absent")
    p_metal: float = 0.05
    p_contrast: float = 0.4
    p_osteoporosis: float = 0.3
    fat_factor: tuple[float, float] = (0.5, 1.8)
    size_factor: tuple[float, float] = (0.88, 1.12)


PROFILES: dict[str, Profile] = {
    "default": Profile("default"),
    "hard": Profile(
        "hard",
        fov_z_mm=(60.0, 420.0),
        fov_xy_mm=(120.0, 360.0),
        p_full_body_fov=0.3,
        p_permuted=0.5,
        p_odd_flip=0.5,
        noise_hu=(20.0, 110.0),
        psf_mm=(0.4, 1.2),
        curve_scale=(0.3, 1.9),
        p_scoliosis=0.45,
        scoliosis_deg=(6.0, 35.0),
        p_fracture_case=0.45,
        fractures_per_case=(1, 4),
        p_t13=0.1,
        p_l6=0.1,
        p_t11_last_rib=0.08,
        p_metal=0.3,
        p_osteoporosis=0.45,
        p_coarse=0.3,
        fat_factor=(0.3, 2.4),
        size_factor=(0.8, 1.2),
    ),
}
# Mild: clean scans, useful for debugging and for the demo sample.
PROFILES["clean"] = replace(PROFILES["default"], name="clean", p_permuted=0.0, p_odd_flip=0.0,
                            noise_hu=(8.0, 20.0), p_scoliosis=0.0, p_fracture_case=0.0, p_t13=0.0,
                            p_l6=0.0, p_t11_last_rib=0.0, p_metal=0.0, p_coarse=0.0)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SpinertError(f"unknown phantom profile {name!r} (choose from {', '.join(sorted(PROFILES))})") from None
# Tiny: small fields of view and coarse voxels, for smoke tests and quick checks (not for training).
PROFILES["tiny"] = replace(PROFILES["default"], name="tiny", fov_z_mm=(60.0, 90.0), fov_xy_mm=(110.0, 140.0),
                           p_full_body_fov=0.0, inplane_mm=(0.9, 1.2), slice_mm=(1.5, 2.5), p_metal=0.0,
                           p_coarse=0.0)
