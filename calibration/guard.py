"""The INT8 accuracy guard: the whole cascade at FP32, FP16 and INT8 on held-out CTs, scored by evaluation/.

Each precision runs engine.pipeline.Cascade on ONNX Runtime (INT8 Q/DQ graphs run on the CPU there) over a
VerSe-style folder (CT, mask, ctd); evaluation.metrics scores every result against the ground truth and
evaluation.report aggregates. The verdict compares INT8 with FP32: mean Dice may drop by at most
``max_dice_drop`` and labelling accuracy by at most ``max_label_drop`` percentage points; MLE is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.errors import SpinertError

PRECISIONS = ("fp32", "fp16", "int8")
METRICS = {"dice": "mean Dice", "mle_mm": "MLE (mm)", "labelling_accuracy": "labelling accuracy"}


class GuardRefused(SpinertError):
    """INT8 models that lose more accuracy than the guard allows (not registered unless --force)."""


@dataclass(frozen=True)
class Thresholds:
    max_dice_drop: float = 0.01
    max_label_drop: float = 1.0  # percentage points


@dataclass
class GuardResult:
    folder: str
    cases: list[str]
    thresholds: Thresholds
    summaries: dict[str, dict[str, Any]]            # precision -> key metrics
    per_case: dict[str, dict[str, dict[str, Any]]]  # precision -> case -> key metrics
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict: str = "accepted"                        # accepted | refused | forced

    @property
    def refused(self) -> bool:
        return bool(self.reasons)

    def deltas(self) -> dict[str, dict[str, float | None]]:
        """precision -> metric -> value minus FP32 (labelling accuracy in percentage points)."""
        ref = self.summaries.get("fp32", {})
        out = {}
        for prec, s in self.summaries.items():
            if prec == "fp32":
                continue
            d = {}
            for k in METRICS:
                a, b = ref.get(k), s.get(k)
                d[k] = None if a is None or b is None else (b - a) * (100.0 if k == "labelling_accuracy" else 1.0)
            out[prec] = d
        return out


def key_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers the guard compares, from an evaluation.report summary."""
    return {"dice": summary["dice"]["mean"], "mle_mm": summary["mle_mm"]["mean"],
            "labelling_accuracy": summary["labelling_accuracy"], "identification_rate": summary["identification_rate"],
            "detected": summary["detected"], "missed": summary["missed"], "extra": summary["extra"],
            "vertebrae": summary["vertebrae"]}


def run_precision(models_dir: Path, folder: Path, case_ids: list[str], precision: str,
                  progress: Callable[[str, str], None] | None = None, threads: int | None = None):
    """EvaluationReport of the cascade at ``precision`` (ONNX Runtime) on the cases of ``folder``."""
    from engine.pipeline import Cascade
    from engine.verse import read_case
    from evaluation.metrics import evaluate_result
    from evaluation.report import EvaluationReport

    report = EvaluationReport([], str(folder), f"cascade {precision} (onnxruntime)")
    with Cascade(backend="onnxruntime", precision=precision, models_dir=str(models_dir), threads=threads) as cascade:
        for cid in case_ids:
            if progress:
                progress(precision, cid)
            case = read_case(folder, cid, require=("ct", "msk", "ctd"))
            report.cases.append(evaluate_result(case, cascade.run(case.path("ct"), name=cid)))
    return report


def judge(result: GuardResult) -> list[str]:
    """Why INT8 is refused (empty: accepted). A metric FP32 has but INT8 lacks counts as lost."""
    f, q, t = result.summaries["fp32"], result.summaries["int8"], result.thresholds
    reasons = []
    checks = (("dice", "mean Dice", 1.0, t.max_dice_drop, "{:.4f}"),
              ("labelling_accuracy", "labelling accuracy", 100.0, t.max_label_drop, "{:.1f}%"))
    for key, what, scale, limit, fmt in checks:
        a, b = f.get(key), q.get(key)
        if a is None:
            continue
        if b is None:
            reasons.append(f"{what} undefined at INT8 (FP32 {fmt.format(a * scale)})")
            continue
        drop = (a - b) * scale
        if drop > limit or not math.isfinite(drop):
            unit = " points" if scale == 100.0 else ""
            reasons.append(f"{what} drops {drop:.4g}{unit} > {limit:g}{unit} "
                           f"(FP32 {fmt.format(a * scale)} -> INT8 {fmt.format(b * scale)})")
    return reasons


def run_guard(models_dir: Path, folder: Path, thresholds: Thresholds, precisions=PRECISIONS,
              progress: Callable[[str, str], None] | None = None, threads: int | None = None) -> GuardResult:
    from engine.verse import list_cases
    from evaluation.report import EvaluationReport

    ids = list_cases(folder, require=("ct", "msk", "ctd"))
    reports = {p: run_precision(models_dir, folder, ids, p, progress, threads) for p in precisions}
    res = GuardResult(str(folder), ids, thresholds,
                      {p: key_metrics(r.summary()) for p, r in reports.items()},
                      {p: {c.case: key_metrics(EvaluationReport([c]).summary()) for c in r.cases}
                       for p, r in reports.items()})
    for r in reports.values():
        res.notes.extend(n for n in r.notes if n not in res.notes)
    res.reasons = judge(res)
    res.verdict = "refused" if res.reasons else "accepted"
    return res
