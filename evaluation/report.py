"""Evaluate prediction folders against GT folders and write JSON, a markdown table and a plot."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import labels as L
from engine.errors import DatasetError, OutputExistsError
from engine.io import read_volume
from engine.verse import SUFFIX, list_cases, read_case, read_ctd
from evaluation.metrics import CaseScore, VertebraScore, evaluate_case

SEG_KEYS = ("dice", "iou", "pa", "fpd", "fnd", "msd_mm", "hd_mm", "hd95_mm")


def _stats(values) -> dict | None:
    a = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    if not len(a):
        return None
    return {"mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a)), "n": int(len(a))}


def _rate(flags) -> float | None:
    flags = list(flags)
    return float(np.mean(flags)) if flags else None


def summarise(verts: list[VertebraScore], cases: list[CaseScore]) -> dict:
    loc = [v.loc_error_mm for v in verts if v.loc_error_mm is not None]
    detected = [v for v in verts if v.detected]
    out = {
        "vertebrae": len(verts), "cases": len(cases),
        "mle_mm": _stats(loc),
        "identification_rate": _rate(v.identified for v in verts),
        "acc_1.5mm": _rate(v.loc_error_mm is not None and v.loc_error_mm <= 1.5 for v in verts),
        "acc_2.0mm": _rate(v.loc_error_mm is not None and v.loc_error_mm <= 2.0 for v in verts),
        "acc_3.0mm": _rate(v.loc_error_mm is not None and v.loc_error_mm <= 3.0 for v in verts),
        "missed": sum(not v.detected for v in verts),
        "extra": sum(len(c.extra) for c in cases),
        "labelling_accuracy": _rate(v.identified for v in detected),
        "sequence_accuracy": _rate(c.sequence_correct for c in cases),
    }
    out.update({k: _stats(getattr(v, k) for v in verts) for k in SEG_KEYS})
    return out


@dataclass
class EvaluationReport:
    cases: list[CaseScore]

    @property
    def vertebrae(self) -> list[VertebraScore]:
        return [v for c in self.cases for v in c.vertebrae]

    def summary(self) -> dict:
        return summarise(self.vertebrae, self.cases)

    def by_region(self) -> dict:
        return {reg: summarise([v for v in self.vertebrae if v.region == reg], self.cases)
                for reg in L.REGIONS if any(v.region == reg for v in self.vertebrae)}

    def by_label(self) -> dict:
        labs = sorted({v.label for v in self.vertebrae}, key=L.ORDER_INDEX.get)
        return {L.name(lab): summarise([v for v in self.vertebrae if v.label == lab], self.cases) for lab in labs}

    def to_json(self) -> dict:
        return {"summary": self.summary(), "regions": self.by_region(), "labels": self.by_label(),
                "cases": [c.to_json() for c in self.cases]}

    def markdown(self) -> str:
        s = self.summary()

        def f(x, pct=False):
            if x is None:
                return "–"
            if isinstance(x, dict):
                return f"{x['mean']:.3f} ± {x['std']:.3f}"
            return f"{100 * x:.2f} %" if pct else f"{x}"
        rows = [("cases", f(s["cases"])), ("vertebrae", f(s["vertebrae"])),
                ("identification rate", f(s["identification_rate"], True)),
                ("MLE (mm)", f(s["mle_mm"])), ("Acc1.5 / 2.0 / 3.0", " / ".join(
                    f(s[k], True) for k in ("acc_1.5mm", "acc_2.0mm", "acc_3.0mm"))),
                ("missed / extra", f"{s['missed']} / {s['extra']}"),
                ("labelling accuracy", f(s["labelling_accuracy"], True)),
                ("sequence accuracy", f(s["sequence_accuracy"], True))]
        rows += [(k.replace("_mm", " (mm)"), f(s[k])) for k in SEG_KEYS]
        lines = ["| metric | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
        lines += ["", "| region | vertebrae | id rate | labelling acc | MLE (mm) | Dice | HD95 (mm) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for reg, r in self.by_region().items():
            lines.append(f"| {reg} | {r['vertebrae']} | {f(r['identification_rate'], True)} | "
                         f"{f(r['labelling_accuracy'], True)} | {f(r['mle_mm'])} | {f(r['dice'])} | {f(r['hd95_mm'])} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labs = sorted({v.label for v in self.vertebrae}, key=L.ORDER_INDEX.get)
        names = [L.name(x) for x in labs]
        fig, ax = plt.subplots(3, 1, figsize=(max(8, 0.45 * len(labs) + 3), 10), constrained_layout=True)
        dice = [[v.dice for v in self.vertebrae if v.label == lab and v.dice is not None] for lab in labs]
        ax[0].boxplot([d if d else [np.nan] for d in dice], tick_labels=names)
        ax[0].set_ylabel("Dice"); ax[0].set_title("Segmentation: Dice per vertebra"); ax[0].set_ylim(0, 1.02)
        loc = [[v.loc_error_mm for v in self.vertebrae if v.label == lab and v.loc_error_mm is not None]
               for lab in labs]
        ax[1].boxplot([d if d else [np.nan] for d in loc], tick_labels=names)
        ax[1].axhline(2.0, ls="--", c="tab:red", lw=1, label="2 mm")
        ax[1].set_ylabel("mm"); ax[1].set_title("Localisation error per vertebra"); ax[1].legend()
        idr = [np.mean([v.identified for v in self.vertebrae if v.label == lab]) for lab in labs]
        ax[2].bar(names, idr, color="tab:green")
        ax[2].set_ylim(0, 1.02); ax[2].set_ylabel("rate"); ax[2].set_title("Identification rate per vertebra")
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _prediction_files(pred: Path, case_id: str) -> tuple[Path | None, Path | None]:
    """`spinert run` names outputs after the CT's stem: <id>_ct_... for a VerSe CT; accept <id>_... too."""
    for stem in (f"{case_id}_ct", case_id):
        msk, ctd = pred / f"{stem}{SUFFIX['msk']}", pred / f"{stem}{SUFFIX['ctd']}"
        if msk.is_file() or ctd.is_file():
            return (msk if msk.is_file() else None), (ctd if ctd.is_file() else None)
    return None, None


def evaluate_folders(gt: str | os.PathLike, pred: str | os.PathLike, progress: bool = True) -> EvaluationReport:
    gt, pred = Path(gt), Path(pred)
    if not pred.is_dir():
        raise DatasetError(f"{pred}: no such prediction folder")
    ids = list_cases(gt, require=("msk", "ctd"))
    cases = []
    it = ids
    if progress:
        from rich.progress import track
        it = track(ids, description="evaluating", transient=True)
    for cid in it:
        c = read_case(gt, cid, check=False)
        msk, ctd = _prediction_files(pred, cid)
        pl = read_volume(msk) if msk else None
        pc = read_ctd(ctd) if ctd else []
        score = evaluate_case(cid, c.labels, c.centroids, pl, pc)
        score.missing_prediction = msk is None and ctd is None
        cases.append(score)
    return EvaluationReport(cases)


def write_report(report: EvaluationReport, out: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "evaluation.json", "md": out / "evaluation.md", "png": out / "evaluation.png"}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(report.to_json(), indent=1))
    paths["md"].write_text(report.markdown())
    report.plot(paths["png"])
    return paths
