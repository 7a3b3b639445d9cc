"""What fills the spinal canal: epidural fat around the dural sac (CSF), the cord inside it down to the conus.

Without it the canal held whatever soft tissue was painted there (muscle, ~45 HU). Real canals read far lower:
CSF is 0-15 HU and lumbar epidural fat about -100 HU. These voxels lie right behind every vertebral body,
inside the ring the segmenter must not cross, and they made the phantoms' peri-vertebral soft tissue ~25 HU
denser than in the real CTs (`spinert realism`, ring HU).
"""
from __future__ import annotations

import numpy as np

from phantom.anatomy import Patient
from phantom.grid import WorkGrid, composite
from phantom.sdf import ell_capsule

# Dural sac radius as a fraction of the canal's, by anatomical position: it fills the cervical canal and
# leaves more and more room to epidural fat going down; it ends at S2 (position ~25.4).
_SAC_POS = (1.0, 8.0, 20.0, 24.0, 25.4)
_SAC_FRAC = (0.92, 0.85, 0.78, 0.66, 0.0)
CONUS_POS = 20.7  # the cord ends at L1/L2
_CORD_FRAC = 0.42


def canal_axis(pat: Patient) -> list[tuple[np.ndarray, np.ndarray, float, float, float]]:
    """Per level (top to bottom): canal centre (LPS mm), AP direction, half width, half depth, position."""
    out = []
    for lv in sorted(pat.levels, key=lambda lv: lv.pos):
        d = lv.dims
        b, cw, cd = d["D"] / 2, d["canW"] / 2, d["canD"] / 2
        c = lv.center + lv.R @ np.array([0.0, 0.93 * b + cd, 0.0])
        out.append((c, lv.R[:, 1], cw, cd, float(lv.pos)))
    return out


def paint_canal(grid: WorkGrid, hu: np.ndarray, pat: Patient, rng: np.random.Generator) -> None:
    """Epidural fat, dural sac and cord along the canal (before the bone, which paints over its walls)."""
    fat_hu, csf_hu, cord_hu = rng.uniform(-115.0, -80.0), rng.uniform(0.0, 15.0), rng.uniform(28.0, 40.0)
    axis = canal_axis(pat)
    for (a, up_a, cw_a, cd_a, pa), (b, up_b, cw_b, cd_b, pb) in zip(axis[:-1], axis[1:]):
        up = up_a + up_b
        rs, ru = 0.5 * (cw_a + cw_b), 0.5 * (cd_a + cd_b)
        r = max(rs, ru) + 2.0
        sl = grid.box_slices(np.minimum(a, b) - r, np.maximum(a, b) + r)
        if sl is None:
            continue
        p = grid.world(sl)
        pm = 0.5 * (pa + pb)
        sac = float(np.interp(pm, _SAC_POS, _SAC_FRAC))
        layers = [(0.95, fat_hu), (sac, csf_hu)] + ([(sac * _CORD_FRAC, cord_hu)] if pm < CONUS_POS and sac else [])
        for frac, val in layers:
            if frac <= 0.0:
                continue
            composite(hu[sl], ell_capsule(p, a, b, frac * rs, frac * ru, up=up), val, grid.h)
