"""`spinert run` (the cascade on CT files, writing the contract files) and `spinert demo` (the bundled sample)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from engine.errors import InputError, SpinertError


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto",
                   help="auto (best present), onnxruntime, tensorrt, tensorrt_rtx or torch-cuda (default auto)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="model precision (default fp32)")
    p.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="models folder with manifest.json (default: the shipped models)")
    p.add_argument("--all-slices", action="store_true",
                   help="run the detector on every sagittal slice (the paper), not only the spine band")
    p.add_argument("--stride", type=int, default=1, help="run every N-th sagittal slice (default 1)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N", help="cap every model's batch at N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime (default: all)")
    p.add_argument("--max-spacing", type=float, default=None, metavar="MM",
                   help="largest voxel spacing accepted (default 3 mm; thicker slices are refused)")
    p.add_argument("--rebuild", action="store_true",
                   help="TensorRT backends: rebuild a missing or stale engine instead of refusing it")
    p.add_argument("--no-recover", action="store_true",
                   help="do not segment the levels the label sequence says were missed (seed 000 as published)")
    p.add_argument("--no-ribs", action="store_true",
                   help="label without the rib cue (which vertebrae carry ribs, engine.ribs)")
    p.add_argument("--no-regrow", action="store_true",
                   help="keep the sacrum as first segmented, not regrown from ROIs around its centroid "
                        "(engine.segment.regrow; saves 3-9 segmenter ROIs)")
    p.add_argument("--no-face-pieces", action="store_true",
                   help="a vertebra the field of view cuts keeps its largest piece only, not its other pieces on "
                        "that face (engine.segment.keep_face_pieces; saves one segmenter ROI per cut vertebra)")
    p.add_argument("--raw-centres", action="store_true",
                   help="centres are the plain mask centroids, without the segmenter's fitted centre offset")


def register(sub) -> None:
    r = sub.add_parser("run", help="the cascade on one or many CTs: masks, centroids and result JSON",
                       description="Reads each CT (NIfTI, NRRD, MHA file or DICOM series folder) and writes "
                                   "<name>_seg-vert_msk.nii.gz, <name>_ctd.json and <name>_result.json into --out.")
    r.add_argument("inputs", nargs="+", type=Path, metavar="CT", help="CT file or DICOM series folder")
    r.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    r.add_argument("--overwrite", action="store_true", help="replace existing output files")
    r.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    _add_engine_args(r)
    r.set_defaults(func=run_cmd)

    d = sub.add_parser("demo", help="the cascade on the bundled sample CT with the shipped models",
                       description="Runs the full cascade on spinert/data/sample_ct.nii.gz on the best backend "
                                   "present, prints the vertebra table, per-stage timings and the localisation "
                                   "error against the sample's ground truth.")
    d.add_argument("--out", type=Path, default=None, metavar="DIR", help="keep the output files here (default: a temp dir)")
    d.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    _add_engine_args(d)
    d.set_defaults(func=demo_cmd)


def _cascade(args):
    from engine.pipeline import Cascade

    kw = {"all_slices": args.all_slices or None, "stride": args.stride, "threads": args.threads,
          "max_spacing_mm": args.max_spacing, "rebuild": args.rebuild,
          "recover": False if getattr(args, "no_recover", False) else None,
          "rib_cue": False if getattr(args, "no_ribs", False) else None,
          "regrow_rounds": 0 if getattr(args, "no_regrow", False) else None,
          "face_pieces": False if getattr(args, "no_face_pieces", False) else None,
          "centre_offset": False if getattr(args, "raw_centres", False) else None}
    if args.stride < 1:
        raise InputError(f"--stride must be >= 1, got {args.stride}")
    if args.max_batch is not None:
        if args.max_batch < 1:
            raise InputError(f"--max-batch must be >= 1, got {args.max_batch}")
        kw["max_batch"] = args.max_batch
    return Cascade(backend=args.backend, precision=args.precision,
                   models_dir=str(args.models) if args.models else None, **kw)


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def timing_table(rows: list[tuple[str, dict]], title: str = "per-stage timings (ms)"):
    from rich.table import Table

    from engine.pipeline import STAGES

    t = Table(title=title)
    t.add_column("CT")
    short = {"preprocess": "prep", "postprocess": "post"}
    cols = (*STAGES, "total")
    for c in cols:
        t.add_column(short.get(c, c), justify="right")
    for name, ms in rows:
        t.add_row(name, *(f"{ms.get(c, 0.0):.0f}" for c in cols))
    return t


def run_cmd(args) -> int:
    from engine.io import volume_name
    from engine.output import check_targets, output_paths, write_result

    names = [volume_name(p) for p in args.inputs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"several inputs would write the same output names: {', '.join(dup)}")
    for p in args.inputs:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a folder")
    # Every target of every input is checked before anything runs or is written.
    check_targets([q for n in names for q in output_paths(args.out, n).values()], args.overwrite)

    console = _console()
    rows, failed = [], 0
    with _cascade(args) as cascade:
        if not args.quiet:
            console.print(f"backend {cascade.backend} ({cascade.device}), precision {cascade.precision}", style="dim")
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, disable=args.quiet, transient=True) as bar:
            task = bar.add_task("CTs", total=len(args.inputs))
            for path, name in zip(args.inputs, names):
                bar.update(task, description=f"{name}")
                try:
                    res = cascade.run(path, name=name)
                    write_result(res, args.out, name, overwrite=args.overwrite, source=str(path))
                except SpinertError as exc:
                    if len(args.inputs) == 1:
                        raise
                    failed += 1
                    print(f"spinert run: error: {exc}", file=sys.stderr)
                    bar.advance(task)
                    continue
                rows.append((name, res.timings_ms))
                for w in res.warnings:
                    print(f"spinert run: warning: {name}: {w}", file=sys.stderr)
                if not args.quiet:
                    labs = ", ".join(v.name for v in res.vertebrae) or "none"
                    console.print(f"{name}: {len(res.vertebrae)} vertebrae ({labs}) -> {args.out}")
                bar.advance(task)
    if rows and not args.quiet:
        console.print(timing_table(rows))
    if failed:
        print(f"spinert run: {failed} of {len(args.inputs)} inputs failed", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------------- demo
SAMPLE = "sample_ct.nii.gz"


def sample_paths() -> dict[str, Path]:
    import spinert

    d = Path(str(spinert.asset_path("data")))
    return {"ct": d / SAMPLE, "mask": d / "sample_seg-vert_msk.nii.gz", "ctd": d / "sample_ctd.json"}


def localisation_errors(result, ctd_path: Path) -> dict[int, dict]:
    """Per predicted vertebra: distance to the ground-truth centre of the same label, and to the nearest one."""
    import numpy as np

    gt = {int(c["label"]): np.array([c["X"], c["Y"], c["Z"]], dtype=float) for c in json.loads(ctd_path.read_text())}
    out = {}
    for v in result.vertebrae:
        c = np.asarray(v.center_lps, dtype=float)
        same = float(np.linalg.norm(c - gt[v.label])) if v.label in gt else None
        near_lab = min(gt, key=lambda k: np.linalg.norm(c - gt[k])) if gt else None
        near = float(np.linalg.norm(c - gt[near_lab])) if gt else None
        out[v.label] = {"same_label_mm": same, "nearest_label": near_lab, "nearest_mm": near}
    return out


def demo_cmd(args) -> int:
    from rich.table import Table

    from engine.output import write_result

    paths = sample_paths()
    if not paths["ct"].is_file():
        raise SpinertError(f"the bundled sample CT is missing ({paths['ct']}); this build ships no demo data")
    console = _console()
    with _cascade(args) as cascade:
        console.print(f"spinert demo: {paths['ct'].name} on {cascade.backend} ({cascade.device}), "
                      f"{cascade.precision}" + ("" if cascade.trained else "  [UNTRAINED placeholder models]"))
        res = cascade.run(paths["ct"], name="sample")
    out_dir = args.out
    tmp = None
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="spinert-demo-")
        out_dir = Path(tmp)
    written = write_result(res, out_dir, "sample", overwrite=args.overwrite, source=str(paths["ct"]))
    errs = localisation_errors(res, paths["ctd"]) if paths["ctd"].is_file() else {}
    t = Table(title=f"vertebrae of {paths['ct'].name}")
    for c, j in (("label", "right"), ("name", "left"), ("X", "right"), ("Y", "right"), ("Z", "right"),
                 ("confidence", "right"), ("voxels", "right"), ("error mm", "right")):
        t.add_column(c, justify=j)
    for v in res.vertebrae:
        e = errs.get(v.label, {})
        if e.get("same_label_mm") is not None:
            err = f"{e['same_label_mm']:.2f}"
        elif e.get("nearest_mm") is not None:
            err = f"({e['nearest_mm']:.1f} to {e['nearest_label']})"
        else:
            err = "-"
        voxels = int(v.mask.sum()) if v.mask is not None else 0
        t.add_row(str(v.label), v.name, *(f"{x:.1f}" for x in v.center_lps), f"{v.confidence:.3f}", str(voxels), err)
    console.print(t)
    console.print(timing_table([("sample", res.timings_ms)]))
    for w in res.warnings:
        console.print(f"warning: {w}", style="yellow")
    same = [e["same_label_mm"] for e in errs.values() if e.get("same_label_mm") is not None]
    if errs:
        import numpy as np

        mle = f"{np.mean(same):.2f} mm over {len(same)} vertebrae" if same else "n/a"
        console.print(f"localisation error (same label as ground truth): {mle}")
    off = res.info.get("centre_offset_mm")
    console.print("centres: mask centroids" + (" moved posteriorly by the segmenter's fitted offset (mm: " +
                                               ", ".join(f"{k} {v:+.2f}" for k, v in off.items()) + ")"
                                               if off else " (no centre offset)"))
    console.print(f"files: {written['mask'].parent}")
    return 0
