"""The ~1 mm working grid the anatomy is drawn on: LPS-aligned (identity direction), array [z, y, x].

Drawing is compositing: each structure gives a signed distance d (mm) on the voxels of its bounding box;
its occupancy ``clip(0.5 - d / h, 0, 1)`` blends its HU over what is already there (anti-aliased edges,
so the scanner blur later sees partial volumes, not staircases).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class WorkGrid:
    origin: np.ndarray  # LPS mm of voxel [0, 0, 0]
    h: float            # isotropic spacing (mm)
    shape: tuple[int, int, int]  # (nz, ny, nx)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, z coordinates of the voxel centres along each array axis (float32)."""
        nz, ny, nx = self.shape
        x = (self.origin[0] + self.h * np.arange(nx)).astype(np.float32)
        y = (self.origin[1] + self.h * np.arange(ny)).astype(np.float32)
        z = (self.origin[2] + self.h * np.arange(nz)).astype(np.float32)
        return x, y, z

    def box_slices(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Array slices [z, y, x] of the voxels inside the world box [lo, hi] (None if it misses the grid)."""
        i0 = np.floor((np.asarray(lo) - self.origin) / self.h).astype(int)
        i1 = np.ceil((np.asarray(hi) - self.origin) / self.h).astype(int) + 1
        n = np.array(self.shape[::-1])
        i0 = np.clip(i0, 0, n)
        i1 = np.clip(i1, 0, n)
        if np.any(i1 <= i0):
            return None
        return (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))

    def world(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates (x, y, z) of a slice's voxels."""
        x = (self.origin[0] + self.h * np.arange(sl[2].start, sl[2].stop)).astype(np.float32)[None, None, :]
        y = (self.origin[1] + self.h * np.arange(sl[1].start, sl[1].stop)).astype(np.float32)[None, :, None]
        z = (self.origin[2] + self.h * np.arange(sl[0].start, sl[0].stop)).astype(np.float32)[:, None, None]
        return x, y, z

    def local(self, sl, center: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates of a slice's voxels in a local frame (R: local -> world, columns = local axes)."""
        x, y, z = self.world(sl)
        x = x - np.float32(center[0])
        y = y - np.float32(center[1])
        z = z - np.float32(center[2])
        R = R.astype(np.float32)
        return tuple(x * R[0, j] + y * R[1, j] + z * R[2, j] for j in range(3))  # type: ignore[return-value]

    def world_box_of_local(self, center, R, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounds of a local box [lo, hi]."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        w = corners @ R.T + center
        return w.min(axis=0), w.max(axis=0)


def occupancy(d: np.ndarray, h: float) -> np.ndarray:
    return np.clip(0.5 - d / h, 0.0, 1.0)


def composite(hu: np.ndarray, d: np.ndarray, value, h: float) -> None:
    """Blend ``value`` (scalar or array) into ``hu`` in place where the SDF ``d`` is inside."""
    occ = occupancy(d, h)
    hu += occ * (value - hu)


def bone_value(d: np.ndarray, cancellous, cortex_hu: float, cortex_mm: float, h: float):
    """HU of bone at depth -d: a cortical shell of ``cortex_mm`` over cancellous bone."""
    fc = np.clip((cortex_mm + d) / h + 0.5, 0.0, 1.0)
    return cancellous + fc * (cortex_hu - cancellous)
