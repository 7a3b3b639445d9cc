"""`spinert bench`: latency profile of the cascade (per stage, end to end, p50/p95/p99/max) over a matrix of
backends x precisions x CT sizes, the naive all-slices baseline, each model session alone, and
micro-benchmarks of the hand-written hot paths (DBSCAN, NMS, resampling, mask encoding/publish).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from engine.errors import InputError, OutputExistsError

PRECISIONS = ("fp32", "fp16", "int8")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="latency profile: per-stage/e2e percentiles, backend x precision x CT "
                                            "size matrix, micro-benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="CI smoke mode: small CTs, fp32, few runs (~2 min on 2 cores)")
    p.add_argument("--json", metavar="PATH", help="write the report here (and the markdown table next to it, .md)")
    p.add_argument("--plot", metavar="DIR", help="write stage_breakdown.png and latency_vs_size.png here")
    p.add_argument("--runs", metavar="N", help="timed runs per cell (default 5; --quick 2)")
    p.add_argument("--warmup", metavar="N", help="untimed warm-up runs per cell (default 1)")
    p.add_argument("--backend", nargs="+", metavar="B", help="backends (default: every registered one; those that "
                                                             "cannot run here are skipped with the reason)")
    p.add_argument("--precision", nargs="+", metavar="P", choices=PRECISIONS,
                   help="precisions (default fp32 fp16 int8; --quick fp32)")
    p.add_argument("--sizes", nargs="+", metavar="S", help="CTs: 'sample' (the shipped CT) and/or synthetic CTs with "
                                                            "this many vertebrae (3 6 12 17 24); default sample 6 12 17 "
                                                            "24, --quick sample 6")
    p.add_argument("--ct", nargs="+", metavar="PATH", default=[], type=Path,
                   help="also bench these CT files (alone when --sizes is not given)")
    p.add_argument("--threads", metavar="N", help="CPU intra-op threads per session (default: the runtime's)")
    p.add_argument("--work", metavar="DIR", type=Path, help="cache for generated phantom CTs "
                                                            "(default: <tmp>/spinert-bench-cache)")
    p.add_argument("--note", help="free text stored in the report (e.g. 'shared CPU: training jobs running')")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), type=Path,
                   help="print ratios B/A per stage and end to end, then exit")
    p.set_defaults(func=handler)


def _count(value: str | None, name: str, default: int, minimum: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise InputError(f"{name} must be an integer, got {value!r}") from None
    if n < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {n}")
    return n


def _check_out(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists (use --overwrite to replace it)")


def handler(args: argparse.Namespace) -> int:
    from bench import report as rp

    if args.compare:
        a, b = (rp.load_report(p) for p in args.compare)
        print(rp.compare(a, b, str(args.compare[0]), str(args.compare[1])))
        return 0
    runs = _count(args.runs, "--runs", 2 if args.quick else 5, 1)
    warmup = _count(args.warmup, "--warmup", 1, 0)
    threads = _count(args.threads, "--threads", 0, 1) if args.threads is not None else None
    from bench import runner as rn
    from engine.backends import BACKENDS, _canonical

    backends = [_canonical(b) for b in args.backend] if args.backend else list(BACKENDS)
    precisions = args.precision or (["fp32"] if args.quick else list(PRECISIONS))
    if args.sizes is not None:
        sizes = rn.parse_sizes(args.sizes)
    elif args.ct:
        sizes = []
    else:
        sizes = rn.parse_sizes(["sample", "6"] if args.quick else ["sample", "6", "12", "17", "24"])
    for p in args.ct:
        if not p.exists():
            raise InputError(f"--ct: {p} does not exist")
    json_path = Path(args.json) if args.json else None
    md_path = json_path.with_suffix(".md") if json_path else None
    plot_dir = Path(args.plot) if args.plot else None
    for p in [json_path, md_path] + ([plot_dir / "stage_breakdown.png", plot_dir / "latency_vs_size.png"]
                                     if plot_dir else []):
        if p is not None:
            _check_out(p, args.overwrite)
    cache = args.work or Path(tempfile.gettempdir()) / "spinert-bench-cache"
    cache.mkdir(parents=True, exist_ok=True)

    from engine.backends import probe
    from engine.models import MODEL_NAMES, load_manifest

    specs = load_manifest(None)
    trained = all(specs[m].is_trained for m in MODEL_NAMES)
    runnable = [(b, p) for b in backends if probe(b) is None for p in precisions
                if all(p in specs[m].files for m in MODEL_NAMES)]
    n_ct = len(sizes) + len(args.ct)
    if n_ct == 0:
        raise InputError("no CT to bench (give --sizes and/or --ct)")
    base_runs, base_warm = (1, 0) if args.quick else (runs, warmup)
    skipped_cells = (len(backends) * len(precisions) - len(runnable)) * n_ct
    total = (n_ct + len(runnable) * n_ct * (runs + warmup) + skipped_cells + (base_runs + base_warm
             if runnable else 0) + 3 * len(runnable) + 4)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.machine import machine_info

    t_start = time.perf_counter()
    rep: dict = {"schema": "spinert.bench/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "machine": machine_info(), "models_trained": trained,
                 "models": {m: {"version": specs[m].version, "trained": specs[m].is_trained} for m in MODEL_NAMES},
                 "timer": "host wall clock (time.perf_counter); GPU sessions synchronise before returning",
                 "settings": {"quick": bool(args.quick), "runs": runs, "warmup": warmup, "backends": backends,
                              "precisions": precisions, "sizes": [str(s) for s in sizes],
                              "ct_files": [str(p) for p in args.ct], "threads": threads},
                 "note": args.note}
    if not trained:
        rep["models_note"] = ("untrained placeholder models: the detector finds no vertebra, so cluster/segment/"
                              "label/postprocess do no work and their cascade times are not real costs; see "
                              "model_sessions for per-slice/ROI/vertebra costs and projected_trained_ms")
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as bar:
        task = bar.add_task("starting", total=total)

        def tick(desc: str) -> None:
            bar.update(task, advance=1, description=desc)

        cts = rn.make_cts(sizes, list(args.ct), cache, tick)
        rep["cts"] = [{"name": c.name, "vertebrae": c.vertebrae, "size_ijk": list(c.shape_ijk),
                       "spacing_mm": [round(float(s), 4) for s in c.spacing]} for c in cts]
        cells, skipped = rn.cascade_matrix(backends, precisions, cts, runs, warmup, tick, threads)
        rep["matrix"], rep["skipped"] = cells, skipped
        rep["model_sessions"] = {}
        batches = {"detector": 8 if args.quick else 16, "segmenter": 1 if args.quick else 2,
                   "labeller": 2 if args.quick else 8}
        for b, p in runnable:
            rep["model_sessions"][f"{b}/{p}"] = rn.model_sessions(b, p, batches, runs, min(warmup, 1), tick, threads)
        if runnable:
            b, p = runnable[0]
            rep["naive_baseline"] = rn.naive_baseline(b, p, cts[0], base_runs, base_warm, tick, threads)
        else:
            rep["naive_baseline"] = None
        sets = rn.cascade_point_sets(*runnable[0], cts, threads) if runnable else []
        rep["dbscan"] = rn.micro_dbscan((500, 1000) if args.quick else (500, 1000, 3000), 5 if args.quick else 20, sets)
        tick("DBSCAN vs scikit-learn")
        rep["nms"] = rn.micro_nms(100 if args.quick else 250, 30, 5 if args.quick else 20)
        tick("NMS")
        rep["resample"] = rn.micro_resample(2 if args.quick else 5)
        tick("resampling")
        rep["bridge"] = rn.micro_bridge(20 if args.quick else 200)
        tick("bridge encode + publish")
    _project(rep)
    if not cells:
        raise InputError("no backend/precision could run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    head = cells[0]
    rep["headline"] = {"backend": head["backend"], "precision": head["precision"], "ct": head["ct"]}
    rep["end_to_end_ms"] = head["end_to_end_ms"]
    rep["stages"] = head["stages"]
    rep["throughput"] = head["throughput"]
    rep["publish_ms"] = rep["bridge"]["latency"]["publish_to_subscriber_ms"]
    rep["wall_s"] = round(time.perf_counter() - t_start, 1)
    md = rp.markdown(rep)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rep, indent=2) + "\n")
        md_path.write_text(md)
    if plot_dir:
        rep_plots = rp.plots(rep, plot_dir)
        print(f"plots: {', '.join(map(str, rep_plots))}", file=sys.stderr)
    print(md)
    return 0


def _project(rep: dict) -> None:
    """With untrained models, add what a trained cascade would pay on each cell: the measured cascade plus
    one segmenter ROI and one labeller crop per vertebra in the CT (from the sessions-alone costs)."""
    for c in rep["matrix"]:
        c["projected_trained_ms"] = None
        ms = rep["model_sessions"].get(f"{c['backend']}/{c['precision']}")
        if rep["models_trained"] or not ms or not c.get("vertebrae_in_ct") or c["end_to_end_ms"]["p50"] is None:
            continue
        per_v = ms["segmenter"]["ms_per_roi"] + ms["labeller"]["ms_per_vertebra"]
        c["projected_trained_ms"] = round(c["end_to_end_ms"]["p50"] + c["vertebrae_in_ct"] * per_v, 1)
