"""generate(seed, profile) -> Case: one synthetic spine CT with VerSe labels and centroids."""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from engine.errors import SpinertError
from engine.labels import CRANIOCAUDAL, NAMES
from engine.types import Volume
from phantom import scanner
from phantom.anatomy import Patient, build_levels, place_spine
from phantom.grid import WorkGrid
from phantom.profiles import Profile, get_profile
from phantom.skeleton import (composite_other_bone, paint_discs, paint_metal, paint_other_bone,
                              paint_vertebrae)
from phantom.neuraxis import paint_canal
from phantom.softtissue import fine_texture, paint_soft_tissue
from phantom.vertebra import sacral_tip

MAX_WORK_VOXELS = 36_000_000
# Bumped whenever a seed's image changes, and written to every case's meta: datasets made by different
# versions are not the same data. 3: lower bone density, coarse scans (p_coarse), pixel-wide blur.
# 4: spinal canal contents (epidural fat, CSF, cord), muscle density and fatty infiltration.
# 5: arch and transverse-process density and process cortex per patient (real processes read barely
# above the body; generator 4's were twice its HU).
GENERATOR_VERSION = 5
# Versions generate() can still make: each added only its own random stream, so an earlier version's data
# set (held-out sets, the shipped models' training data) is rebuilt from its seeds exactly.
GENERATOR_VERSIONS = (4, 5)
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class Case:
    case_id: str
    ct: Volume        # int16 HU
    labels: Volume    # uint8 VerSe IDs, same geometry
    centroids: list[dict[str, float]]
    meta: dict[str, Any] = field(default_factory=dict)


def _sample_patient(rng: np.random.Generator, prof: Profile) -> Patient:
    t13 = rng.random() < prof.p_t13
    l6 = rng.random() < prof.p_l6
    levels = build_levels(rng, t13, l6, rng.random() < prof.p_t11_last_rib)
    scale = float(rng.uniform(*prof.size_factor))
    osteo = rng.random() < prof.p_osteoporosis
    # Cancellous HU falls with age (L1: ~220 HU at 30, ~110 at 70; osteoporosis below ~100), and the
    # real test scans measure 64-122 HU inside their vertebrae.
    bone_hu = float(rng.uniform(40, 120) if osteo else rng.uniform(110, 280))
    scol = None
    if rng.random() < prof.p_scoliosis:
        start = float(rng.uniform(7.0, 16.0))
        scol = {"start": start, "span": float(rng.uniform(6.0, 25.0 - start)), "waves": float(rng.choice([1.0, 2.0])),
                "deg": float(rng.uniform(*prof.scoliosis_deg) * rng.choice([-1, 1])),
                "rot": float(rng.uniform(0.0, 15.0))}
    curve = tuple(float(v) for v in rng.uniform(*prof.curve_scale, size=3))
    # Fractures: mostly at the thoracolumbar junction.
    if rng.random() < prof.p_fracture_case:
        cands = [lv for lv in levels if 10 <= lv.pos <= 24.5]
        w = np.array([3.0 if 17 <= lv.pos <= 21 else 1.0 for lv in cands])
        k = int(rng.integers(prof.fractures_per_case[0], prof.fractures_per_case[1] + 1))
        for idx in rng.choice(len(cands), size=min(k, len(cands)), replace=False, p=w / w.sum()):
            kind = rng.choice(["wedge", "biconcave", "crush"], p=[0.55, 0.25, 0.2])
            sev = float(rng.uniform(0.2, 0.5))
            if kind == "wedge":
                fr = {"ant": 1 - sev, "mid": 1 - sev * 0.6, "post": float(rng.uniform(0.9, 1.0)), "concave": 0.0}
            elif kind == "biconcave":
                fr = {"ant": 1 - sev * 0.4, "mid": 1 - sev * 0.3, "post": 1.0 - sev * 0.2, "concave": 4.0 * sev / 0.5}
            else:
                fr = {"ant": 1 - sev, "mid": 1 - sev, "post": 1 - sev * 0.7, "concave": 1.0}
            fr["kind"] = str(kind)
            fr["sclerosis"] = float(rng.uniform(30.0, 180.0))
            cands[idx].fracture = fr
    pat = Patient(scale=scale, fat=float(rng.uniform(*prof.fat_factor)), bone_hu=bone_hu,
                  cortex_hu=float(rng.uniform(550, 900) if osteo else rng.uniform(750, 1300)),
                  cortex_mm=float(rng.uniform(0.6, 1.2) if osteo else rng.uniform(0.8, 1.6)),
                  contrast=bool(rng.random() < prof.p_contrast), torso_w=float(rng.uniform(0.92, 1.1)),
                  levels=levels, scoliosis=scol, curve=curve)
    pat.diaphragm = float(rng.uniform(18.6, 19.8))  # level position of the posterior costophrenic recess
    pat.table = bool(rng.random() < 0.8)
    pat.table_gap = float(rng.uniform(0.0, 8.0))
    place_spine(levels, rng, scale, curve, scol)
    # Metal: pedicle screws over 2-5 consecutive levels, mostly lumbar.
    if rng.random() < prof.p_metal:
        cands = [i for i, lv in enumerate(levels) if 15 <= lv.pos <= 24.5]
        n = int(rng.integers(2, 6))
        start = int(rng.choice(cands[: max(1, len(cands) - n + 1)]))
        for lv in levels[start:start + n]:
            lv.screws = True
    return pat


