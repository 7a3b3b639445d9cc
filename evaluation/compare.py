"""One evaluation against another on the same ground truth: `spinert evaluate ... --baseline REPORT`.

A retrained model is judged by the cascade's figures, case by case, not by its own validation score.
Session 11's labeller gained 6 points of single-vertebra accuracy and lost three held-out chains. This puts
two reports side by side: the summary figures with their change, and per case the vertebrae identified
in one report but not the other.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import DatasetError

COMPARISON_FILES = {"json": "comparison.json", "md": "comparison.md"}
# (row name, summary key or (key, statistic), higher is better, shown as a percentage)
ROWS = (("identification rate", "identification_rate", True, True),
        ("labelling accuracy", "labelling_accuracy", True, True),
        ("sequence accuracy (cases)", "sequence_accuracy", True, True),
        ("MLE, same label (mm)", ("mle_mm", "mean"), False, False),
        ("MLE, matched any label (mm)", ("mle_matched_mm", "mean"), False, False),
        ("Dice", ("dice", "mean"), True, False),
        ("HD95 (mm)", ("hd95_mm", "mean"), False, False),
        ("missed", "missed", False, False),
        ("extra", "extra", False, False))


def load_report(path: str | os.PathLike) -> dict:
    """An evaluation.json (or the report folder holding one); DatasetError if it is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / "evaluation.json"
    if not p.is_file():
        raise DatasetError(f"baseline report {p}: no such file")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"baseline report {p}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("spinert.evaluation/") \
            or not isinstance(doc.get("cases"), list) or not isinstance(doc.get("summary"), dict):
        raise DatasetError(f"baseline report {p}: not a spinert evaluation report (evaluation.json)")
    return doc


def _value(summary: dict, key):
    v = summary.get(key[0], {}).get(key[1]) if isinstance(key, tuple) else summary.get(key)
    return None if v is None else float(v)


def _identified(case: dict) -> dict[str, bool]:
    return {v["name"]: bool(v["identified"]) for v in case["vertebrae"]}


def compare(current: dict, baseline: dict) -> dict:
    """Summary rows (baseline, current, change, better?) and the cases whose identified vertebrae differ."""
    rows = []
    for name, key, higher, pct in ROWS:
        b, c = _value(baseline["summary"], key), _value(current["summary"], key)
        delta = None if b is None or c is None else c - b
        better = None if not delta else (delta > 0) == higher
        rows.append({"metric": name, "baseline": b, "current": c, "change": delta, "better": better, "percent": pct})
    base = {c["case"]: c for c in baseline["cases"]}
    cur = {c["case"]: c for c in current["cases"]}
    changed = []
    for cid in sorted(base.keys() & cur.keys()):
        a, b = _identified(base[cid]), _identified(cur[cid])
        lost = [n for n, ok in a.items() if ok and not b.get(n, False)]
        gained = [n for n, ok in b.items() if ok and not a.get(n, False)]
        if lost or gained:
            changed.append({"case": cid, "vertebrae": len(b), "identified_baseline": sum(a.values()),
                            "identified_current": sum(b.values()), "lost": lost, "gained": gained})
    return {"schema": "spinert.comparison/1", "baseline_pred": baseline.get("pred"), "current_pred": current.get("pred"),
            "summary": rows, "cases_changed": changed,
            "cases_unchanged": len(base.keys() & cur.keys()) - len(changed),
            "only_in_baseline": sorted(base.keys() - cur.keys()), "only_in_current": sorted(cur.keys() - base.keys())}


def _fmt(v, pct: bool, sign: str = "") -> str:
    """A value (``sign="+"``: a change; percentages change by points)."""
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:{sign}.1f} " + ("pt" if sign else "%")
    return f"{v:{sign}.0f}" if float(v).is_integer() else f"{v:{sign}.3f}"


def markdown(cmp: dict) -> str:
    mark = {True: " (better)", False: " (worse)", None: ""}
    lines = ["| metric | baseline | current | change |", "| --- | --- | --- | --- |"]
    for r in cmp["summary"]:
        ch = _fmt(r["change"], r["percent"], "+")
        lines.append(f"| {r['metric']} | {_fmt(r['baseline'], r['percent'])} | {_fmt(r['current'], r['percent'])} | "
                     f"{ch}{mark[r['better']]} |")
    lines += ["", f"Cases with other identified vertebrae: {len(cmp['cases_changed'])} "
                  f"({cmp['cases_unchanged']} unchanged)."]
    if cmp["cases_changed"]:
        lines += ["", "| case | vertebrae | identified (baseline → current) | lost | gained |",
                  "| --- | --- | --- | --- | --- |"]
        for c in cmp["cases_changed"]:
            lines.append(f"| {c['case']} | {c['vertebrae']} | {c['identified_baseline']} → {c['identified_current']} | "
                         f"{', '.join(c['lost']) or '–'} | {', '.join(c['gained']) or '–'} |")
    for side in ("only_in_baseline", "only_in_current"):
        if cmp[side]:
            lines += ["", f"{side.replace('_', ' ')}: {', '.join(cmp[side])} (not compared)"]
    return "\n".join(lines) + "\n"


def check_comparison_targets(out: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    from evaluation.report import check_report_targets

    return check_report_targets(out, overwrite, COMPARISON_FILES)


def write_comparison(cmp: dict, out: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    paths = check_comparison_targets(out, overwrite)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(cmp, indent=1, allow_nan=False))
    paths["md"].write_text(markdown(cmp))
    return paths
