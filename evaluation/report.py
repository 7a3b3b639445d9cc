"""Evaluate prediction folders against GT folders; aggregate; write JSON, a markdown table and a plot.

Prediction folders are what `spinert run` writes: for the GT case `<id>` (CT `<id>_ct.nii.gz`) the files
are `<id>_ct_seg-vert_msk.nii.gz` and `<id>_ct_ctd.json`; `<id>_seg-vert_msk.nii.gz` / `<id>_ctd.json`
are accepted too (so a GT folder scores against itself).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from engine import labels as L
from engine.errors import DatasetError, InputError, OutputExistsError
from engine.io import read_volume
from engine.verse import SUFFIX, list_cases, read_case, read_ctd
from evaluation.metrics import (ACC_THRESHOLDS_MM, ID_RADIUS_MM, SEG_KEYS, CaseScore, PredictionScore, VertebraScore,
                                evaluate_case)

REPORT_FILES = {"json": "evaluation.json", "md": "evaluation.md", "png": "evaluation.png"}


def _stats(values: Iterable) -> dict:
    """mean/std/median/min/max over the defined values; ``undefined`` counts None/NaN/inf ones."""
    vals = list(values)
    ok = np.asarray([v for v in vals if v is not None and math.isfinite(v)], float)
    out = {"n": int(len(ok)), "undefined": len(vals) - int(len(ok))}
    if len(ok):
        out.update(mean=float(ok.mean()), std=float(ok.std()), median=float(np.median(ok)),
                   min=float(ok.min()), max=float(ok.max()))
    else:
        out.update(mean=None, std=None, median=None, min=None, max=None)
    return out


def _rate(flags: Iterable) -> float | None:
    flags = [bool(f) for f in flags if f is not None]
    return float(np.mean(flags)) if flags else None


def summarise(verts: list[VertebraScore], preds: list[PredictionScore],
              cases: list[CaseScore] | None = None) -> dict:
    """Aggregate metrics of a set of vertebrae (a whole report, a region or a label)."""
    located = [v for v in verts if v.has_centroid]
    masked = [v for v in verts if v.has_mask]
    out: dict = {"vertebrae": len(located), "vertebrae_with_mask": len(masked),
                 "mle_mm": _stats(v.loc_error_mm for v in located if v.loc_error_mm is not None),
                 "mle_matched_mm": _stats(v.match_mm for v in located if v.detected),
                 "identification_rate": _rate(v.identified for v in located)}
    for t in ACC_THRESHOLDS_MM:
        out[f"acc_{t:.1f}mm"] = _rate(v.loc_error_mm is not None and v.loc_error_mm <= t for v in located)
    out["detected"] = sum(bool(v.detected) for v in located)
    out["missed"] = sum(v.detected is False for v in located)
    out["extra"] = sum(p.matched_label is None for p in preds)
    # Of the predictions, those the chain logic found (the detector did not), and of the extras.
    out["recovered"] = sum(p.recovered is True for p in preds)
    out["extra_recovered"] = sum(p.recovered is True and p.matched_label is None for p in preds)
    out["predictions"] = len(preds)
    out["labelling_accuracy"] = _rate(v.labelled_correctly for v in located)
    # Precision of the predicted labels: predictions carrying a label that sit on that GT vertebra.
    out["labelling_precision"] = _rate(p.correct for p in preds)
    if cases is not None:
        out["cases"] = len(cases)
        out["sequence_accuracy"] = _rate(c.sequence_correct for c in cases)
        out["cases_without_prediction"] = sum(c.missing_prediction for c in cases)
    out.update({k: _stats(getattr(v, k) for v in masked) for k in SEG_KEYS})
    out["empty_predicted_masks"] = sum(bool(v.pred_empty) for v in masked)
    return out


@dataclass
class EvaluationReport:
    cases: list[CaseScore]
    gt: str | None = None
    pred: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def vertebrae(self) -> list[VertebraScore]:
        return [v for c in self.cases for v in c.vertebrae]

    @property
    def predictions(self) -> list[PredictionScore]:
        return [p for c in self.cases for p in c.predictions]

    def summary(self) -> dict:
        return summarise(self.vertebrae, self.predictions, self.cases)

    def by_region(self) -> dict[str, dict]:
        out = {}
        for reg, ids in L.REGIONS.items():
            vs = [v for v in self.vertebrae if v.label in ids]
            if vs:
                out[reg] = summarise(vs, [p for p in self.predictions if p.label in ids])
        return out

    def by_extent(self) -> dict[str, dict]:
        """Whole vertebrae and vertebrae the field of view cuts (VertebraScore.at_face), each summarised."""
        out = {}
        for key, flag in (("whole", False), ("cut by the FOV", True)):
            vs, ps = [], []
            for c in self.cases:  # predictions follow the GT vertebra they matched; extras belong to neither
                mine = [v for v in c.vertebrae if v.has_mask and v.at_face is flag]
                labs = {v.label for v in mine}
                vs += mine
                ps += [p for p in c.predictions if p.matched_label in labs]
            if vs:
                out[key] = summarise(vs, ps)
        return out

    def by_label(self) -> dict[str, dict]:
        labs = sorted({v.label for v in self.vertebrae}, key=L.ORDER_INDEX.get)
        return {L.name(lab): summarise([v for v in self.vertebrae if v.label == lab],
                                       [p for p in self.predictions if p.label == lab]) for lab in labs}

    def to_json(self) -> dict:
        return {"schema": "spinert.evaluation/1", "gt": self.gt, "pred": self.pred, "notes": self.notes,
                "definitions": {"id_radius_mm": ID_RADIUS_MM, "acc_thresholds_mm": list(ACC_THRESHOLDS_MM),
                                "see": "evaluation/metrics.py module docstring"},
                "summary": self.summary(), "regions": self.by_region(), "extent": self.by_extent(),
                "labels": self.by_label(),
                "cases": [c.to_json() for c in self.cases]}

    def markdown(self, per_label: bool = True) -> str:
        return _markdown(self, per_label)

    def plot(self, path: str | os.PathLike) -> Path:
        from evaluation.plot import plot_report
        return plot_report(self, Path(path))


# ---------------------------------------------------------------------------------------------- markdown

def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _ms(s: dict, digits: int = 3) -> str:
    if not s or s["mean"] is None:
        return "–" if not s or not s["undefined"] else f"undefined ×{s['undefined']}"
    txt = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return txt + (f" ({s['undefined']} undefined)" if s["undefined"] else "")


def _markdown(rep: EvaluationReport, per_label: bool = True) -> str:
    s = rep.summary()
    acc = " / ".join(_pct(s[f"acc_{t:.1f}mm"]) for t in ACC_THRESHOLDS_MM)
    rows = [("cases (without prediction)", f"{s['cases']} ({s['cases_without_prediction']})"),
            ("GT vertebrae", str(s["vertebrae"])),
            ("identification rate (closest ≤ 20 mm, right label)", _pct(s["identification_rate"])),
            ("MLE, same label (mm)", _ms(s["mle_mm"])),
            ("MLE, matched any label (mm)", _ms(s["mle_matched_mm"])),
            ("Acc1.5 / Acc2.0 / Acc3.0", acc),
            ("detected / missed / extra", f"{s['detected']} / {s['missed']} / {s['extra']}"),
            ("labelling accuracy (detected vertebrae)", _pct(s["labelling_accuracy"])),
            ("labelling precision (predictions)", _pct(s["labelling_precision"])),
            ("recovered by the chain logic (of them extra)", f"{s['recovered']} ({s['extra_recovered']})"),
            ("sequence accuracy (cases)", _pct(s["sequence_accuracy"]))]
    names = {"dice": "Dice", "iou": "IoU", "pa": "PA", "fpd": "FPD", "fnd": "FND", "msd_mm": "MSD (mm)",
             "hd_mm": "HD (mm)", "hd95_mm": "HD95 (mm)"}
    rows += [(names[k], _ms(s[k], 4 if k in ("pa", "fpd") else 3)) for k in SEG_KEYS]
    if s["empty_predicted_masks"]:
        rows.append(("GT vertebrae with an empty predicted mask", str(s["empty_predicted_masks"])))
    lines = ["| metric | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]

    def table(title: str, groups: dict[str, dict]) -> list[str]:
        out = ["", f"| {title} | n | id rate | labelling acc | missed | extra | MLE (mm) | Dice | HD95 (mm) |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key, r in groups.items():
            out.append(f"| {key} | {r['vertebrae']} | {_pct(r['identification_rate'])} | "
                       f"{_pct(r['labelling_accuracy'])} | {r['missed']} | {r['extra']} | "
                       f"{_ms(r['mle_mm'], 2)} | {_ms(r['dice'])} | {_ms(r['hd95_mm'], 2)} |")
        return out
    lines += table("region", rep.by_region())
    lines += table("extent", rep.by_extent())
    if per_label:
        lines += table("vertebra", rep.by_label())
    notes = rep.notes + [f"{c.case}: {n}" for c in rep.cases for n in c.notes]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- folders

def prediction_files(pred: Path, case_id: str) -> tuple[Path | None, Path | None]:
    """`spinert run` names outputs after the CT's stem: <id>_ct_... for a VerSe CT; accept <id>_... too."""
    for stem in (f"{case_id}_ct", case_id):
        msk, ctd = pred / f"{stem}{SUFFIX['msk']}", pred / f"{stem}{SUFFIX['ctd']}"
        if msk.is_file() or ctd.is_file():
            return (msk if msk.is_file() else None), (ctd if ctd.is_file() else None)
    return None, None