def _spine_extent_z(pat: Patient) -> tuple[float, float]:
    c1 = pat.levels[0]
    sac = pat.levels[-1]
    top = c1.center[2] + 12.0
    tip, _ = sacral_tip(sac)
    bottom = (sac.center + sac.R @ tip)[2] - 36.0 * pat.scale - 20.0  # below the coccyx
    return float(bottom), float(top)


def _sample_fov(rng, prof: Profile, pat: Patient, span: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Axis-aligned LPS box of the scan: a contiguous stretch of spine, in-plane cropped or full body.
    ``span`` = (first, last) VerSe label forces the z range from the middle of the disc above ``first``
    to the middle of the disc below ``last`` (the draws are made anyway, so other draws do not shift)."""
    bottom, top = _spine_extent_z(pat)
    L = float(min(rng.uniform(*prof.fov_z_mm), top - bottom))
    # Where the centre of the scan lies: pick a region (cervical / thoracic / lumbosacral), then a level in it.
    region = rng.choice(3, p=[0.2, 0.38, 0.42])
    rng_pos = [(1.5, 7.5), (8.0, 19.5), (19.5, 26.0)][region]
    target = rng.uniform(*rng_pos)
    zs = np.array([lv.center[2] for lv in pat.levels])
    ps = np.array([lv.pos for lv in pat.levels])
    zc = float(np.interp(target, ps, zs))
    zc = float(np.clip(zc, bottom + L / 2, top - L / 2))
    z0, z1 = zc - L / 2, zc + L / 2
    if span is not None:
        by_label = {lv.label: i for i, lv in enumerate(pat.levels)}
        if span[0] not in by_label or span[1] not in by_label:
            raise SpinertError(f"levels {span} are not both present in this patient")
        a, b = pat.levels[by_label[span[0]]], pat.levels[by_label[span[1]]]
        z1 = a.center[2] + a.dims["H"] / 2 + a.dims["disc"] * 0.5 + 2.0
        z0 = b.center[2] - b.dims["H"] / 2 - b.dims["disc"] * 0.5 - 2.0 if b.kind != "sacrum" else bottom + 10.0
    inside = [lv for lv in pat.levels if z0 - 20 <= lv.center[2] <= z1 + 20] or pat.levels
    sx = float(np.mean([lv.center[0] for lv in inside]))
    sy = float(np.mean([lv.center[1] for lv in inside]))
    full = rng.random() < prof.p_full_body_fov
    if full:
        half_w = 150.0 * pat.scale * pat.torso_w + 25.0 * pat.fat + rng.uniform(10, 40)
        x0, x1 = sx - half_w, sx + half_w
        y1 = sy + 110.0 * pat.scale + 20.0 * pat.fat + rng.uniform(15, 40)  # back skin + table
        y0 = y1 - 2 * half_w * rng.uniform(0.75, 0.95)
    else:
        wx = rng.uniform(*prof.fov_xy_mm)
        wy = wx * rng.uniform(0.85, 1.15)
        cx = sx + rng.normal(0, 12)
        cy = sy + 22.0 + rng.normal(0, 18)
        x0, x1, y0, y1 = cx - wx / 2, cx + wx / 2, cy - wy / 2, cy + wy / 2
    return np.array([x0, y0, z0]), np.array([x1, y1, z1]), bool(full)


def _sample_spacing(rng, prof: Profile, extent: np.ndarray, coarse_rng: np.random.Generator) -> np.ndarray:
    inpl = rng.uniform(*prof.inplane_mm)
    # Thin slices are the common case; a third of scans have thick (2-3 mm) slices.
    sl = rng.uniform(prof.slice_mm[0], 1.5) if rng.random() < 0.65 else rng.uniform(1.5, prof.slice_mm[1])
    # Coarse scans draw from their own stream, so every other draw of a seed (anatomy, field of view,
    # noise) stays what it was before coarse scans existed.
    if coarse_rng.random() < prof.p_coarse:
        inpl = coarse_rng.uniform(*prof.coarse_inplane_mm)
        sl = max(inpl, coarse_rng.uniform(*prof.coarse_slice_mm))
    sp = np.array([inpl, inpl, sl])
    n = np.prod(np.ceil(extent / sp))
    if n > prof.max_voxels:  # thicker slices first, then coarser pixels
        sp[2] = min(prof.slice_mm[1], sp[2] * n / prof.max_voxels)
        n = np.prod(np.ceil(extent / sp))
        if n > prof.max_voxels:
            f = min(np.sqrt(n / prof.max_voxels), prof.inplane_mm[1] / sp[0])
            sp[:2] *= f
    return sp


def _sample_arch(pat: Patient, rng: np.random.Generator) -> None:
    # Squared uniforms: most patients' processes read as the real ones do (process_excess_hu -5..80 on
    # ../shared/data/real), the brightest as generator 4's (100-400 over 8 held-out phantoms).
    u = rng.random(3)
    pat.arch_density = float(0.4 + 0.6 * u[0])
    pat.process_density = float(u[1] ** 2)
    pat.process_cortex = float(0.3 + 0.7 * u[2] ** 2)


def _seeded(seed: int, profile: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(profile.encode()), stream])


def generate(seed: int, profile: str = "default", orientation: str | None = None,
             span: tuple[int, int] | None = None, spacing: tuple[float, float, float] | None = None,
             generator: int = GENERATOR_VERSION) -> Case:
    """One phantom CT, deterministic for (seed, profile).

    ``orientation`` forces the storage orientation code (e.g. "LPS", "RAS", "PIR"); the anatomy, the
    voxel grid in LPS and the noise do not depend on it, so the same seed stored two ways holds the same
    image, only permuted/flipped. ``span`` (first, last VerSe label) forces the levels in the field of view,
    ``spacing`` (x, y, z mm) the voxel size; both are overrides for special cases (the demo sample).
    ``generator``: the version to make (``GENERATOR_VERSIONS``); 4 leaves out version 5's arch draws.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpinertError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if generator not in GENERATOR_VERSIONS:
        raise SpinertError(f"phantom generator version must be one of {GENERATOR_VERSIONS}, got {generator!r}")
    prof = get_profile(profile)
    t0 = time.perf_counter()
    rng = _seeded(seed, profile, 0)
    pat = _sample_patient(rng, prof)
    lo, hi, full = _sample_fov(rng, prof, pat, span)
    extent = hi - lo
    sp = _sample_spacing(rng, prof, extent, _seeded(seed, profile, 2))
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64)
    # Working grid: the FOV plus a blur margin, ~1 mm (coarser only for very large full-body scans).
    margin = 4.0
    wlo, whi = lo - margin, hi + margin
    h = max(1.0, (np.prod(whi - wlo) / MAX_WORK_VOXELS) ** (1 / 3))
    shape = tuple(int(v) for v in np.ceil((whi - wlo) / h)[::-1])
    grid = WorkGrid(origin=wlo, h=float(h), shape=shape)

    hu = np.full(shape, -1000.0, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    tissue = _seeded(seed, profile, 3)  # generator 4's own stream: the rest of a seed is generator 3's
    if generator >= 5:
        _sample_arch(pat, _seeded(seed, profile, 4))  # generator 5's
    paint_soft_tissue(grid, hu, pat, rng, tissue)
    paint_canal(grid, hu, pat, tissue)
    texture = fine_texture(shape, rng, grid.h)
    other = np.full(shape, 1e3, dtype=np.float32)
    paint_other_bone(grid, other, hu, pat, rng)
    composite_other_bone(grid, other, hu, pat, texture)
    del other
    paint_discs(grid, hu, pat.levels, rng)
    paint_vertebrae(grid, hu, lab, pat, texture, rng)
    del texture
    metal = paint_metal(grid, hu, pat)
    if metal is not None:
        scanner.metal_streaks(grid, hu, metal, rng, strength=float(rng.uniform(0.6, 1.4)))
        del metal
    t_anat = time.perf_counter() - t0

    # Scanner: PSF blur (in-plane sigma; along z the slice profile), resample, noise.
    psf = float(rng.uniform(*prof.psf_mm))
    # A detector element integrates over its pixel: coarse pixels average, they do not point-sample
    # (0.42 x width: the sigma of a box of that width, as along z for the slice profile).
    sig = (max(psf, 0.42 * sp[0]), max(psf, 0.42 * sp[1]), max(psf, 0.42 * sp[2]))
    hu = scanner.blur(hu, sig, grid.h)
    size = np.maximum(1, np.round(extent / sp)).astype(int)
    origin = lo + sp / 2
    ct = scanner.resample_to_output(hu, grid, origin, sp, size, nearest=False, default=-1000.0)
    del hu
    noise = float(rng.uniform(*prof.noise_hu)) * (0.8 + 0.25 * pat.fat)
    scanner.add_noise(ct, noise, float(rng.uniform(0.4, 1.0)), rng)
    np.clip(np.rint(ct), HU_MIN, HU_MAX, out=ct)
    labels = scanner.resample_to_output(lab, grid, origin, sp, size, nearest=True, default=0)
    del lab

    code = orientation or scanner.sample_orientation(_seeded(seed, profile, 1), prof.p_permuted, prof.p_odd_flip)
    ct_img = _image(ct.astype(np.int16), origin, sp)
    lab_img = _image(labels.astype(np.uint8), origin, sp)
    try:
        ct_img = scanner.to_storage(ct_img, code)
        lab_img = scanner.to_storage(lab_img, code)
    except RuntimeError as exc:
        raise SpinertError(f"invalid storage orientation {code!r}: {exc}") from None
    case_id = f"phantom-{profile}-{seed:06d}"
    ct_vol = _volume(ct_img, case_id)
    lab_vol = _volume(lab_img, case_id)
    centroids = label_centroids(lab_img)
    present = [c["label"] for c in centroids]
    meta = {
        "generator": int(generator), "seed": int(seed), "profile": profile, "orientation": code,
        "spacing": [float(s) for s in ct_img.GetSpacing()], "size": list(ct_img.GetSize()),
        "labels": present, "names": [NAMES[lb] for lb in present],
        "full_body_fov": full, "fov_mm": [float(v) for v in extent],
        "patient": {"scale": pat.scale, "fat": pat.fat, "bone_hu": pat.bone_hu, "contrast": pat.contrast,
                    "arch_density": pat.arch_density, "process_density": pat.process_density,
                    "process_cortex": pat.process_cortex,
                    "curve": list(pat.curve), "scoliosis": pat.scoliosis},
        "transitional": {"T13": any(lv.label == 28 for lv in pat.levels),
                         "L6": any(lv.label == 25 for lv in pat.levels),
                         "rib_pairs": sum(lv.ribs for lv in pat.levels)},
        "fractures": [{"label": lv.label, **lv.fracture} for lv in pat.levels if lv.fracture and lv.label in present],
        "metal_levels": [lv.label for lv in pat.levels if lv.screws and lv.label in present],
        "noise_hu": noise, "psf_mm": psf,
        "border_labels": border_labels(sitk.GetArrayViewFromImage(lab_img)),
        "seconds": {"anatomy": round(t_anat, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    return Case(case_id, ct_vol, lab_vol, centroids, meta)


def _image(arr: np.ndarray, origin, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def _volume(img: sitk.Image, name: str) -> Volume:
    return Volume(sitk.GetArrayFromImage(img), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                  tuple(img.GetDirection()), name)


def label_centroids(img: sitk.Image) -> list[dict[str, float]]:
    """VerSe-style centroids: the physical point (LPS mm) of each label's mean voxel index, cranio-caudal."""
    arr = sitk.GetArrayViewFromImage(img)
    flat = np.flatnonzero(arr)
    if flat.size == 0:
        return []
    labs = arr.reshape(-1)[flat].astype(np.int64)
    k, j, i = np.unravel_index(flat, arr.shape)
    cnt = np.bincount(labs, minlength=29)
    sums = [np.bincount(labs, weights=c.astype(np.float64), minlength=29) for c in (i, j, k)]
    out = []
    order = {lb: n for n, lb in enumerate(CRANIOCAUDAL)}
    for lb in sorted(np.nonzero(cnt)[0], key=lambda v: order.get(int(v), 99)):
        ijk = tuple(float(s[lb] / cnt[lb]) for s in sums)
        x, y, z = img.TransformContinuousIndexToPhysicalPoint(ijk)
        out.append({"label": int(lb), "X": round(x, 3), "Y": round(y, 3), "Z": round(z, 3)})
    return out


def border_labels(arr: np.ndarray) -> list[int]:
    """Labels that touch the image border (vertebrae cut by the field of view)."""
    faces = [arr[0], arr[-1], arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]]
    return sorted({int(v) for f in faces for v in np.unique(f) if v != 0})
