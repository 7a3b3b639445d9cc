"""Fit the segmenter's centre offset (engine.localise) from cascade runs on CTs with ground-truth centres."""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine import labels as L
from engine.localise import CentreOffset, fit_offsets, posterior_axes
from engine.verse import read_case
from evaluation.metrics import ID_RADIUS_MM

MATCH_MM = ID_RADIUS_MM  # farther predictions are another vertebra, not an error to fit
REPORT_FILES = {"json": "centre_offset.json", "png": "centre_offset.png"}


@dataclass
class Residuals:
    """Truth minus raw prediction for every prediction with a same-label truth within MATCH_MM."""

    residual: np.ndarray  # (N, 3) LPS mm
    axes: np.ndarray  # (N, 3) posterior axis of the predicted vertebra (engine.localise.posterior_axes)
    labels: np.ndarray  # (N,) predicted = true VerSe label
    cases: list[str]
    n_cases: int

    @property
    def along(self) -> np.ndarray:
        return np.einsum("nd,nd->n", self.residual, self.axes)


def match_case(pred_lps: np.ndarray, pred_labels: np.ndarray, truth: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residuals, posterior axes and labels of one case's predictions that have a same-label truth
    within MATCH_MM (axes come from all of the case's predicted centres, as at run time)."""
    pred_lps = np.asarray(pred_lps, dtype=np.float64).reshape(-1, 3)
    axes = posterior_axes(pred_lps)
    keep, res = [], []
    for n, lab in enumerate(np.asarray(pred_labels).ravel()):
        t = truth.get(int(lab))
        if t is not None and np.linalg.norm(t - pred_lps[n]) <= MATCH_MM:
            keep.append(n)
            res.append(t - pred_lps[n])
    keep = np.asarray(keep, dtype=np.int64)
    return (np.asarray(res, dtype=np.float64).reshape(-1, 3), axes[keep],
            np.asarray(pred_labels, dtype=np.int64).ravel()[keep])


def measure(cascade, folder: str | Path, case_ids: Sequence[str],
            progress: Callable[[str], None] | None = None) -> Residuals:
    """Run ``cascade`` (built with centre_offset=False: raw mask centroids) on each case and match."""
    if cascade.centre_offset is not None:
        raise ValueError("measure() needs raw centroids: build the Cascade with centre_offset=False")
    res, axes, labs, cases = [np.zeros((0, 3))], [np.zeros((0, 3))], [np.zeros(0, np.int64)], []
    for cid in case_ids:
        case = read_case(folder, cid, require=("ct", "ctd"), check=False)
        truth = {c.label: np.asarray(c.xyz, dtype=np.float64) for c in case.centroids}
        out = cascade.run(case.path("ct"), name=cid)
        if out.vertebrae:
            r, a, lab = match_case(np.array([v.center_lps for v in out.vertebrae]),
                                   np.array([v.label for v in out.vertebrae]), truth)
            res.append(r)
            axes.append(a)
            labs.append(lab)
            cases += [cid] * len(lab)
        if progress:
            progress(cid)
    return Residuals(np.concatenate(res), np.concatenate(axes), np.concatenate(labs), cases, len(case_ids))


def fit(res: Residuals, segmenter_sha256: str, data: str, min_count: int = 8) -> CentreOffset:
    """The per-region offset (median residual along the posterior axis) with its provenance."""
    mm, counts = fit_offsets(res.residual, res.axes, res.labels, min_count=min_count)
    fitted = {"data": str(data), "cases": res.n_cases, "matched": int(len(res.labels)), "counts": counts,
              "min_count": int(min_count), "match_mm": MATCH_MM, "statistic": "median",
              "date": _dt.date.today().isoformat()}
    return CentreOffset(mm=mm, segmenter_sha256=segmenter_sha256, fitted=fitted)


def summary(res: Residuals, offset: CentreOffset) -> dict[str, Any]:
    """Localisation on the fitted cases before and after the offset (in-sample: a check that the fit
    did what it says, not a held-out figure), overall and per region."""
    after = res.residual - offset.along_axis(res.labels)[:, None] * res.axes
    regions = np.array([L.region(int(x)) for x in res.labels])

    def stats(r: np.ndarray, sel: np.ndarray) -> dict[str, Any]:
        d = np.linalg.norm(r[sel], axis=1)
        if d.size == 0:
            return {"n": 0}
        return {"n": int(d.size), "mle_mm": round(float(d.mean()), 3), "median_mm": round(float(np.median(d)), 3),
                "acc2_pct": round(100.0 * float(np.mean(d <= 2.0)), 1),
                "mean_residual_lps": [round(float(x), 3) for x in r[sel].mean(axis=0)]}

    out = {"offset_mm": dict(offset.mm), "overall": {"before": stats(res.residual, np.ones(len(regions), bool)),
                                                   "after": stats(after, np.ones(len(regions), bool))}}
    for reg in L.REGIONS:
        sel = regions == reg
        out[reg] = {"before": stats(res.residual, sel), "after": stats(after, sel)}
    return out


def plot(res: Residuals, offset: CentreOffset, path: Path) -> Path:
    """Residual along the posterior axis per region, before (raw centroids) and after the offset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = np.array([L.region(int(x)) for x in res.labels])
    along = res.along
    fig, axs = plt.subplots(1, len(L.REGIONS), figsize=(4 * len(L.REGIONS), 3.6), sharey=True)
    bins = np.linspace(-10, 10, 41)
    for ax, reg in zip(axs, L.REGIONS):
        a = along[regions == reg]
        off = float(offset.mm[reg])
        ax.hist(a, bins=bins, alpha=0.55, label="raw centroid", color="tab:red")
        ax.hist(a - off, bins=bins, alpha=0.55, label=f"after {off:+.2f} mm", color="tab:blue")
        ax.axvline(0, color="k", lw=0.8)
        pooled = a.size < int(offset.fitted.get("min_count", 0))
        ax.set_title(f"{reg} (n={a.size}{', pooled offset' if pooled else ''})")
        ax.set_xlabel("truth - prediction along posterior axis (mm)")
        ax.legend(fontsize=8, loc="upper left")
    axs[0].set_ylabel("vertebrae")
    fig.suptitle("Centre offset of the segmenter: a positive residual = prediction anterior of the truth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(res: Residuals, offset: CentreOffset, paths: dict[str, Path], context: dict[str, Any]) -> None:
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    body = {**context, "centre_offset": offset.to_manifest(), "in_sample": summary(res, offset),
            "residuals": [{"case": c, "label": int(lab), "residual_lps": [round(float(x), 3) for x in r]}
                          for c, lab, r in zip(res.cases, res.labels, res.residual)]}
    paths["json"].write_text(json.dumps(body, indent=1, allow_nan=False))
    plot(res, offset, paths["png"])