def _prediction_stems(pred: Path) -> set[str]:
    stems = set()
    for kind in ("msk", "ctd"):
        suf = SUFFIX[kind]
        stems.update(p.name[: -len(suf)] for p in pred.glob(f"*{suf}") if p.is_file())
    return stems


def evaluate_folders(gt: str | os.PathLike, pred: str | os.PathLike, ids: Sequence[str] | None = None,
                     progress: bool = True) -> EvaluationReport:
    """Score every GT case (or the given ``ids``) of a VerSe-style folder against a prediction folder.

    GT cases need a mask and a ctd (CT optional; if present its geometry must match the mask). A GT case
    without prediction files counts as all vertebrae missed (CaseScore.missing_prediction, a note)."""
    gt, pred = Path(gt), Path(pred)
    all_ids = list_cases(gt, require=("msk", "ctd"))
    if not pred.is_dir():
        raise DatasetError(f"{pred}: no such prediction folder")
    if ids is not None:
        unknown = [i for i in ids if i not in all_ids]
        if unknown:
            raise DatasetError(f"{gt}: no GT case(s) {', '.join(unknown)}")
        all_ids = list(ids)
    report = EvaluationReport([], str(gt), str(pred))
    used: set[str] = set()
    it: Iterable[str] = all_ids
    if progress:
        from rich.progress import track
        it = track(all_ids, description="evaluating", transient=True)
    for cid in it:
        case = read_case(gt, cid, require=("msk", "ctd"))
        msk, ctd = prediction_files(pred, cid)
        used.update(p.name[: -len(SUFFIX[k])] for p, k in ((msk, "msk"), (ctd, "ctd")) if p is not None)
        try:
            pl = read_volume(msk) if msk else None
        except InputError as exc:
            raise DatasetError(str(exc)) from None
        pc = read_ctd(ctd, allow_duplicates=True) if ctd else []
        score = evaluate_case(cid, case.labels, case.centroids, pl, pc)
        if msk is None and ctd is None:
            score.missing_prediction = True  # the report's note names every such case once
        elif msk is None:
            score.notes.append(f"no predicted mask ({cid}_ct{SUFFIX['msk']}): Dice 0 for every vertebra")
        elif ctd is None:
            score.notes.append(f"no predicted centroids ({cid}_ct{SUFFIX['ctd']}): every vertebra missed")
        report.cases.append(score)
    missing = [c.case for c in report.cases if c.missing_prediction]
    if missing:
        report.notes.append(f"no prediction for {len(missing)} of {len(report.cases)} case(s): "
                            f"{', '.join(missing)} (counted as all vertebrae missed)")
    if ids is None:
        stray = sorted(_prediction_stems(pred) - used - set(all_ids) - {f"{i}_ct" for i in all_ids})
        if stray:
            report.notes.append(f"prediction(s) with no GT case, not scored: {', '.join(stray)}")
    return report


def report_paths(out: str | os.PathLike, files: dict[str, str] = REPORT_FILES) -> dict[str, Path]:
    return {k: Path(out) / name for k, name in files.items()}


def check_report_targets(out: str | os.PathLike, overwrite: bool = False,
                         files: dict[str, str] = REPORT_FILES) -> dict[str, Path]:
    """Fail before any work when the report (``files`` in ``out``) would overwrite files without ``overwrite``."""
    paths = report_paths(out, files)
    if Path(out).exists() and not Path(out).is_dir():
        raise OutputExistsError(f"{out} is a file, not a folder")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists (use --overwrite to replace it)")
    return paths


def write_report(report: EvaluationReport, out: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    """Write evaluation.json, evaluation.md and evaluation.png into ``out``."""
    paths = check_report_targets(out, overwrite)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(report.to_json(), indent=1, allow_nan=False))
    paths["md"].write_text(report.markdown())
    report.plot(paths["png"])
    return paths
