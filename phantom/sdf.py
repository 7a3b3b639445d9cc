"""Signed-distance primitives (negative inside, mm) evaluated on coordinate arrays.

They are approximate away from the surface (good enough: we only need the sign, a sub-voxel edge for
anti-aliasing and a depth of a few mm for the cortical shell).
"""
from __future__ import annotations

import numpy as np


def capsule(p: tuple[np.ndarray, ...], a, b, r0: float, r1: float | None = None) -> np.ndarray:
    """Segment a->b with radius r0 at a, r1 at b (a tapered capsule)."""
    r1 = r0 if r1 is None else r1
    a = np.asarray(a, dtype=np.float32)
    ab = np.asarray(b, dtype=np.float32) - a
    l2 = float(ab @ ab) or 1e-6
    pa = [p[i] - a[i] for i in range(3)]
    t = np.clip((pa[0] * ab[0] + pa[1] * ab[1] + pa[2] * ab[2]) / l2, 0.0, 1.0)
    d2 = sum((pa[i] - t * ab[i]) ** 2 for i in range(3))
    return np.sqrt(d2) - (r0 + (r1 - r0) * t)


def ell_capsule(p, a, b, r_side: float, r_up: float, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Capsule with an elliptical cross-section: radius r_up along ``up`` (made orthogonal to a->b), r_side across."""
    a = np.asarray(a, dtype=np.float32)
    ab = np.asarray(b, dtype=np.float32) - a
    L = float(np.linalg.norm(ab)) or 1e-6
    t_hat = ab / L
    up = np.asarray(up, dtype=np.float32)
    up = up - (up @ t_hat) * t_hat
    up /= np.linalg.norm(up) + 1e-9
    side = np.cross(t_hat, up)
    pa = [p[i] - a[i] for i in range(3)]
    s = pa[0] * t_hat[0] + pa[1] * t_hat[1] + pa[2] * t_hat[2]
    sc = np.clip(s, 0.0, L)
    q_up = pa[0] * up[0] + pa[1] * up[1] + pa[2] * up[2]
    q_side = pa[0] * side[0] + pa[1] * side[1] + pa[2] * side[2]
    q_t = s - sc
    k = np.sqrt((q_up / r_up) ** 2 + (q_side / r_side) ** 2 + (q_t / min(r_up, r_side)) ** 2)
    return (k - 1.0) * min(r_up, r_side)


def ellipsoid(p, c, radii, R: np.ndarray | None = None) -> np.ndarray:
    """Ellipsoid centred at c with semi-axes ``radii`` along the columns of R (identity if None)."""
    q = [p[i] - c[i] for i in range(3)]
    if R is not None:
        q = [q[0] * R[0, j] + q[1] * R[1, j] + q[2] * R[2, j] for j in range(3)]
    k = np.sqrt(sum((q[i] / radii[i]) ** 2 for i in range(3)))
    return (k - 1.0) * min(radii)


def rbox(p, c, half, R: np.ndarray | None = None, rounding: float = 0.0) -> np.ndarray:
    """Rounded box centred at c, half-extents ``half`` along the columns of R."""
    q = [p[i] - c[i] for i in range(3)]
    if R is not None:
        q = [q[0] * R[0, j] + q[1] * R[1, j] + q[2] * R[2, j] for j in range(3)]
    d = [np.abs(q[i]) - (half[i] - rounding) for i in range(3)]
    outside = np.sqrt(sum(np.maximum(di, 0.0) ** 2 for di in d))
    inside = np.minimum(np.maximum(np.maximum(d[0], d[1]), d[2]), 0.0)
    return outside + inside - rounding


def smin(a: np.ndarray, b: np.ndarray, k: float = 2.0) -> np.ndarray:
    """Smooth union (polynomial smooth min): fillets where parts meet, like bone does."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)
