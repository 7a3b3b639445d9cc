"""One vertebra as a signed-distance field in its local frame (u = left, v = posterior, w = superior, mm).

Parts: body (superelliptic, waisted, concave endplates, kidney-shaped posterior wall, optional fracture),
pedicles, laminae, spinous process, transverse processes, superior/inferior articular processes, and the
special shapes of C1 (ring with lateral masses), C2 (dens) and the sacrum (fused S1-S5 with alae).

Each part is evaluated only on the voxels of its own bounding box (``Canvas``): a vertebra's box is mostly
empty space, and evaluating every part everywhere was the generator's main cost.
"""
from __future__ import annotations

import numpy as np

from phantom.anatomy import Level
from phantom.grid import WorkGrid
from phantom.sdf import capsule, ell_capsule, ellipsoid, smin


class Canvas:
    """Local coordinates of a vertebra's box and its union SDF, with per-part sub-box evaluation."""

    def __init__(self, grid: WorkGrid, sl, center: np.ndarray, R: np.ndarray):
        self.grid, self.sl, self.center, self.R = grid, sl, center, R
        self.p = grid.local(sl, center, R)
        shape = tuple(s.stop - s.start for s in sl)
        self.p = tuple(np.broadcast_to(q, shape) for q in self.p)
        self.d = np.full(shape, 1e3, dtype=np.float32)
        self.body = None

    def sub(self, lo, hi):
        """Slices (relative to the canvas) of the voxels whose world box covers the local box [lo, hi]."""
        lo_w, hi_w = self.grid.world_box_of_local(self.center, self.R, np.asarray(lo), np.asarray(hi))
        s = self.grid.box_slices(lo_w, hi_w)
        if s is None:
            return None
        out = []
        for a, c in zip(s, self.sl):
            start, stop = max(a.start, c.start) - c.start, min(a.stop, c.stop) - c.start
            if stop <= start:
                return None
            out.append(slice(start, stop))
        return tuple(out)

    def add(self, fn, lo, hi, k: float = 1.5, target: str = "d") -> None:
        pad = k + 1.5
        s = self.sub(np.asarray(lo) - pad, np.asarray(hi) + pad)
        if s is None:
            return
        p = tuple(q[s] for q in self.p)
        dd = fn(p).astype(np.float32, copy=False)
        arr = self.d if target == "d" else self.body
        arr[s] = smin(arr[s], dd, k) if k > 0 else np.minimum(arr[s], dd)

    def carve(self, fn, lo, hi) -> None:
        s = self.sub(np.asarray(lo) - 1.5, np.asarray(hi) + 1.5)
        if s is None:
            return
        p = tuple(q[s] for q in self.p)
        self.d[s] = np.maximum(self.d[s], -fn(p))

    # Shorthands with automatic bounds.
    def capsule(self, a, b, r0, r1=None, k=1.5):
        r = max(r0, r1 or r0)
        a, b = np.asarray(a, float), np.asarray(b, float)
        self.add(lambda p: capsule(p, a, b, r0, r1), np.minimum(a, b) - r, np.maximum(a, b) + r, k)

    def ell_capsule(self, a, b, r_side, r_up, up=(0.0, 0.0, 1.0), k=1.5):
        r = max(r_side, r_up)
        a, b = np.asarray(a, float), np.asarray(b, float)
        self.add(lambda p: ell_capsule(p, a, b, r_side, r_up, up), np.minimum(a, b) - r, np.maximum(a, b) + r, k)

    def ellipsoid(self, c, radii, k=1.5):
        c, radii = np.asarray(c, float), np.asarray(radii, float)
        self.add(lambda p: ellipsoid(p, c, radii), c - radii, c + radii, k)


