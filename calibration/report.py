"""The accuracy-guard report: int8_guard.json, int8_guard.md and int8_guard.png in one folder."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from calibration.guard import METRICS, GuardResult
from engine.errors import OutputExistsError

FILES = {"json": "int8_guard.json", "md": "int8_guard.md", "png": "int8_guard.png"}


def report_paths(out: str | Path) -> dict[str, Path]:
    return {k: Path(out) / v for k, v in FILES.items()}


def check_targets(out: str | Path, overwrite: bool) -> dict[str, Path]:
    """Fail before any work when the report would replace files without ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--report {out} is a file, not a folder")
    paths = report_paths(out)
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists (use --overwrite to replace it)")
    return paths


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def to_json(res: GuardResult, context: dict[str, Any]) -> dict[str, Any]:
    return _clean({"schema": "spinert.int8-guard/1", **context, "guard_data": res.folder, "cases": res.cases,
                   "thresholds": {"max_dice_drop": res.thresholds.max_dice_drop,
                                  "max_label_drop_points": res.thresholds.max_label_drop},
                   "verdict": res.verdict, "reasons": res.reasons, "notes": res.notes,
                   "summary": res.summaries, "delta_vs_fp32": res.deltas(), "per_case": res.per_case,
                   "definitions": "Dice: mean over GT vertebrae with a mask; MLE: mean localisation error (mm) "
                                  "over GT vertebrae with a prediction of the same label; labelling accuracy: "
                                  "identified among detected (evaluation/metrics.py); deltas: precision - FP32, "
                                  "labelling accuracy in percentage points"})


def _f(v: Any, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def markdown(res: GuardResult, context: dict[str, Any]) -> str:
    d = res.deltas()
    lines = [f"# INT8 accuracy guard: {res.verdict}", "",
             f"Cascade on ONNX Runtime (CPU) over {len(res.cases)} held-out case(s) of `{res.folder}`; "
             f"calibration: {context.get('method')} on {context.get('samples')} samples per model "
             f"(data {str(context.get('data_fingerprint', ''))[:12]}); models: {', '.join(context.get('models', []))}.",
             "", "| precision | mean Dice | MLE (mm) | labelling acc. | id. rate | detected / missed / extra |"
             " Δ Dice | Δ MLE (mm) | Δ labelling (points) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for prec, s in res.summaries.items():
        dd = d.get(prec, {})
        lines.append(f"| {prec} | {_f(s['dice'], '{:.4f}')} | {_f(s['mle_mm'], '{:.2f}')} | "
                     f"{_f(s['labelling_accuracy'] and s['labelling_accuracy'] * 100, '{:.1f}%')} | "
                     f"{_f(s['identification_rate'] and s['identification_rate'] * 100, '{:.1f}%')} | "
                     f"{s['detected']} / {s['missed']} / {s['extra']} | "
                     + " | ".join("—" if prec == "fp32" else _f(dd.get(k), "{:+.4f}" if k == "dice" else "{:+.2f}")
                                  for k in METRICS) + " |")
    lines += ["", f"Thresholds: INT8 refused if mean Dice drops by more than {res.thresholds.max_dice_drop:g} or "
                  f"labelling accuracy by more than {res.thresholds.max_label_drop:g} points vs FP32.", ""]
    if res.reasons:
        lines += ["Reasons:", *[f"- {r}" for r in res.reasons], ""]
    if res.notes:
        lines += ["Notes:", *[f"- {n}" for n in res.notes], ""]
    return "\n".join(lines)


def plot(res: GuardResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precs = list(res.summaries)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 2.8))
    colours = {"fp32": "#4c72b0", "fp16": "#55a868", "int8": "#c44e52"}
    for ax, (k, title) in zip(axes, METRICS.items()):
        vals = [res.summaries[p].get(k) for p in precs]
        scale = 100.0 if k == "labelling_accuracy" else 1.0
        ys = [0.0 if v is None else v * scale for v in vals]
        bars = ax.bar(precs, ys, color=[colours.get(p, "grey") for p in precs])
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if v is None else f"{v * scale:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(ys + [1e-9]) * 1.18)  # headroom for the value labels
        ax.set_title(title + (" (%)" if scale == 100.0 else ""), fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"INT8 guard: {res.verdict} ({len(res.cases)} case(s))", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(res: GuardResult, out: str | Path, context: dict[str, Any], overwrite: bool) -> dict[str, Path]:
    paths = check_targets(out, overwrite)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(to_json(res, context), indent=1, allow_nan=False, default=str))
    paths["md"].write_text(markdown(res, context))
    plot(res, paths["png"])
    return paths
