"""Patient anatomy: which vertebrae exist, how big each is, and where the spine runs.

Sizes are mm for an average adult (scale 1.0), after Panjabi et al. (cervical 1991, thoracic 1991,
lumbar 1992) body height/width/depth and disc heights, rounded. They are interpolated between key levels
and then scaled per patient, with a few percent jitter per level.

Frames: every vertebra gets a rigid frame in LPS mm. Local axes: u = patient left, v = posterior,
w = superior (the spine's upward tangent). ``R`` maps local -> LPS (columns are u, v, w).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Anatomical position number: C1 = 1 ... L5 = 24, sacrum = 25. T13 / L6 get fractional positions.
# columns: pos, body H, body W (lateral), body D (AP), disc below, canal W, canal D, pedicle radius,
#          spinous length, spinous down-angle (deg), transverse length, transverse back-angle (deg),
#          sagittal tangent angle alpha (deg, >0 = spine runs posterior going down)
_KEY = np.array([
    # pos  H     W     D     disc canW canD pedR  spL  spAng tpL  tpAng alpha
    [1,   10.0, 16.0, 12.0, 4.0, 26.0, 20.0, 3.5, 10.0, 0.0,  22.0, 0.0, -20.0],
    [2,   20.0, 17.0, 15.0, 4.5, 24.0, 16.0, 3.2, 26.0, 20.0, 12.0, 10.0, -12.0],
    [3,   13.5, 16.0, 15.5, 5.0, 24.0, 15.0, 2.8, 18.0, 20.0, 13.0, 10.0, -6.0],
    [5,   13.5, 18.0, 16.0, 5.5, 25.0, 14.0, 3.0, 20.0, 25.0, 15.0, 10.0, 4.0],
    [7,   14.0, 22.0, 16.5, 5.0, 23.0, 14.0, 3.5, 40.0, 30.0, 20.0, 15.0, 18.0],
    [8,   15.5, 26.0, 16.5, 4.0, 20.0, 15.0, 4.0, 42.0, 40.0, 24.0, 25.0, 22.0],
    [11,  18.0, 27.5, 19.0, 4.5, 16.0, 15.0, 4.0, 38.0, 55.0, 24.0, 30.0, 14.0],
    [15,  20.5, 32.0, 26.0, 5.5, 16.0, 16.0, 4.5, 38.0, 55.0, 21.0, 30.0, -2.0],
    [19,  24.0, 41.0, 30.0, 8.0, 19.0, 17.0, 4.5, 35.0, 25.0, 12.0, 15.0, -17.0],
    [20,  25.0, 43.0, 32.0, 9.0, 21.0, 18.0, 4.5, 32.0, 12.0, 24.0, 15.0, -17.0],
    [22,  26.5, 47.0, 34.0, 11.0, 22.0, 17.0, 5.0, 32.0, 5.0, 32.0, 18.0, -2.0],
    [24,  26.5, 50.0, 35.0, 11.0, 24.0, 17.0, 6.0, 28.0, 10.0, 26.0, 22.0, 22.0],
    [25,  28.0, 50.0, 36.0, 0.0, 24.0, 14.0, 6.0, 15.0, 30.0, 0.0, 0.0, 42.0],
], dtype=np.float64)
_COLS = ("pos", "H", "W", "D", "disc", "canW", "canD", "pedR", "spL", "spAng", "tpL", "tpAng", "alpha")


def level_params(pos: float) -> dict[str, float]:
    """Average-adult dimensions at an anatomical position (fractional positions interpolate)."""
    return {c: float(np.interp(pos, _KEY[:, 0], _KEY[:, i])) for i, c in enumerate(_COLS)}


@dataclass
class Level:
    label: int            # VerSe ID
    kind: str             # "C1", "C2", "cervical", "thoracic", "lumbar", "sacrum"
    pos: float            # anatomical position number
    dims: dict[str, float]
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))  # body centre, LPS mm
    R: np.ndarray = field(default_factory=lambda: np.eye(3))         # local -> LPS
    ribs: bool = False
    rib_len: float = 0.0  # fraction of a full rib arc (1 = reaches the sternum)
    fracture: dict | None = None
    screws: bool = False


@dataclass
class Patient:
    """Per-patient draws that the whole body depends on."""

    scale: float
    fat: float              # subcutaneous/visceral fat factor (1 = average)
    bone_hu: float          # cancellous HU
    cortex_hu: float
    cortex_mm: float
    contrast: bool
    torso_w: float          # torso half-width factor
    levels: list[Level]
    scoliosis: dict | None
    curve: tuple[float, float, float]
    diaphragm: float = 19.0   # level position of the posterior costophrenic recess
    table: bool = True
    table_gap: float = 3.0
    # Generator 5: how much denser than the body's marrow the arch (laminae, spinous process) and the
    # transverse processes are (0 = as the body, 1 = generator 4's ~2x), and the processes' cortex
    # relative to cortex_mm (the arch's is 1, the body's walls 0.5). Defaults: generator 4.
    arch_density: float = 1.0
    process_density: float = 1.0
    process_cortex: float = 1.0


def _rot(axis: str, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def patient_shape(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient proportions around the Panjabi means: real vertebrae differ from one person to the next in
    how full the body is (depth, squareness of the axial outline, waist) and how heavy the arch is, at the
    same overall size. Drawn from a child generator so the other draws of a seed stay as they were."""
    u = rng.uniform
    return {
        "D": float(u(0.97, 1.18)),      # body depth (real lumbar bodies measured 10-25 % fuller than Panjabi-sized ones)
        "W": float(u(0.96, 1.1)),       # body width
        "nexp": float(u(2.2, 3.4)),     # superellipse exponent of the axial outline (higher = squarer)
        "waist": float(u(0.02, 0.09)),  # concavity of the body's sides
        "lam": float(u(0.9, 1.5)),      # lamina thickness factor
        "ped": float(u(0.9, 1.25)),     # pedicle radius factor
        "spT": float(u(0.9, 1.5)),      # spinous process thickness factor
        "spL": float(u(0.85, 1.05)),    # spinous process length factor
        "sacK": float(u(5.0, 14.0)),    # sacral curvature: degrees the tangent turns forward per fused segment
        "sac0": float(u(-4.0, 12.0)),   # first sacral segment's tilt back from S1's axis (degrees)
        "sacTilt": float(u(-10.0, 10.0)),  # sacral slope about its mean of ~42 degrees (real: 25-60)
    }