def body_sdf(p, a, b, hh, kind: str, fracture: dict | None, n_exp: float = 2.4, waist: float = 0.07):
    """Vertebral body SDF. a, b = half width/depth, hh = half height."""
    u, v, w = p
    # Kidney shape: the posterior wall is flatter and slightly indented at the midline (not cervical).
    indent = 0.0 if kind in ("cervical", "C2") else 0.12
    b_post = b * (0.93 - indent * np.clip(1.0 - (u / (0.55 * a)) ** 2, 0.0, 1.0))
    bb = np.where(v > 0, b_post, b)
    rn = ((np.abs(u) / a) ** n_exp + (np.abs(v) / bb) ** n_exp) ** (1.0 / n_exp)
    # Waist: the sides are concave, the endplates flare out (ring apophysis).
    t = np.clip(w / hh, -1.0, 1.0)
    rad = rn / (1.0 - waist * (1.0 - t * t))
    d_rad = (rad - 1.0) * min(a, b)
    h = np.full(np.broadcast_shapes(u.shape, v.shape, w.shape), hh, dtype=np.float32)
    if fracture is not None:
        # Wedge: anterior (v<0) height ratio "ant", posterior "post"; biconcave: central depression.
        s = np.clip(v / b, -1.0, 1.0)
        ratio = np.where(s < 0, fracture["mid"] + (fracture["ant"] - fracture["mid"]) * (-s),
                         fracture["mid"] + (fracture["post"] - fracture["mid"]) * s)
        h = h * ratio
        h = h - fracture.get("concave", 0.0) * np.clip(1.0 - rn ** 2, 0.0, 1.0)
    # Endplates are slightly concave (~1 mm deeper at the centre).
    h = h - 1.0 * np.clip(1.0 - rn ** 2, 0.0, 1.0)
    d_ax = np.abs(w) - h
    r = 1.5
    dr, da = d_rad + r, d_ax + r
    return np.sqrt(np.maximum(dr, 0) ** 2 + np.maximum(da, 0) ** 2) + np.minimum(np.maximum(dr, da), 0) - r


def _body(cv: Canvas, lv: Level) -> None:
    d = lv.dims
    a, b, hh = d["W"] / 2, d["D"] / 2, d["H"] / 2
    cv.body = np.full(cv.d.shape, 1e3, dtype=np.float32)
    ext = np.array([a + 2, b + 2, hh + 2])
    n_exp, waist = d.get("nexp", 2.4), d.get("waist", 0.07)
    cv.add(lambda p: body_sdf(p, a, b, hh, lv.kind, lv.fracture, n_exp, waist), -ext, ext, k=0.0, target="body")
    if lv.kind == "C2":  # dens: a peg up from the body into the atlas ring
        cv.add(lambda p: capsule(p, (0.0, -0.1 * b, hh - 2.0), (0.0, -0.05 * b, hh + 14.0), 5.2, 4.2),
               (-6, -b, hh - 8), (6, b, hh + 20), k=2.0, target="body")
    np.minimum(cv.d, cv.body, out=cv.d)


def _posterior(cv: Canvas, lv: Level) -> None:
    """Neural arch: pedicles, laminae, spinous/transverse/articular processes."""
    d = lv.dims
    b, hh = d["D"] / 2, d["H"] / 2
    cw, cd, pr = d["canW"] / 2, d["canD"], d["pedR"]
    kind = lv.kind
    H = 2 * hh
    wp = 0.18 * H  # pedicles leave the upper half of the body
    ped_h = pr * (1.1 if kind == "cervical" else 1.6)
    xs = cw + pr * 0.8
    # Short pedicles; the laminae close the canal in a V (lumbar: a rounded triangle).
    v_front, v_back = b * 0.55, b + cd * (0.32 if kind == "lumbar" else 0.45)
    lam_t = {"cervical": 2.3, "C2": 3.2}.get(kind, 3.4 if kind == "thoracic" else 4.0) * d.get("lam", 1.0)
    v_mid = b + cd + lam_t
    w_mid = wp - 0.22 * H
    for sgn in (-1.0, 1.0):
        conv = 0.25 * pr if kind == "lumbar" else 0.0  # lumbar pedicles converge anteriorly
        cv.ell_capsule((sgn * (xs - conv), v_front, wp), (sgn * xs, v_back, wp), pr, ped_h)
        # Lamina: a sloping plate from the pedicle to the midline.
        cv.ell_capsule((sgn * xs, v_back, wp - 0.05 * H), (0.0, v_mid, w_mid), lam_t, 0.42 * H, up=(0.0, -0.35, 1.0))
        if kind in ("cervical", "C2"):
            # Articular pillars (lateral masses) and the transverse process around its foramen.
            cv.ellipsoid((sgn * (xs + 1.5), v_back - 1.0, wp - 0.2 * H), (5.5, 6.0, 0.75 * H))
            tip = (sgn * (xs + d["tpL"] * 0.75), -0.2 * b, wp - 0.05 * H)
            cv.capsule((sgn * (d["W"] / 2 - 1), -0.3 * b, wp - 0.1 * H), tip, 2.0, 2.6)
            cv.capsule((sgn * (xs + 2), v_back - 2.0, wp - 0.1 * H), tip, 2.2, 2.6)
        else:
            # Superior articular process up from the pedicle-lamina junction, inferior down from the lamina.
            cv.capsule((sgn * xs, v_back + 1.0, wp), (sgn * (xs + 0.35 * pr), v_back + 1.2 * pr, wp + 0.62 * H),
                       0.9 * pr + 1.2, 0.75 * pr + 0.8)
            cv.capsule((sgn * 0.7 * xs, v_mid - 2.0, w_mid), (sgn * (0.55 * xs + 0.5 * pr), v_mid - 1.0, w_mid - 0.7 * H),
                       0.8 * pr + 0.9, 0.7 * pr + 0.6)
            # Transverse process: lateral and backwards; thoracic ones end in a knob (costal facet).
            ang = np.deg2rad(d["tpAng"])
            base = np.array([sgn * xs, v_back - 1.0, wp])
            tip = base + d["tpL"] * np.array([sgn * np.cos(ang), np.sin(ang), 0.12 if kind == "thoracic" else 0.0])
            if kind == "lumbar":
                cv.ell_capsule(base, tip, 3.0, 5.5)
            else:
                cv.capsule(base, tip, 4.4, 3.8)
                cv.ellipsoid(tip, (5.0, 5.0, 5.5))
    # Spinous process: backwards and downwards from the laminae.
    ang = np.deg2rad(d["spAng"])
    sp_from = np.array([0.0, v_mid - 1.0, w_mid])
    sp_to = sp_from + d["spL"] * np.array([0.0, np.cos(ang), -np.sin(ang)])
    sp_h = {"lumbar": 0.3 * H, "thoracic": 3.8, "cervical": 3.2, "C2": 6.0}.get(kind, 4.0)
    sp_t = (3.2 if kind == "lumbar" else 2.6) * d.get("spT", 1.0)
    cv.ell_capsule(sp_from, sp_to, sp_t, sp_h, up=(0.0, np.sin(ang), np.cos(ang)))
    if kind in ("cervical", "C2") and lv.label < 7:  # bifid tips C2-C6
        for sgn in (-1.0, 1.0):
            cv.ellipsoid(sp_to + np.array([sgn * 3.5, 0.0, 0.0]), (3.0, 3.5, 4.0))


