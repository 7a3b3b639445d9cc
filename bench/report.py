"""`spinert bench` outputs: markdown table, PNG plots (matplotlib Agg) and the --compare ratios."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.pipeline import STAGES



def _f(v: Any, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(rep: dict) -> str:
    m = rep["machine"]
    gpu = m.get("gpu")
    lines = [f"# spinert bench ({'quick' if rep['settings']['quick'] else 'full'})", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; "
             f"GPU: {gpu['name'] + ' (driver ' + str(gpu.get('driver')) + ')' if gpu else 'none (cpu only)'}",
             f"- commit {m.get('git_commit')}; {rep['created']}; runs {rep['settings']['runs']}, "
             f"warm-up {rep['settings']['warmup']}; timer: {rep['timer']}"]
    if not rep["models_trained"]:
        lines += ["", "> **The shipped models are untrained placeholders** (manifest `\"trained\": false`): the "
                      "detector finds nothing, so cluster/segment/label/postprocess get no work and their cascade "
                      "times are ~0. They are NOT real costs. The *model sessions alone* table below gives the "
                      "per-slice / per-ROI / per-vertebra costs a trained cascade pays, and *projected* adds them up."]
    if rep.get("note"):
        lines += ["", f"> {rep['note']}"]
    lines += ["", "## Cascade latency (ms)", "",
              "| backend | prec | CT | vertebrae | slices | e2e p50 | p95 | p99 | max | "
              + " | ".join(STAGES) + " | CT/s | slices/s | peak host MB | peak GPU MB | projected trained p50 |",
              "|" + "---|" * (14 + len(STAGES))]
    for c in rep["matrix"]:
        e = c["end_to_end_ms"]
        lines.append(f"| {c['backend']} | {c['precision']} | {c['ct']} | {c.get('vertebrae_in_ct') or '-'} | "
                     f"{c['slices']} | {_f(e['p50'])} | {_f(e['p95'])} | {_f(e['p99'])} | {_f(e['max'])} | "
                     + " | ".join(_f(c["stages"].get(s, {}).get("p50_ms")) for s in STAGES)
                     + f" | {_f(c['throughput']['cts_per_s'], 3)} | {_f(c['throughput']['slices_per_s'])} | "
                       f"{_f(c['peak_host_mb'], 0)} | {_f(c['peak_gpu_mb'], 0)} | {_f(c.get('projected_trained_ms'))} |")
    if rep.get("skipped"):
        lines.append("")
        lines += [f"- skipped {k}: {why}" for k, why in rep["skipped"].items()]
    b = rep.get("naive_baseline")
    if b:
        lines += ["", f"## Cascade vs naive baseline (detector on every sagittal slice), {b['ct']}, "
                      f"{b['backend']}/{b['precision']}, same run", "",
                  "| | slices | detect p50 ms | end-to-end p50 ms |", "|---|---|---|---|",
                  f"| cascade (spine band) | {b['cascade']['slices']} | {_f(b['cascade']['detect_p50_ms'])} | "
                  f"{_f(b['cascade']['end_to_end_p50_ms'])} |",
                  f"| naive (all slices) | {b['naive_all_slices']['slices']} | "
                  f"{_f(b['naive_all_slices']['detect_p50_ms'])} | {_f(b['naive_all_slices']['end_to_end_p50_ms'])} |",
                  f"| **speed-up** | {_f(b['slice_ratio'], 2)}x | **{_f(b['detect_speedup'], 2)}x** | "
                  f"**{_f(b['end_to_end_speedup'], 2)}x** |"]
    ms = rep.get("model_sessions") or {}
    for key, sess in ms.items():
        lines += ["", f"## Model sessions alone ({key}), realistic-shaped inputs", "",
                  "| model | batch | input | batch p50 ms | p95 | per item ms | items/s |", "|---|---|---|---|---|---|---|"]
        for name, s in sess.items():
            u = s["unit"]
            lines.append(f"| {name} | {s['batch']} | {'x'.join(map(str, s['input_shape']))} | {_f(s['batch_ms']['p50'])} | "
                         f"{_f(s['batch_ms']['p95'])} | {_f(s[f'ms_per_{u}'])} per {u} | {_f(s[f'{u}s_per_s'], 2)} |")
    d = rep["dbscan"]
    lines += ["", "## Micro-benchmarks (hand-written hot path vs library)", "",
              "| what | n | ours ms | library | library ms | speed-up | identical |", "|---|---|---|---|---|---|---|"]
    for r in d["by_size"]:
        lines.append(f"| DBSCAN | {r['n']} | {_f(r['ours_ms'], 3)} | scikit-learn | {_f(r['sklearn_ms'], 3)} | "
                     f"{_f(r['speedup_vs_sklearn'], 1)}x | {r['identical']} |")
    for r in d.get("cascade_sets", []):
        lines.append(f"| DBSCAN, the cascade's boxes of CT {r['ct']} | {r['n']} | {_f(r['ours_ms'], 3)} | "
                     f"scikit-learn | {_f(r['sklearn_ms'], 3)} | {_f(r['speedup_vs_sklearn'], 1)}x | {r['identical']} |")
    for r in d.get("two_stage", []):
        lines.append(f"| two-stage clustering (2 DBSCAN calls), CT {r['ct']} | {r['n']} | {_f(r['ours_ms'], 3)} | "
                     f"scikit-learn, {r['sklearn_calls']} calls | {_f(r['sklearn_ms'], 3)} | "
                     f"{_f(r['speedup_vs_sklearn'], 1)}x | {r['identical']} |")
    n = rep.get("nms")
    if n:
        lines.append(f"| NMS | {n['boxes']} boxes / {n['slices']} slices | {_f(n['ours_ms'], 3)} | {n['reference']} | "
                     f"{_f(n['reference_ms'], 3)} | {_f(n['speedup_vs_reference'], 2)}x | {n['identical']} |")
    r = rep.get("resample")
    if r:
        lines.append(f"| to_canonical | {'x'.join(map(str, r['input_size_ijk']))} | {_f(r['ours_ms'])} | {r['reference']} | "
                     f"{_f(r['reference_ms'])} | {_f(1 / r['overhead_ratio'], 2)}x | - |")
    br = rep.get("bridge")
    if br:
        lat, sz = br["latency"], br["sizes"]
        lines += ["", "## Bridge (mask encoding + publish over ZeroMQ on 127.0.0.1)", "",
                  f"- {sz['vertebrae']} vertebrae, message {sz['message_bytes'] / 1024:.0f} KiB "
                  f"({sz['compression_vs_raw']:.0f}x smaller than raw masks)",
                  f"- encode p50 {_f(lat['encode_ms']['p50'], 2)} ms, p99 {_f(lat['encode_ms']['p99'], 2)} ms; "
                  f"publish->subscriber p50 {_f(lat['publish_to_subscriber_ms']['p50'], 2)} ms, "
                  f"p99 {_f(lat['publish_to_subscriber_ms']['p99'], 2)} ms; robot-side decode p50 "
                  f"{_f(lat['decode_label_volume_ms']['p50'], 2)} ms"]
    return "\n".join(lines) + "\n"


def plots(rep: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cells = rep["matrix"]
    written = []
    # 1. stage breakdown: one stacked bar per cell (p50 of each stage).
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cells) + 3), 5))
    names = [f"{c['ct']}\n{c['backend'][:4]}/{c['precision']}" for c in cells]
    bottom = [0.0] * len(cells)
    colors = plt.cm.tab10.colors
    for si, s in enumerate(STAGES):
        vals = [(c["stages"].get(s, {}).get("p50_ms") or 0.0) / 1e3 for c in cells]
        ax.bar(names, vals, bottom=bottom, label=s, color=colors[si % 10])
        bottom = [b + v for b, v in zip(bottom, vals)]
    proj = [((c.get("projected_trained_ms") or 0.0) - (c["end_to_end_ms"]["p50"] or 0.0)) / 1e3 for c in cells]
    if any(v > 0 for v in proj):
        ax.bar(names, proj, bottom=bottom, label="segment+label\n(projected for a\ntrained model)",
               color="none", edgecolor="grey", hatch="//")
    ax.set_ylabel("p50 latency (s)")
    title = "Per-stage latency (p50)"
    if not rep["models_trained"]:
        title += "\nuntrained models: segment/label get no work (see model-session table)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    p = out / "stage_breakdown.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)
    # 2. latency vs CT size (canonical sagittal slices detected), one line per backend/precision.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(c["backend"], c["precision"]) for c in cells})
    for ki, k in enumerate(keys):
        col = plt.cm.tab10.colors[ki % 10]
        pts = sorted(((c["shape_ijk"][0] * c["shape_ijk"][1] * c["shape_ijk"][2] / 1e6, c["end_to_end_ms"]["p50"] / 1e3,
                       c["end_to_end_ms"]["p95"] / 1e3, c["ct"]) for c in cells if (c["backend"], c["precision"]) == k))
        xs = [q[0] for q in pts]
        ax.plot(xs, [q[1] for q in pts], "o-", color=col, label=f"{k[0]}/{k[1]} p50")
        ax.plot(xs, [q[2] for q in pts], "x:", color=col, alpha=0.6, label=f"{k[0]}/{k[1]} p95")
        for q in pts:
            ax.annotate(q[3], (q[0], q[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        projected = sorted((c["shape_ijk"][0] * c["shape_ijk"][1] * c["shape_ijk"][2] / 1e6,
                            c["projected_trained_ms"] / 1e3) for c in cells
                           if (c["backend"], c["precision"]) == k and c.get("projected_trained_ms"))
        if projected:
            ax.plot([q[0] for q in projected], [q[1] for q in projected], "s--", color=col, alpha=0.7,
                    label=f"{k[0]}/{k[1]} projected trained")
    ax.set_xlabel("CT size (M voxels)")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_ylim(bottom=0)
    ax.set_title("End-to-end latency vs CT size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "latency_vs_size.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)
    # 3. hand-written hot paths against the library, as speed-ups (log scale, 1x and 10x marked).
    d = rep.get("dbscan") or {}
    bars = [(f"DBSCAN n={r['n']}", r["speedup_vs_sklearn"], "tab:blue") for r in d.get("by_size", [])]
    bars += [(f"DBSCAN {r['ct']}\n(n={r['n']})", r["speedup_vs_sklearn"], "tab:cyan") for r in d.get("cascade_sets", [])]
    bars += [(f"two-stage {r['ct']}\n({r['sklearn_calls']} sklearn calls)", r["speedup_vs_sklearn"], "tab:green")
             for r in d.get("two_stage", [])]
    if rep.get("nms"):
        bars.append(("NMS", rep["nms"]["speedup_vs_reference"], "tab:orange"))
    if bars:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(bars) + 2), 4.5))
        ax.bar(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
        for i, b in enumerate(bars):
            ax.annotate(f"{b[1]:.1f}x", (i, b[1]), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        for y in (1.0, 10.0):
            ax.axhline(y, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("speed-up vs library (same inputs, same run)")
        ax.set_title("Hand-written hot paths vs scikit-learn / reference", fontsize=10)
        fig.tight_layout()
        p = out / "micro_speedups.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


# ------------------------------------------------------------------------------------------------ compare
def load_report(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"--compare: {path} does not exist")
    try:
        rep = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--compare: {path} is not JSON ({exc})") from None
    if not isinstance(rep, dict) or "end_to_end_ms" not in rep or "stages" not in rep:
        raise InputError(f"--compare: {path} is not a spinert bench report (no end_to_end_ms/stages)")
    return rep


def compare(a: dict, b: dict, name_a: str, name_b: str) -> str:
    """Ratios B/A (p50, p95, p99) end to end and per stage, then per matching matrix cell."""
    def ratio(x, y):
        return f"{y / x:.3f}" if x and y is not None else "-"

    rows = [f"spinert bench compare: ratio = B / A (B={name_b}, A={name_a}; < 1: B is faster)",
            f"{'':<22}{'A p50 ms':>12}{'B p50 ms':>12}{'p50':>8}{'p95':>8}{'p99':>8}"]
    ea, eb = a["end_to_end_ms"], b["end_to_end_ms"]
    rows.append(f"{'end to end':<22}{_f(ea.get('p50')):>12}{_f(eb.get('p50')):>12}"
                + "".join(f"{ratio(ea.get(q), eb.get(q)):>8}" for q in ("p50", "p95", "p99")))
    for s in STAGES:
        sa, sb = a["stages"].get(s, {}), b["stages"].get(s, {})
        rows.append(f"{s:<22}{_f(sa.get('p50_ms')):>12}{_f(sb.get('p50_ms')):>12}"
                    + "".join(f"{ratio(sa.get(q + '_ms'), sb.get(q + '_ms')):>8}" for q in ("p50", "p95", "p99")))
    cb = {(c["backend"], c["precision"], c["ct"]): c for c in b.get("matrix", [])}
    common = [(c, cb[k]) for c in a.get("matrix", []) if (k := (c["backend"], c["precision"], c["ct"])) in cb]
    if common:
        rows.append("per cell (end to end p50):")
        for ca, cbb in common:
            rows.append(f"  {ca['backend']}/{ca['precision']} {ca['ct']:<10}{_f(ca['end_to_end_ms']['p50']):>12}"
                        f"{_f(cbb['end_to_end_ms']['p50']):>12}{ratio(ca['end_to_end_ms']['p50'], cbb['end_to_end_ms']['p50']):>8}")
    da, db = a.get("dbscan", {}), b.get("dbscan", {})
    if da and db:
        rows.append(f"dbscan speed-up vs sklearn: A {da.get('speedup_vs_sklearn')}x, B {db.get('speedup_vs_sklearn')}x")
    return "\n".join(rows)


def write_micro(rows: list[dict], out: Path | None, stem: str, plot) -> None:
    """A micro-benchmark's rows: printed as JSON, and with ``out`` also written to ``out/<stem>.json``
    next to ``plot(rows, out/<stem>.png)``."""
    text = json.dumps(rows, indent=1)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(text + "\n")
        plot(rows, out / f"{stem}.png")


def speedup_bars(rows: list[dict], path: Path, slow: tuple[str, str], fast: tuple[str, str], ticks: list[str],
                 ylabel: str, title: str, scale: float = 1.0, fmt: str = "{:.1f}x") -> None:
    """A micro-benchmark's plot: per row, the slow and the fast method's time (``(key, label)`` each,
    times ``scale``), the fast bar labelled with ``row["speedup"]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[slow[0]] * scale for r in rows], 0.4, label=slow[1])
    ax.bar([x + 0.2 for x in xs], [r[fast[0]] * scale for r in rows], 0.4, label=fast[1])
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r[fast[0]] * scale, fmt.format(r["speedup"]), ha="center", va="bottom")
    ax.set_xticks(list(xs), ticks)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
