"""Bones on the working grid: discs, labelled vertebrae, and unlabelled bone (ribs, sternum, pelvis, femora,
coccyx) plus optional pedicle screws and rods."""
from __future__ import annotations

import numpy as np

from phantom.anatomy import Level, Patient
from phantom.grid import WorkGrid, bone_value, composite, occupancy
from phantom.sdf import capsule, ell_capsule, ellipsoid, rbox
from phantom.vertebra import local_box, render, sacral_tip

METAL_HU = 3800.0


def _orthonormal(R: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(R)
    return u @ vt


def paint_discs(grid: WorkGrid, hu: np.ndarray, levels: list[Level], rng: np.random.Generator) -> None:
    """Intervertebral discs: wedge-shaped slabs between the endplate planes of neighbouring bodies."""
    for up, lo in zip(levels[:-1], levels[1:]):
        if up.kind == "C1":
            continue
        R = _orthonormal((up.R + lo.R) / 2)
        e_up = up.center - up.R[:, 2] * up.dims["H"] / 2
        e_lo = lo.center + lo.R[:, 2] * lo.dims["H"] / 2
        c = (e_up + e_lo) / 2
        a = (up.dims["W"] + lo.dims["W"]) / 4 * 0.98
        b = (up.dims["D"] + lo.dims["D"]) / 4 * 0.98
        gap = float(np.linalg.norm(e_up - e_lo))
        box = np.array([a + 4, b + 4, gap / 2 + 6])
        lo_w, hi_w = grid.world_box_of_local(c, R, -box, box)
        sl = grid.box_slices(lo_w, hi_w)
        if sl is None:
            continue
        u, v, w = grid.local(sl, c, R)
        rn = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        d_rad = (rn - 1.0) * min(a, b)
        # Bounded by the two endplate planes (overlapping them by 2 mm: the bodies paint over it).
        x, y, z = grid.world(sl)
        n_up, n_lo = up.R[:, 2], lo.R[:, 2]
        d_plane_up = (x - e_up[0]) * n_up[0] + (y - e_up[1]) * n_up[1] + (z - e_up[2]) * n_up[2] - 2.0
        d_plane_lo = -((x - e_lo[0]) * n_lo[0] + (y - e_lo[1]) * n_lo[1] + (z - e_lo[2]) * n_lo[2]) - 2.0
        d = np.maximum(np.maximum(d_rad, d_plane_up), d_plane_lo)
        nucleus = rng.uniform(60.0, 95.0)
        annulus = rng.uniform(95.0, 125.0)
        val = nucleus + (annulus - nucleus) * np.clip((rn - 0.45) / 0.35, 0.0, 1.0)
        composite(hu[sl], d, val, grid.h)


def paint_vertebrae(grid: WorkGrid, hu: np.ndarray, lab: np.ndarray, pat: Patient, texture: np.ndarray,
                    rng: np.random.Generator) -> None:
    h = grid.h
    for lv in pat.levels:
        lo, hi = local_box(lv)
        lo_w, hi_w = grid.world_box_of_local(lv.center, lv.R, lo, hi)
        sl = grid.box_slices(lo_w, hi_w)
        if sl is None:
            continue
        cv = render(grid, sl, lv)
        d, d_body, p = cv.d, cv.body, cv.p
        canc = pat.bone_hu * rng.uniform(0.9, 1.1) + texture[sl] * (0.35 * pat.bone_hu + 25.0)
        cortex = pat.cortex_mm
        if d_body is not None:
            # The body's side walls are a thin shell (~0.5-1 mm); the neural arch is mostly compact bone.
            lat = _process_share(lv, p[0])
            arch_c = 1.0 + (pat.process_cortex - 1.0) * lat
            cortex = pat.cortex_mm * (arch_c - (arch_c - 0.5) * occupancy(d_body - 1.5, 2.0))
            # Processes and arch are denser inside than the body's marrow, by how much varies by patient: real
            # transverse processes read from the body's HU to ~80 HU above it, laminae ~100-260 above
            # (phantom.realism's process_excess_hu).
            dense = pat.arch_density + (pat.process_density - pat.arch_density) * lat
            canc = canc + dense * (0.6 * pat.bone_hu + 80.0) * (1.0 - occupancy(d_body - 2.0, 3.0))
            # Basivertebral venous plexus: a darker patch at the middle of the posterior body.
            b, hh = lv.dims["D"] / 2, lv.dims["H"] / 2
            d_bv = ellipsoid(p, (0.0, 0.55 * b, 0.0), (0.22 * lv.dims["W"] / 2 + 2, 0.3 * b, 0.22 * hh + 1.0))
            canc = canc - 0.5 * pat.bone_hu * occupancy(d_bv, 2.0)
            if lv.fracture is not None:  # compressed trabeculae are denser
                canc = canc + lv.fracture["sclerosis"] * occupancy(d_body + 3.0, 4.0)
        val = bone_value(d, canc, pat.cortex_hu, cortex, h)
        composite(hu[sl], d, val, h)
        inside = d < 0
        sub = lab[sl]
        sub[inside & (sub == 0)] = lv.label


def _process_share(lv: Level, x: np.ndarray) -> np.ndarray:
    """0 on the midline arch (laminae, spinous process) -> 1 lateral of the pedicles (transverse processes),
    over a few mm; ``x`` = the vertebra's local left-right coordinate (mm)."""
    d = lv.dims
    edge = d["canW"] / 2 + d["pedR"] * 1.3
    return np.clip((np.abs(x) - edge) / 4.0 + 0.5, 0.0, 1.0).astype(np.float32)


def _rib_path(lv: Level, sgn: float, pat: Patient) -> np.ndarray:
    """Centre line of one rib (local coords of its vertebra): head -> neck -> tubercle -> shaft arc."""
    d = lv.dims
    a, b, hh = d["W"] / 2, d["D"] / 2, d["H"] / 2
    pos = lv.pos
    A = np.interp(pos, [8, 9, 10, 11, 13, 16, 18, 19.5], [52, 78, 95, 108, 122, 128, 126, 122]) * pat.scale * pat.torso_w
    B = np.interp(pos, [8, 9, 11, 13, 16, 19.5], [42, 60, 80, 92, 98, 100]) * pat.scale * pat.torso_w
    xs = d["canW"] / 2 + d["pedR"] * 0.7
    ang = np.deg2rad(d["tpAng"])
    tip = np.array([sgn * xs, b + d["canD"] * 0.62 - 1.0, 0.18 * 2 * hh]) + d["tpL"] * np.array(
        [sgn * np.cos(ang), np.sin(ang), 0.12])
    head = np.array([sgn * (a * 0.8 + 3.0), b * 0.45, 0.55 * hh])
    tub = tip + np.array([0.0, -5.0, -2.0])
    y_post = tub[1] + 10.0
    yc = y_post - B
    s0 = min(0.95, (abs(tub[0]) + 14.0) / A)
    th0 = np.arcsin(s0)
    th_end = th0 + (np.deg2rad(165.0) - th0) * lv.rib_len
    th = np.linspace(th0, th_end, 60)
    drop = 0.55 * A * lv.rib_len * (0.7 if pos < 10 else 1.0)
    arc = np.stack([sgn * A * np.sin(th), yc + B * np.cos(th),
                    tub[2] - 6.0 - drop * ((th - th0) / max(th_end - th0, 1e-3)) ** 1.2], axis=1)
    return np.vstack([head, (head + tub) / 2 + np.array([0, 2.0, 0]), tub, arc])


def paint_other_bone(grid: WorkGrid, sdf: np.ndarray, hu: np.ndarray, pat: Patient, rng: np.random.Generator) -> None:
    """Ribs (and costal cartilage), sternum, pelvis, femora and coccyx into one union SDF ``sdf``."""
    h = grid.h

    def add(lo_w, hi_w, fn):
        sl = grid.box_slices(lo_w, hi_w)
        if sl is None:
            return
        x, y, z = grid.world(sl)
        d = fn((x, y, z))
        np.minimum(sdf[sl], d, out=sdf[sl])

    def add_seg(a, b, ra, rb, up=None):
        r = max(ra, rb) + 1.5
        lo_w = np.minimum(a, b) - r
        hi_w = np.maximum(a, b) + r
        if up is None:
            add(lo_w, hi_w, lambda p: capsule(p, a, b, ra, rb))
        else:
            add(lo_w, hi_w, lambda p: ell_capsule(p, a, b, ra, rb, up=up))

    thor = [lv for lv in pat.levels if lv.ribs]
    for lv in thor:
        for sgn in (-1.0, 1.0):
            path = _rib_path(lv, sgn, pat) @ lv.R.T + lv.center
            n = len(path)
            up = lv.R[:, 2]
            for k in range(n - 1):
                t = k / (n - 1)
                if k < 3:  # head and neck: round
                    add_seg(path[k], path[k + 1], 4.0, 4.0)
                else:  # shaft: flat, taller than thick
                    r_up = (4.0 + 2.5 * np.sin(np.pi * min(1.0, t * 1.3))) * pat.scale
                    add_seg(path[k], path[k + 1], 2.6, r_up, up=up)
            if lv.rib_len >= 0.95 and lv.pos < 17:  # costal cartilage to the sternum: soft-tissue density
                end = path[-1]
                ster = lv.center + lv.R @ np.array([0.0, _rib_path(lv, sgn, pat)[-1][1] - 8.0, _rib_path(lv, sgn, pat)[-1][2] - 5.0])
                r = 5.0
                sl = grid.box_slices(np.minimum(end, ster) - r - 2, np.maximum(end, ster) + r + 2)
                if sl is not None:
                    composite(hu[sl], capsule(grid.world(sl), end, ster, r, r), 120.0, h)
    if thor:
        # Sternum: a plate in front, from the level of T2 to T9.
        top = [lv for lv in thor if lv.pos >= 9][:1]
        bot = [lv for lv in thor if lv.pos >= 16][:1]
        if top and bot:
            pt = top[0].center + top[0].R @ np.array([0.0, _rib_path(top[0], 1.0, pat)[-1][1] - 10.0, -10.0])
            pb = bot[0].center + bot[0].R @ np.array([0.0, _rib_path(bot[0], 1.0, pat)[-1][1] - 8.0, 0.0])
            add_seg(pt, pb, 14.0 * pat.scale, 5.0 * pat.scale, up=(1.0, 0.0, 0.0))
    sac = [lv for lv in pat.levels if lv.kind == "sacrum"]
    if sac:
        _pelvis(add, add_seg, sac[0], pat)


def _pelvis(add, add_seg, sac: Level, pat: Patient) -> None:
    """Ilium (curved plates from the sacro-iliac joints), acetabula with femoral heads, pubis, ischium, coccyx."""
    R, c, s = sac.R, sac.center, pat.scale

    def L(u, v, w):  # sacrum-local -> world
        return c + R @ (np.array([u, v, w]) * s)

    for sgn in (-1.0, 1.0):
        # Iliac wing: a thin shell of an ellipsoid, kept only lateral of the SI joint and below the crest.
        ce = L(sgn * 32.0, -48.0, -10.0)
        radii = np.array([88.0, 62.0, 80.0]) * s
        thick = 4.0 * s

        def wing(p, ce=ce, radii=radii, sgn=sgn):
            d_ell = ellipsoid(p, ce, radii, R)
            shell = np.abs(d_ell) - thick
            q = [p[i] - c[i] for i in range(3)]
            loc = [q[0] * R[0, j] + q[1] * R[1, j] + q[2] * R[2, j] for j in range(3)]
            lateral = 40.0 * s - sgn * loc[0]
            crest = loc[2] - (55.0 * s - 0.004 * (loc[0] * sgn - 70 * s) ** 2)
            back = loc[1] - 40.0 * s
            bottom = -55.0 * s - loc[2]
            return np.maximum.reduce([shell, lateral, crest, back, bottom])

        lo_w, hi_w = np.minimum(L(sgn * 35, -110, -60), L(sgn * 140, 45, 70)), np.maximum(L(sgn * 35, -110, -60), L(sgn * 140, 45, 70))
        lo_w, hi_w = np.minimum(lo_w, hi_w) - 10, np.maximum(lo_w, hi_w) + 10
        add(lo_w, hi_w, wing)
        # Posterior iliac part at the SI joint (thick bone) and the iliac body down to the acetabulum.
        add_seg(L(sgn * 58, 12, 20), L(sgn * 62, 5, -40), 12.0 * s, 12.0 * s)
        add_seg(L(sgn * 62, 5, -40), L(sgn * 88, -40, -85), 13.0 * s, 16.0 * s)
        # Acetabulum + femoral head + neck + shaft.
        head = L(sgn * 92, -42, -100)
        add_seg(head, head, 24.0 * s, 24.0 * s)
        troch = L(sgn * 128, -30, -125)
        add_seg(head, troch, 15.0 * s, 17.0 * s)
        add_seg(troch, L(sgn * 118, -35, -300), 16.0 * s, 13.0 * s)
        # Pubic ramus to the symphysis; ischium down and back.
        add_seg(L(sgn * 80, -62, -100), L(sgn * 12, -105, -120), 8.0 * s, 9.0 * s)
        add_seg(L(sgn * 80, -25, -115), L(sgn * 60, -5, -165), 11.0 * s, 13.0 * s)
    # Coccyx: 3 small segments continuing the sacral curve forwards (bone, not labelled).
    tip, ang = sacral_tip(sac)
    prev = c + R @ tip
    for r in (7.0, 5.5, 4.5):
        nxt = prev + R @ (np.array([0.0, np.sin(ang), -np.cos(ang)]) * 12.0 * s)
        add_seg(prev, nxt, r * s, (r - 1.0) * s)
        prev, ang = nxt, ang - np.deg2rad(sac.dims.get("sacK", 9.0))


def composite_other_bone(grid: WorkGrid, sdf: np.ndarray, hu: np.ndarray, pat: Patient, texture: np.ndarray) -> None:
    near = sdf < grid.h
    if not near.any():
        return
    d = sdf[near]
    canc = pat.bone_hu * 0.9 + texture[near] * 40.0
    val = bone_value(d, canc, pat.cortex_hu * 0.95, pat.cortex_mm, grid.h)
    occ = occupancy(d, grid.h)
    hu[near] += occ * (val - hu[near])


def paint_metal(grid: WorkGrid, hu: np.ndarray, pat: Patient) -> np.ndarray | None:
    """Pedicle screws (and rods joining their heads) in the levels marked ``screws``. Returns the metal mask."""
    lvls = [lv for lv in pat.levels if lv.screws]
    if not lvls:
        return None
    metal = np.zeros(hu.shape, dtype=bool)
    heads = {-1.0: [], 1.0: []}
    for lv in lvls:
        d = lv.dims
        b = d["D"] / 2
        xs = d["canW"] / 2 + d["pedR"] * 0.7
        wp = 0.18 * d["H"]
        r = 3.2 if lv.kind == "lumbar" else 2.6
        for sgn in (-1.0, 1.0):
            entry = np.array([sgn * (xs + 3.0), b + d["canD"] * 0.75 + 8.0, wp])
            tip = np.array([sgn * (xs * 0.25), -0.45 * b, wp - 1.0])
            e_w, t_w = lv.center + lv.R @ entry, lv.center + lv.R @ tip
            heads[sgn].append(e_w)
            sl = grid.box_slices(np.minimum(e_w, t_w) - 8, np.maximum(e_w, t_w) + 8)
            if sl is None:
                continue
            dd = capsule(grid.world(sl), e_w, t_w, r, r * 0.8)
            dd = np.minimum(dd, capsule(grid.world(sl), e_w, e_w + lv.R[:, 1] * 6.0, 5.5, 5.5))  # tulip head
            composite(hu[sl], dd, METAL_HU, grid.h)
            metal[sl] |= dd < 0
    for sgn, pts in heads.items():
        for a, b in zip(pts[:-1], pts[1:]):
            a2, b2 = a + (a - b) * 0.0, b
            sl = grid.box_slices(np.minimum(a2, b2) - 6, np.maximum(a2, b2) + 6)
            if sl is None:
                continue
            dd = capsule(grid.world(sl), a2, b2, 2.8, 2.8)
            composite(hu[sl], dd, METAL_HU, grid.h)
            metal[sl] |= dd < 0
    return metal
