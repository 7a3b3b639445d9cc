"""Everything that is not bone: torso outline, subcutaneous fat, muscles, lungs, mediastinum, abdominal
organs, bowel with gas, vessels, and the scanner table. Built slice-parametrically: every axial slice z of
the working grid gets parameters interpolated along the spine (its anatomical position, the spine's x/y),
and shapes are 2-D ellipses/superellipses broadcast over [z, y, x]."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from phantom.anatomy import Patient
from phantom.grid import WorkGrid


def spine_track(pat: Patient) -> dict[str, np.ndarray]:
    """Spine reference points sorted by z: body centre x, y, anatomical position, body half depth/width."""
    pts = []
    for lv in pat.levels:
        pts.append((lv.center[2], lv.center[0], lv.center[1], lv.pos, lv.dims["D"] / 2, lv.dims["W"] / 2))
        if lv.kind == "sacrum":
            for k, (v, w) in enumerate(((12.0, -45.0), (30.0, -85.0), (45.0, -120.0))):
                q = lv.center + lv.R @ (np.array([0.0, v, w]) * pat.scale)
                pts.append((q[2], q[0], q[1], 25.0 + 0.8 * (k + 1), lv.dims["D"] / 2 * (0.8 - 0.2 * k),
                            lv.dims["W"] / 2 * (0.8 - 0.2 * k)))
    pts.sort(key=lambda t: t[0])
    a = np.array(pts)
    # The spine continues straight above C1 (head/neck) for the torso model.
    top = a[-1].copy()
    top[0] += 200.0
    top[3] = 0.0
    bot = a[0].copy()
    bot[0] -= 200.0
    bot[3] += 2.0
    a = np.vstack([bot, a, top])
    return {"z": a[:, 0], "x": a[:, 1], "y": a[:, 2], "pos": a[:, 3], "b": a[:, 4], "a": a[:, 5]}


def _smooth_field(shape, rng, h: float, corr_mm: float, coarse_mm: float = 4.0) -> np.ndarray:
    """Unit-variance smooth random field: Gaussian noise on a coarse grid, smoothed, upsampled linearly."""
    cs = max(1.0, coarse_mm / h)
    small = tuple(int(np.ceil(s / cs)) + 2 for s in shape)
    f = rng.standard_normal(small).astype(np.float32)
    f = ndimage.gaussian_filter(f, corr_mm / (cs * h), mode="wrap")
    f /= f.std() + 1e-6
    for ax, n in enumerate(shape):  # separable linear upsampling, one axis at a time
        pos = np.arange(n, dtype=np.float32) / cs
        i0 = np.floor(pos).astype(np.intp)
        wt = (pos - i0).reshape([-1 if a == ax else 1 for a in range(3)])
        f = np.take(f, i0, axis=ax) * (1 - wt) + np.take(f, i0 + 1, axis=ax) * wt
    return f


def fine_texture(shape, rng, h: float) -> np.ndarray:
    """A ~1.5 mm-grained unit-variance texture (trabeculae, parenchyma)."""
    return _smooth_field(shape, rng, h, 0.6, 1.5)


def paint_muscle_quality(grid: WorkGrid, hu: np.ndarray, inner: np.ndarray, fat_hu: float, pat: Patient,
                         rng: np.random.Generator) -> None:
    """Muscle density and fatty infiltration (myosteatosis), which grow with age as bone density falls.

    Healthy paraspinal muscle reads 40-55 HU; in older patients it reads 20-40 HU and is streaked with fat.
    The real CTs' soft tissue around the spine is ~25 HU below the phantoms' (`spinert realism`).
    """
    older = pat.bone_hu < 140.0
    muscle_hu = rng.uniform(20.0, 42.0) if older else rng.uniform(32.0, 55.0)
    infiltration = rng.uniform(0.08, 0.35) if older else rng.uniform(0.0, 0.15)
    hu[inner & (hu > fat_hu * 0.5)] = muscle_hu
    streaks = _smooth_field(hu.shape, rng, grid.h, 2.5, 2.0)
    thr = np.quantile(streaks[::4, ::4, ::4], 1.0 - infiltration)
    # Partial volume: a streak is thinner than a voxel, so it reads between fat and muscle.
    hu[inner & (streaks > thr)] = 0.5 * (fat_hu + muscle_hu)


def paint_soft_tissue(grid: WorkGrid, hu: np.ndarray, pat: Patient, rng: np.random.Generator,
                      muscle_rng: np.random.Generator | None = None) -> dict:
    """Fill ``hu`` (initialised to air) with the body. Returns per-slice geometry used by others (table).

    ``muscle_rng`` (generator 4) draws the muscles' composition from its own stream, so every other
    property of a seed stays what it was.
    """
    x, y, z = grid.axes()
    tr = spine_track(pat)
    pos = np.interp(z, tr["z"], tr["pos"])[:, None, None].astype(np.float32)
    sx = np.interp(z, tr["z"], tr["x"])[:, None, None].astype(np.float32)
    sy = np.interp(z, tr["z"], tr["y"])[:, None, None].astype(np.float32)
    sb = np.interp(z, tr["z"], tr["b"])[:, None, None].astype(np.float32)
    sa = np.interp(z, tr["z"], tr["a"])[:, None, None].astype(np.float32)
    X = x[None, None, :]
    Y = y[None, :, None]
    s, f, tw = pat.scale, pat.fat, pat.torso_w
    p1 = pos[:, 0, 0]

    # Torso outline (inside the subcutaneous fat) and fat thickness, as functions of the level.
    kp = [0, 6.5, 8.5, 12, 18, 21, 24, 26, 28]
    W_in = np.interp(p1, kp, [55, 58, 135, 140, 142, 140, 145, 160, 150]) * s * tw
    D_in = np.interp(p1, kp, [52, 54, 90, 100, 105, 100, 100, 100, 95]) * s
    fat_t = np.interp(p1, kp, [6, 6, 10, 12, 14, 18, 20, 22, 22]) * f
    # Distance from the body centre to the posterior skin: the spinous processes plus the paraspinal muscles.
    back = np.interp(p1, kp, [50, 52, 62, 70, 75, 82, 88, 70, 55]) * s
    W_in, D_in, fat_t, back = (v.astype(np.float32)[:, None, None] for v in (W_in, D_in, fat_t, back))
    y_back_in = sy + back  # inner (muscle) surface behind the spine
    cy = y_back_in - D_in
    cx = sx + rng.normal(0, 4)

    def superell(Wa, Da):
        """<= 1 inside: an ellipse in front, a flatter (superellipse n=4) back lying on the table."""
        dx2 = ((X - cx) / Wa) ** 2
        dy2 = ((Y - cy) / Da) ** 2
        return np.where(Y > cy, dx2 * dx2 + dy2 * dy2, dx2 + dy2)

    r_in = superell(W_in, D_in)
    r_out = superell(W_in + fat_t, D_in + fat_t)
    body = r_out <= 1.0
    muscle_hu = rng.uniform(35.0, 55.0)
    fat_hu = rng.uniform(-115.0, -85.0)
    hu[body] = fat_hu
    inner = r_in <= 1.0
    hu[inner] = muscle_hu
    # Fascial fat planes between muscles (zero crossings of a smooth field: thin curvy lines), and
    # fatty infiltration of the muscles, more with more fat.
    planes = _smooth_field(hu.shape, rng, grid.h, 14.0, 4.0)
    fat_plane = inner & (np.abs(planes) < 0.05 + 0.05 * f)
    hu[fat_plane] = fat_hu * 0.9
    if muscle_rng is not None:
        paint_muscle_quality(grid, hu, inner, fat_hu, pat, muscle_rng)
    # Skin: a thin denser rim.
    skin = body & (r_out > 1.0 - 4.0 / (W_in + fat_t))
    hu[skin] = 30.0

    # Cavity inside the muscle wall: thorax (lungs, mediastinum) or abdomen (organs, bowel, fat).
    wall = np.interp(p1, kp, [60, 60, 18, 14, 12, 14, 14, 16, 16])[:, None, None].astype(np.float32)
    cav_c_y = cy - 4.0
    cav_W = np.maximum(W_in - wall, 5.0)
    cav_D = np.maximum(D_in - wall * 0.8, 5.0)
    r_cav = np.sqrt(((X - cx) / cav_W) ** 2 + ((Y - cav_c_y) / cav_D) ** 2)
    # The cavity does not reach behind the vertebral bodies (the paraspinal muscles are there).
    adx = np.abs(X - sx)
    behind = (Y - sy) > (sb * 0.2 + 0.35 * np.maximum(0.0, 40.0 - adx))
    # In the chest the lungs reach behind the vertebral bodies into the paravertebral gutters, up to the ribs.
    behind_th = (Y - sy) > np.clip(0.55 * (adx - sa - 6.0), -0.5 * sb, 26.0 * s)
    cav_all = inner & (r_cav <= 1.0) & (pos > 7.5)

    # Diaphragm: lungs above, abdomen below. In level units: posterior recess ~T12, dome ~T9/T10.
    ant = np.clip((sy - Y) / (cav_D * 1.6), 0.0, 1.0)
    lat = np.clip(np.abs(X - sx) / (cav_W + 1e-3), 0.0, 1.0)
    right = (X < sx).astype(np.float32)
    diaph = pat.diaphragm - 2.2 * ant - 1.2 * np.exp(-((lat - 0.5) / 0.25) ** 2) - 0.5 * right
    thorax = cav_all & (pos < diaph) & ~behind_th
    cavity = cav_all & ~behind
    abdomen = cavity & (pos >= diaph) & (pos < 25.2)
    pelvis_cav = cavity & (pos >= 25.2)

    # Mediastinum: between the lungs, wider anteriorly (the heart sits anterior-left, low).
    med_half = 18.0 + 30.0 * ant + 25.0 * np.clip(pos - 12.0, 0, 5) / 5 * ant
    med_cx = sx + 12.0 * ant * np.clip(pos - 11.0, 0, 5) / 5
    mediast = thorax & (np.abs(X - med_cx) < med_half * s)
    spine_keepout = (np.abs(X - sx) < sa + 6.0) & ((Y - sy) > -sb - 6.0)
    lungs = thorax & ~mediast & ~spine_keepout
    tex = _smooth_field(hu.shape, rng, grid.h, 3.0, 3.0)
    hu[lungs] = -860.0 + 25.0 * tex[lungs]
    vessels = lungs & (tex > 2.0)
    hu[vessels] = -300.0 + 200.0 * rng.random()
    hu[mediast & ~spine_keepout] = np.where(tex[mediast & ~spine_keepout] > 0.6, fat_hu * 0.8, 40.0)

    # Abdomen: liver (right), spleen (left), kidneys, psoas; the rest bowel loops in visceral fat with gas.
    coarse = _smooth_field(hu.shape, rng, grid.h, 9.0, 4.0)
    visc_fat_frac = np.clip(0.3 + 0.2 * (f - 1.0), 0.1, 0.65)
    thr_fat = np.quantile(coarse[::4, ::4, ::4], 1.0 - visc_fat_frac)
    ab = abdomen | pelvis_cav
    bowel_hu = rng.uniform(15.0, 40.0)
    hu[ab] = np.where(coarse[ab] > thr_fat, fat_hu, bowel_hu + 10.0 * tex[ab])
    gas_frac = rng.uniform(0.02, 0.12)
    gas_field = _smooth_field(hu.shape, rng, grid.h, 6.0, 4.0)
    thr_gas = np.quantile(gas_field[::4, ::4, ::4], 1.0 - gas_frac)
    gas = ab & (gas_field > thr_gas) & (coarse <= thr_fat)
    hu[gas] = -1000.0 + 30.0 * tex[gas]
    # Liver: big, right upper quadrant, just below the diaphragm.
    liver_hu = rng.uniform(50.0, 70.0) + (40.0 if pat.contrast else 0.0)
    liver = abdomen & (X < sx + 10.0) & (pos < diaph + 3.5) & (np.abs(X - sx) > 8.0) & (Y - sy < sb + 10)
    hu[liver] = liver_hu + 6.0 * tex[liver]
    spleen = abdomen & (X > sx + 40.0 * s) & (pos < diaph + 1.8) & (Y > sy - 60.0 * s)
    hu[spleen] = liver_hu - 5.0 + 6.0 * tex[spleen]
    # Kidneys T12-L3, lateral to the psoas, posterior.
    kid_hu = rng.uniform(25.0, 40.0) + (120.0 if pat.contrast else 0.0)
    for sgn, dz in ((-1.0, -0.3), (1.0, 0.0)):
        kc = 20.5 + dz + rng.normal(0, 0.3)
        kx = sx + sgn * (sa + 42.0 * s)
        q = (((X - kx) / (28.0 * s)) ** 2 + ((Y - (sy + 5.0 * s)) / (22.0 * s)) ** 2 + ((pos - kc) / 1.9) ** 2)
        hu[(q <= 1.0 + 0.8 * f) & inner & ~behind] = fat_hu  # perirenal fat
        kid = (q <= 1.0) & inner & ~behind
        hu[kid] = kid_hu + 5.0 * tex[kid]
    # Psoas: from T12 down, beside the bodies, growing to L5.
    ps_r = np.clip((pos - 19.0) / 5.0, 0.0, 1.0) * 20.0 * s + 5.0
    for sgn in (-1.0, 1.0):
        px = sx + sgn * (sa + ps_r * 0.8)
        q = ((X - px) / ps_r) ** 2 + ((Y - (sy - 0.2 * sb)) / (ps_r * 0.9)) ** 2
        zone = (pos > 19.0) & (pos < 26.5) & inner
        hu[(q <= 1.0 + 0.5 * f) & zone & ~(q <= 1.0)] = fat_hu  # fat around the psoas
        hu[(q <= 1.0) & zone] = muscle_hu
    # Bladder, low in the pelvis.
    blad = pelvis_cav & (((X - sx) / 45.0) ** 2 + ((Y - (cy - 0.3 * D_in)) / 35.0) ** 2 + ((pos - 27.3) / 0.8) ** 2 <= 1)
    hu[blad] = rng.uniform(0.0, 15.0)

    # Aorta (descending, left-anterior of the spine; bifurcates at L4) and IVC (right).
    aorta_hu = rng.uniform(300.0, 450.0) if pat.contrast else rng.uniform(35.0, 50.0)
    ar = 11.0 * s
    for (dx, dy, r, top, bot, val) in (
        (15.0, -sb - 10.0, ar, 8.5, 23.0, aorta_hu),
        (-22.0, -sb - 12.0, 10.0 * s, 18.0, 23.5, aorta_hu * 0.6 if pat.contrast else 40.0),
    ):
        vessel = (((X - (sx + dx * s)) ** 2 + (Y - (sy + dy)) ** 2) <= r * r) & (pos > top) & (pos < bot) & inner
        hu[vessel] = val
    # Calcified aortic wall plaques in some patients.
    if rng.random() < 0.3:
        ring = ((((X - (sx + 15.0 * s)) ** 2 + (Y - (sy - sb - 10.0)) ** 2) - ar * ar) ** 2 < (ar * 1.5) ** 2) \
            & (tex > 2.2) & (pos > 17) & (pos < 23.0) & inner
        hu[ring] = 500.0

    # Trachea (and, below the carina, the main bronchi merge into the mediastinum): an air tube in front of
    # the cervical and upper thoracic spine; the oesophagus between it and the spine.
    tr_y = sy - sb - np.interp(p1, [1, 7, 11], [22.0, 20.0, 28.0])[:, None, None].astype(np.float32) * s
    tr = ((X - sx) ** 2 + (Y - tr_y) ** 2 <= (8.0 * s) ** 2) & (pos > 3.0) & (pos < 11.5) & inner
    hu[tr] = -980.0
    oe = ((X - sx - 4.0) ** 2 + (Y - (sy - sb - 6.0)) ** 2 <= (6.0 * s) ** 2) & (pos > 4.0) & (pos < 18.0) & inner
    hu[oe] = 35.0
    hu[oe & (tex > 1.5)] = -900.0
        # Scanner table behind the patient (supine): a curved carbon plate with a foam core.
    y_skin = y_back_in + fat_t
    table = None
    if pat.table:
        gap = pat.table_gap
        dy = Y - (y_skin + gap) - 0.0015 * (X - cx) ** 2
        shell = ((dy > 0) & (dy < 2.0)) | ((dy > 14.0) & (dy < 16.0))
        foam = (dy >= 2.0) & (dy <= 14.0)
        wide = np.abs(X - cx) < 230.0
        hu[shell & wide & ~body] = 150.0
        hu[foam & wide & ~body] = -900.0
        table = True
    return {"table": table}