def _c1(cv: Canvas, lv: Level) -> None:
    """Atlas: anterior arch, lateral masses, posterior arch, long transverse processes. No body."""
    d = lv.dims
    v0 = 0.45 * d["canD"]
    ax, ay = 21.0 * d["W"] / 16.0, 20.0 * d["W"] / 16.0

    def ring(p):
        u, v, w = p
        r = np.abs(np.sqrt((u / ax) ** 2 + ((v - v0) / ay) ** 2) - 1.0) * min(ax, ay)
        return np.sqrt(r ** 2 + (w / 1.6) ** 2) - 3.6

    cv.add(ring, (-ax - 5, v0 - ay - 5, -8), (ax + 5, v0 + ay + 5, 8), k=0.0)
    for sgn in (-1.0, 1.0):
        cv.ellipsoid((sgn * 0.72 * ax, v0 - 0.35 * ay, 0.0), (7.5, 9.0, 8.0), k=2.0)
        cv.capsule((sgn * 0.8 * ax, v0 - 0.3 * ay, 0.0), (sgn * (ax + d["tpL"] * 0.6), v0 - 0.2 * ay, 0.0), 3.5, 3.0, k=2.0)
    cv.ellipsoid((0.0, v0 + ay + 1.0, 0.0), (4.0, 3.0, 5.0), k=2.0)  # posterior tubercle


def sacral_segments(lv: Level) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """The fused S2-S5 segments below S1's body in the sacrum's local frame: (top, bottom, tilt, size fraction).

    The sacrum is concave forwards: its tangent starts near S1's axis (tilted back by the sacral slope) and
    turns forwards segment by segment, so the tip points down and the coccyx carries on forwards."""
    d = lv.dims
    hh, s = d["H"] / 2, d["W"] / 50.0
    c = np.array([0.0, 0.0, -hh])
    ang = np.deg2rad(d.get("sac0", 4.0))
    out = []
    for frac, h in ((0.8, 22.0), (0.62, 19.0), (0.48, 16.0), (0.36, 13.0)):
        down = np.array([0.0, np.sin(ang), -np.cos(ang)])
        c0, c = c, c + down * (h + 1.0) * s
        out.append((c0, c, float(ang), frac))
        ang -= np.deg2rad(d.get("sacK", 9.0))
    return out


