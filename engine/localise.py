"""Calibrated vertebra centres: the mask centroid moved by the offset its segmenter was measured to need.

The contract's centre is the centroid of the whole vertebra mask (VerSe's ctd; the real CTs' ctd files
are exactly that). A segmenter that draws the thin posterior arch (laminae, transverse and spinous
processes) short of the truth puts every centroid anterior of it: the shipped one by 1.6 mm on held-out
phantoms and 6 mm on the real CTs, while lateral and cranio-caudal errors average out. That bias is the
segmenter's, so its fitted size is stored with the segmenter's manifest entry (``centre_offset``, with
the sha256 of the file it was fitted for) by ``spinert calibrate-centres`` and applied here, per region,
along each vertebra's own posterior axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from engine import labels as L
from engine.errors import ModelError

POSTERIOR_LPS = np.array([0.0, 1.0, 0.0])  # LPS +y points to the patient's back
SUPERIOR_LPS = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class CentreOffset:
    """Millimetres to move each centre along its posterior axis, per region (``engine.labels.REGIONS``)."""

    mm: Mapping[str, float]
    segmenter_sha256: str = ""  # the fp32 file the offsets were measured on ("" = any)
    fitted: Mapping[str, Any] = field(default_factory=dict, compare=False)  # provenance (data, counts, date)

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> "CentreOffset | None":
        """The offset recorded in a segmenter manifest entry, None if it has none."""
        raw = entry.get("centre_offset")
        if raw is None:
            return None
        try:
            mm = {str(k): float(v) for k, v in raw["mm"].items()}
            if raw.get("axis", "posterior") != "posterior":
                raise ValueError(f"unknown axis {raw.get('axis')!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"segmenter manifest entry has a malformed centre_offset: {exc}") from None
        unknown = sorted(set(mm) - set(L.REGIONS))
        if unknown or not all(np.isfinite(v) for v in mm.values()):
            raise ModelError(f"segmenter centre_offset: regions must be {', '.join(L.REGIONS)} with finite mm "
                             f"(got {raw['mm']})")
        return cls(mm=mm, segmenter_sha256=str(raw.get("segmenter_sha256", "")), fitted=dict(raw.get("fitted", {})))

    def to_manifest(self) -> dict[str, Any]:
        return {"axis": "posterior", "mm": {k: round(float(v), 3) for k, v in self.mm.items()},
                "segmenter_sha256": self.segmenter_sha256, "fitted": dict(self.fitted)}

    CARD_HEADING = "## Centre offset (`spinert calibrate-centres`)"

    def card_markdown(self) -> str:
        """The model card's section on this offset (kept by every re-render of the card)."""
        f = dict(self.fitted)
        rows = [f"| {reg} | {self.mm.get(reg, 0.0):+.2f} | {f.get('counts', {}).get(reg, '?')} |" for reg in L.REGIONS]
        return "\n".join([
            self.CARD_HEADING, "",
            "Centres are this segmenter's mask centroids moved along each vertebra's posterior axis by the",
            "median residual (truth - prediction) measured on the cascade's same-label matches within",
            f"{f.get('match_mm', 20.0):g} mm: it draws the posterior arch short, so raw centroids sit anterior.",
            f"Fitted on `{f.get('data', '?')}` ({f.get('cases', '?')} cases, {f.get('matched', '?')} vertebrae, "
            f"{f.get('date', '?')}); a region with fewer than {f.get('min_count', '?')} takes the pooled median.", "",
            "| region | offset (mm) | matched vertebrae |", "| --- | --- | --- |", *rows, ""])

    def along_axis(self, labels: np.ndarray) -> np.ndarray:
        """(N,) mm for each label (0 for a region without an offset)."""
        return np.array([float(self.mm.get(L.region(int(lab)), 0.0)) for lab in np.asarray(labels).ravel()])


def posterior_axes(centers_lps: np.ndarray) -> np.ndarray:
    """(N, 3) unit posterior axis of each vertebra: LPS +y made orthogonal to the chain's local direction
    (from its neighbours up and down the spine), so a kyphotic or lordotic segment is corrected across its
    own body rather than along the scanner's y."""
    c = np.asarray(centers_lps, dtype=np.float64).reshape(-1, 3)
    n = len(c)
    if n == 0:
        return np.zeros((0, 3))
    order = np.argsort(-c[:, 2], kind="stable")  # head to feet (LPS +z is superior)
    s = c[order]
    up, down = s[np.maximum(np.arange(n) - 1, 0)], s[np.minimum(np.arange(n) + 1, n - 1)]
    t = up - down
    norm = np.linalg.norm(t, axis=1, keepdims=True)
    t = np.where(norm > 1e-6, t / np.maximum(norm, 1e-12), SUPERIOR_LPS)
    p = POSTERIOR_LPS - (t @ POSTERIOR_LPS)[:, None] * t
    pn = np.linalg.norm(p, axis=1, keepdims=True)
    p = np.where(pn > 1e-6, p / np.maximum(pn, 1e-12), POSTERIOR_LPS)  # a chain running front to back
    out = np.empty_like(p)
    out[order] = p
    return out


def apply_offset(centers_lps: np.ndarray, labels: np.ndarray, offset: CentreOffset | None) -> np.ndarray:
    """Centres moved by the offset of their label's region along their posterior axes (a copy)."""
    c = np.asarray(centers_lps, dtype=np.float64).reshape(-1, 3)
    if offset is None or len(c) == 0:
        return c.copy()
    return c + offset.along_axis(labels)[:, None] * posterior_axes(c)


def fit_offsets(residuals_lps: np.ndarray, axes: np.ndarray, labels: np.ndarray,
                min_count: int = 8) -> tuple[dict[str, float], dict[str, int]]:
    """Per-region median of the residuals (truth - prediction, LPS mm) along the posterior axes.

    A region with fewer than ``min_count`` residuals takes the median of all of them (a region seen a
    few times would otherwise be moved by noise). Returns the offsets and the residual count of each
    region (regions never seen get the pooled offset too, with count 0)."""
    r = np.asarray(residuals_lps, dtype=np.float64).reshape(-1, 3)
    along = np.einsum("nd,nd->n", r, np.asarray(axes, dtype=np.float64).reshape(-1, 3))
    if along.size == 0:
        raise ValueError("no matched vertebrae to fit centre offsets on")
    regions = np.array([L.region(int(lab)) for lab in np.asarray(labels).ravel()])
    pooled = float(np.median(along))
    mm, counts = {}, {}
    for reg in L.REGIONS:
        sel = along[regions == reg]
        counts[reg] = int(sel.size)
        mm[reg] = float(np.median(sel)) if sel.size >= min_count else pooled
    return mm, counts


def replace_card_section(card: str, section: str, heading: str) -> str:
    """``card`` with its ``heading`` section (up to the next "## ") replaced by ``section``, or with
    ``section`` appended."""
    lines = card.rstrip("\n").split("\n")
    if heading in lines:
        a = lines.index(heading)
        b = next((i for i in range(a + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:a] + lines[b:]
    return "\n".join(lines).rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