def build_levels(rng: np.random.Generator, t13: bool, l6: bool, t11_last_rib: bool) -> list[Level]:
    """The vertebrae of one patient, head to feet, with per-level size jitter (scale applied later)."""
    seq: list[tuple[int, str, float]] = [(1, "C1", 1.0), (2, "C2", 2.0)]
    seq += [(i, "cervical", float(i)) for i in range(3, 8)]
    seq += [(i, "thoracic", float(i)) for i in range(8, 20)]
    if t13:
        seq.append((28, "thoracic", 19.5))
    seq += [(i, "lumbar", float(i)) for i in range(20, 25)]
    if l6:
        seq.append((25, "lumbar", 24.4))
    seq.append((26, "sacrum", 25.0))
    shape = patient_shape(rng.spawn(1)[0])
    levels = []
    for lab, kind, pos in seq:
        d = level_params(pos)
        jitter = rng.normal(1.0, 0.03, size=4)
        d["H"] *= jitter[0]
        d["W"] *= jitter[1] * shape["W"]
        d["D"] *= jitter[2] * shape["D"]
        d["disc"] *= jitter[3]
        d["pedR"] *= shape["ped"]
        d["spL"] *= shape["spL"]
        d.update({k: shape[k] for k in ("nexp", "waist", "lam", "spT", "sacK", "sac0", "sacTilt")})
        levels.append(Level(lab, kind, pos, d))
    # Ribs: thoracic levels; the last two rib pairs are short floating ribs.
    thor = [lv for lv in levels if lv.kind == "thoracic"]
    if t11_last_rib and not t13:
        thor = thor[:-1]
    n = len(thor)
    for idx, lv in enumerate(thor):
        lv.ribs = True
        from_bottom = n - 1 - idx
        lv.rib_len = {0: 0.3, 1: 0.55, 2: 0.8}.get(from_bottom, 1.0) * rng.uniform(0.9, 1.1)
    return levels


def place_spine(levels: list[Level], rng: np.random.Generator, scale: float, curve: tuple[float, float, float],
                scoliosis: dict | None) -> None:
    """Walk head -> feet placing each body centre and frame along a lordosis/kyphosis(/scoliosis) curve."""
    n = len(levels)
    # Sagittal tangent angle per level, each region's deviation from a neutral line scaled on its own.
    alpha = np.array([lv.dims["alpha"] for lv in levels])
    pos = np.array([lv.pos for lv in levels])
    cerv, thor, lumb = curve
    base = np.interp(pos, [1, 7.5, 19.5, 25], [0.0, 20.0, -17.0, 42.0])  # region anchor angles
    region_scale = np.where(pos < 7.5, cerv, np.where(pos < 19.5, thor, lumb))
    alpha = base + (alpha - base) * region_scale
    alpha += rng.normal(0.0, 1.5, size=n)
    alpha += np.array([lv.dims.get("sacTilt", 0.0) if lv.kind == "sacrum" else 0.0 for lv in levels])
    # Coronal (scoliosis) angle and axial rotation.
    beta = np.zeros(n)
    gamma = np.zeros(n)
    if scoliosis is not None:
        t = (pos - scoliosis["start"]) / max(scoliosis["span"], 1.0)
        inside = (t > 0) & (t < 1)
        wave = np.where(inside, np.sin(np.pi * scoliosis["waves"] * np.clip(t, 0, 1)), 0.0)
        # The tangent angle is the derivative of the lateral offset; a sine offset -> cosine tangent.
        beta = scoliosis["deg"] * np.where(inside, np.cos(np.pi * scoliosis["waves"] * np.clip(t, 0, 1)), 0.0)
        gamma = scoliosis["rot"] * wave
    beta += rng.normal(0.0, 0.8, size=n)
    gamma += rng.normal(0.0, 1.5, size=n)
    center = np.zeros(3)
    prev = None
    for i, lv in enumerate(levels):
        R = _rot("y", beta[i]) @ _rot("x", alpha[i]) @ _rot("z", gamma[i])
        lv.dims = {k: (v * scale if k in ("H", "W", "D", "disc", "canW", "canD", "pedR", "spL", "tpL") else v)
                   for k, v in lv.dims.items()}
        if prev is not None:
            hprev = _eff_height(prev)
            hcur = _eff_height(lv)
            up_prev, up_cur = prev.R[:, 2], R[:, 2]
            up_mid = up_prev + up_cur
            up_mid /= np.linalg.norm(up_mid)
            center = prev.center - up_prev * hprev / 2 - up_mid * prev.dims["disc"] - up_cur * hcur / 2
        lv.center = center.copy()
        lv.R = R
        prev = lv


def _eff_height(lv: Level) -> float:
    if lv.kind == "sacrum":
        return lv.dims["H"]
    h = lv.dims["H"]
    if lv.fracture is not None:
        h *= lv.fracture["mid"]
    return h
