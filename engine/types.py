"""Typed records that cross stage boundaries. Data flows one way: Volume -> Detections -> ... -> SpineResult."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A CT as stored on disk, in SimpleITK's conventions.

    ``array`` is indexed [k, j, i] (SimpleITK's GetArrayFromImage order), so voxel index (i, j, k) is
    array[k, j, i]. ``spacing``/``origin`` are (i, j, k)-ordered mm; ``direction`` is the row-major 3x3
    cosine matrix mapping index axes to LPS. Physical point = origin + direction @ (spacing * ijk).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major
    name: str = "ct"

    @property
    def size(self) -> tuple[int, int, int]:
        """(i, j, k) size, as SimpleITK's GetSize()."""
        k, j, i = self.array.shape
        return (i, j, k)

    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices, shape (..., 3), to LPS mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix().T

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        lps = np.asarray(lps, dtype=np.float64)
        return ((lps - np.asarray(self.origin)) @ self.direction_matrix()) / np.asarray(self.spacing)

    def geometry(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(o) for o in self.origin],
            "direction": [float(d) for d in self.direction],
        }


@dataclass
class Vertebra:
    """One vertebra as the engine reports it. Centre in LPS mm (contract)."""

    label: int  # VerSe ID
    name: str
    # The whole vertebra's centroid as VerSe defines it: the mask's centroid, moved by the segmenter's
    # fitted centre offset when it has one (engine.localise).
    center_lps: tuple[float, float, float]
    confidence: float
    # Mask cropped to its box, in input-voxel geometry: mask[k, j, i] covers
    # i in [offset_ijk[0], offset_ijk[0] + shape_ijk[0]), and likewise for j, k.
    mask: np.ndarray | None = None  # bool, array order [k, j, i]
    offset_ijk: tuple[int, int, int] = (0, 0, 0)
    scores: dict[int, float] = field(default_factory=dict)  # label -> probability from the labeller
    # Found by the chain logic (a level the detector missed, a vertebra cut at an end of the chain, a
    # loose piece at the scan's face), not by the detector: a controller may want to trust it less.
    recovered: bool = False

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        if self.mask is None:
            return (0, 0, 0)
        k, j, i = self.mask.shape
        return (i, j, k)

    def to_json(self) -> dict[str, Any]:
        x, y, z = (float(c) for c in self.center_lps)
        return {"label": int(self.label), "X": x, "Y": y, "Z": z, "name": self.name,
                "confidence": float(self.confidence), "recovered": bool(self.recovered)}


@dataclass
class SpineResult:
    """The cascade's output for one CT."""

    volume_id: str
    geometry: dict[str, Any]  # Volume.geometry() of the input
    vertebrae: list[Vertebra]
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    precision: str = ""
    models: dict[str, str] = field(default_factory=dict)  # model name -> version/sha256
    info: dict[str, Any] = field(default_factory=dict)  # diagnostics (e.g. slices run, box/candidate counts)

    def label_map(self) -> np.ndarray:
        """Full uint8 label map in input geometry, array order [k, j, i]."""
        i, j, k = self.geometry["size"]
        out = np.zeros((k, j, i), dtype=np.uint8)
        for v in self.vertebrae:
            if v.mask is None:
                continue
            oi, oj, ok = v.offset_ijk
            si, sj, sk = v.shape_ijk
            view = out[ok:ok + sk, oj:oj + sj, oi:oi + si]
            view[v.mask] = v.label
        return out