def sacral_tip(lv: Level) -> tuple[np.ndarray, float]:
    """Local position of the sacrum's lower end and the tangent tilt there (radians back from S1's axis)."""
    c0, c1, ang, _ = sacral_segments(lv)[-1]
    return c1, ang - np.deg2rad(lv.dims.get("sacK", 9.0))


def _sacrum(cv: Canvas, lv: Level) -> None:
    """Sacrum: S1 body, fused S2-S5 curving forwards, alae, dorsal plate and sacral canal."""
    d = lv.dims
    a, b, hh = d["W"] / 2, d["D"] / 2, d["H"] / 2
    _body(cv, lv)
    rc = 2.5 + d["canW"] / 3.5
    canal = []
    for c0, c, ang, frac in sacral_segments(lv):
        down = np.array([0.0, np.sin(ang), -np.cos(ang)])
        back = np.array([0.0, np.cos(ang), np.sin(ang)])
        r_seg = frac * a * 0.55
        cv.capsule(c0 + down * 2, c, r_seg, frac * a * 0.5, k=3.0)
        # Dorsal plate (laminae fused with the median crest) behind the canal, closing in as the canal narrows.
        gap0, gap1 = r_seg + 6.0 + 16.0 * frac, r_seg + 4.0 + 12.0 * frac
        cv.ell_capsule(c0 + back * gap0, c + back * gap1, 2.5 + 2.0 * frac,
                       0.9 * frac * a + 6.0, up=(1.0, 0.0, 0.0), k=3.0)
        if frac > 0.5:  # alae
            for sgn in (-1.0, 1.0):
                # Wings reaching out to the sacro-iliac joints: wide, flatter front to back than tall.
                cv.ellipsoid(c0 + np.array([sgn * (a * (0.6 + frac * 0.6)), 0.3 * b, 0.0]) + (c - c0) * 0.3,
                             (frac * 30.0, 0.42 * b + 6.0, 0.75 * np.linalg.norm(c - c0) + 5.0), k=3.0)
        # The canal runs between the segment bodies and the dorsal plate.
        canal.append((c0 + back * (0.5 * (r_seg + gap0)), c + back * (0.5 * (r_seg + gap1)), rc * (0.55 + 0.45 * frac)))
    for sgn in (-1.0, 1.0):  # S1 superior articular processes
        cv.capsule((sgn * (d["canW"] / 2 + 4), b + 6.0, 0.0), (sgn * (d["canW"] / 2 + 5), b + 10.0, hh + 8.0), 5.0, 4.0, k=3.0)
    # Canal: from behind S1's body down along the segments.
    a0 = np.array([0.0, b + 7.0, hh + 5.0])
    for p0, p1, r in [(a0, canal[0][0], rc)] + canal:
        cv.carve(lambda p, p0=p0, p1=p1, r=r: ell_capsule(p, p0, p1, r, 4.0 + 0.1 * r, up=(0.0, 1.0, 0.0)),
                 np.minimum(p0, p1) - r - 6, np.maximum(p0, p1) + r + 6)


def render(grid: WorkGrid, sl, lv: Level) -> Canvas:
    """Evaluate a vertebra on the voxels ``sl`` of the working grid. ``cv.d``: whole SDF, ``cv.body``: body."""
    cv = Canvas(grid, sl, lv.center, lv.R)
    if lv.kind == "C1":
        _c1(cv, lv)
    elif lv.kind == "sacrum":
        _sacrum(cv, lv)
    else:
        _body(cv, lv)
        _posterior(cv, lv)
    return cv


def local_box(lv: Level) -> tuple[np.ndarray, np.ndarray]:
    """Local (u, v, w) bounds (mm) that hold the whole vertebra."""
    d = lv.dims
    if lv.kind == "sacrum":
        return np.array([-75.0, -d["D"] / 2 - 8, -125.0]), np.array([75.0, d["D"] / 2 + 70.0, d["H"] / 2 + 22.0])
    if lv.kind == "C1":
        return np.array([-50.0, -25.0, -14.0]), np.array([50.0, 45.0, 14.0])
    side = d["W"] / 2 + d["tpL"] + 12.0
    back = d["D"] / 2 + d["canD"] + d["spL"] + 14.0
    lo = np.array([-side, -d["D"] / 2 - 6.0, -d["H"] / 2 - 0.75 * d["spL"] - 22.0])
    hi = np.array([side, back, d["H"] / 2 + 24.0])
    return lo, hi
