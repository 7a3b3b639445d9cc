"""`spinert calibrate`: FP32 ONNX models -> INT8 Q/DQ ONNX, calibrated on real CTs, guarded by the whole cascade."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PARITY_SAMPLES = 2  # INT8-vs-FP32 figure recorded in the manifest (the guard is the real accuracy check)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="INT8 calibration: Q/DQ ONNX models from real CTs, with a cascade accuracy guard",
        description="Builds <name>_int8.onnx beside each model's FP32 file: explicit quantisation (QuantizeLinear/"
                    "DequantizeLinear, int8 symmetric, per-channel weights: what TensorRT 10+ and ONNX Runtime "
                    "run) with ranges calibrated on the model's real inputs made from the CTs of --data "
                    "(VerSe-style <id>_ct.nii.gz + <id>_seg-vert_msk.nii.gz): spine-band sagittal slices for "
                    "the detector, vertebra ROIs for the segmenter, vertebra masks for the labeller. The "
                    "inputs and ranges are cached and reused. The model enters manifest.json as its \"int8\" "
                    "file (spinert run --precision int8, spinert export --precision int8). With --guard, "
                    "the whole cascade runs at FP32, FP16 and INT8 on held-out cases and INT8 is refused "
                    "(kept as <name>_int8.rejected.onnx, exit 2) when Dice or labelling accuracy drop too much.")
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="VerSe-style folder of calibration CTs with label maps")
    p.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="models folder with manifest.json (default: the shipped models)")
    p.add_argument("--model", action="append", default=None, metavar="NAME",
                   help="only this model (repeatable; default all in the manifest)")
    p.add_argument("--method", default="minmax", help="calibration method: minmax (default), entropy or percentile")
    p.add_argument("--samples", type=int, default=32, metavar="N", help="calibration inputs per model (default 32)")
    p.add_argument("--max-cases", type=int, default=8, metavar="K",
                   help="CTs read from --data, spread over the folder (default 8)")
    p.add_argument("--op-types", default="trt", metavar="LIST",
                   help="ops to quantise: trt (default: Conv, ConvTranspose, Gemm, MatMul and pooling, what "
                        "TensorRT runs in INT8), all, or a comma list of ONNX op types")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="calibration cache (default $SPINERT_CALIB_CACHE or ~/.cache/spinert/calib)")
    p.add_argument("--overwrite", action="store_true", help="replace existing INT8 files and guard reports")
    p.add_argument("--guard", type=Path, default=None, metavar="DIR",
                   help="held-out VerSe-style folder (CT, mask, ctd): run the cascade at fp32/fp16/int8 and "
                        "refuse INT8 models that lose too much accuracy")
    p.add_argument("--max-dice-drop", type=float, default=0.01, metavar="D",
                   help="largest accepted drop of mean Dice vs FP32 (default 0.01)")
    p.add_argument("--max-label-drop", type=float, default=1.0, metavar="PTS",
                   help="largest accepted drop of labelling accuracy vs FP32, percentage points (default 1.0)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="guard report folder (default <models>/int8_guard)")
    p.add_argument("--force", action="store_true", help="register INT8 models even if the guard refuses them")
    p.set_defaults(func=run)


def _bar(total: int, what: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=True)
    return bar, bar.add_task(what, total=total)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("spinert", "onnxruntime", "onnx", "onnxslim", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _check_args(args: argparse.Namespace) -> None:
    import math

    from calibration.quantize import METHODS
    from engine.errors import DatasetError, InputError, ModelError

    if args.method not in METHODS:
        raise InputError(f"unknown calibration method {args.method!r} (choose {', '.join(METHODS)})")
    if args.samples < 1:
        raise InputError(f"--samples must be >= 1, got {args.samples}")
    if args.max_cases < 1:
        raise InputError(f"--max-cases must be >= 1, got {args.max_cases}")
    for opt in ("max_dice_drop", "max_label_drop"):
        if not math.isfinite(getattr(args, opt)):
            raise InputError(f"--{opt.replace('_', '-')} must be a finite number")
    if args.models is not None and not args.models.is_dir():
        raise ModelError(f"models folder not found: {args.models}")
    for opt in ("data", "guard"):
        d = getattr(args, opt)
        if d is not None and not d.is_dir():
            raise DatasetError(f"--{opt} {d}: no such folder")
    if args.cache is not None and args.cache.exists() and not args.cache.is_dir():
        raise InputError(f"--cache {args.cache} is a file, not a folder")


def _check_targets(args: argparse.Namespace, specs: dict, root: Path) -> Path | None:
    """Every output is checked before minutes of work, not after; returns the guard's report folder."""
    from calibration import registry as reg
    from engine.errors import OutputExistsError

    paths = [reg.int8_path(s) for s in specs.values()]
    report_dir = None
    if args.guard is not None:
        from calibration.report import check_targets
        from engine.verse import list_cases

        list_cases(args.guard, require=("ct", "msk", "ctd"))
        report_dir = args.report if args.report is not None else root / "int8_guard"
        check_targets(report_dir, args.overwrite)
        paths += [reg.rejected_path(s) for s in specs.values()]
    for p in paths:
        if p.exists() and not args.overwrite:
            raise OutputExistsError(f"{p} exists (use --overwrite to replace it)")
    return report_dir


def _inputs(args: argparse.Namespace, specs: dict, cache, ids: list[str], set_keys: dict) -> tuple[dict, set]:
    """Each model's calibration tensors: from the cache, else built from the CTs (each read once) and cached."""
    from calibration import data as cd

    inputs = {n: got for n in specs if (got := cache.load_inputs(n, set_keys[n])) is not None}
    reused = set(inputs)
    todo = [n for n in specs if n not in inputs]
    if todo:
        bar, task = _bar(len(ids), "reading CTs")
        with bar:
            def step(cid: str) -> None:
                bar.update(task, description=f"reading {cid}")
                bar.advance(task)

            built = cd.build_inputs({n: specs[n] for n in todo}, args.data, ids, args.samples, progress=step)
        for n, ci in built.items():
            cache.save_inputs(ci, set_keys[n])
            inputs[n] = ci
    return inputs, reused


def _quantize_one(args: argparse.Namespace, spec, ci, settings, cache, set_key: str, data_fp: str, tmp: Path,
                  vers: dict, inputs_reused: bool) -> tuple[Path, dict]:
    """One model's Q/DQ file in ``tmp`` and its manifest record; prints one line (and a warning if no Q/DQ)."""
    import datetime as dt

    from calibration import registry as reg
    from calibration.cache import ranges_key
    from calibration.quantize import parity, quantize

    n, iname = spec.name, spec.inputs[0]["name"]
    key = ranges_key(spec.sha256["fp32"], args.method, set_key,
                     {**settings.record(), "onnxruntime": vers.get("onnxruntime"), "onnxslim": vers.get("onnxslim")})
    rpath = cache.ranges_path(n, args.method, key)
    res = quantize(spec.path("fp32"), tmp / f"{n}{reg.INT8_SUFFIX}", iname, ci.x, settings, rpath)
    cache.write_meta(rpath, {"model": n, "model_sha256": spec.sha256["fp32"], "method": args.method,
                             "set_fingerprint": set_key, "data_fingerprint": data_fp, "settings": settings.record()})
    par = parity(spec.path("fp32"), res.path, iname, ci.x[:PARITY_SAMPLES])
    record = {**settings.record(), "samples": ci.n, "samples_requested": args.samples,
              "cases": sorted({c for c, _ in ci.keys}), "data": str(args.data.resolve()), "data_fingerprint": data_fp,
              "set_fingerprint": set_key, "source": "fp32", "source_sha256": spec.sha256["fp32"],
              "simplified": res.simplified, "qdq": res.qdq, "parity": par,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": vers, "guard": None}
    worst = max((v["max_abs"] for v in par.values() if isinstance(v, dict)), default=float("nan"))
    print(f"  {n}: {ci.n} inputs {list(ci.x.shape[1:])} ({'reused from cache' if inputs_reused else 'built'}), "
          f"ranges {'reused from cache' if res.ranges_reused else 'calibrated'}; {res.qdq['quantize_linear']} Q / "
          f"{res.qdq['dequantize_linear']} DQ nodes; max|int8 - fp32| {worst:.3g} on {par['samples']} input(s)")
    if res.qdq["quantize_linear"] == 0:
        print(f"spinert calibrate: warning: {n} has no op of the quantised types ({args.op_types}): its INT8 file "
              f"computes in FP32", file=sys.stderr)
    return res.path, record


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from calibration import data as cd
    from calibration import registry as reg
    from calibration.cache import CalibCache, default_cache_dir
    from calibration.quantize import QuantSettings, parse_op_types
    from engine.errors import ModelError
    from engine.models import load_manifest

    _check_args(args)
    specs_all = load_manifest(args.models)
    names = list(dict.fromkeys(args.model or specs_all))
    unknown = [n for n in names if n not in specs_all]
    if unknown:
        raise ModelError(f"unknown model(s) {', '.join(unknown)} (the manifest has {', '.join(specs_all)})")
    specs = {n: specs_all[n] for n in names}
    for s in specs.values():
        cd.kind_of(s)
        s.verify("fp32")
    settings = QuantSettings(args.method, parse_op_types(args.op_types))
    root = next(iter(specs.values())).root
    report_dir = _check_targets(args, specs, root)
    cache = CalibCache(args.cache if args.cache is not None else default_cache_dir())

    ids = cd.select_cases(args.data, args.max_cases)
    data_fp = cd.data_fingerprint(args.data, ids)
    print(f"spinert calibrate: {args.method}, {args.samples} samples per model from {len(ids)} case(s) of "
          f"{args.data} (data {data_fp[:12]}) -> {root}")
    set_keys = {n: cd.set_fingerprint(data_fp, s, args.samples) for n, s in specs.items()}
    inputs, reused = _inputs(args, specs, cache, ids, set_keys)

    # Candidates go to a scratch folder beside the models (same file system: the final move is atomic).
    try:
        scratch = tempfile.TemporaryDirectory(dir=root, prefix=".calibrate-")
    except OSError as exc:
        raise ModelError(f"models folder {root} is not writable: {exc.strerror}") from None
    with scratch as tmp_name:
        tmp, vers = Path(tmp_name), _versions()
        candidates, records = {}, {}
        for n, s in specs.items():
            candidates[n], records[n] = _quantize_one(args, s, inputs[n], settings, cache, set_keys[n], data_fp,
                                                      tmp, vers, n in reused)
        if args.guard is not None:  # raises GuardRefused (candidates kept as *.rejected.onnx) unless it passes
            guard = _guard(args, specs_all, specs, candidates, tmp, report_dir, data_fp)
            for n in specs:
                records[n]["guard"] = guard
        for n, s in specs.items():
            os.replace(candidates[n], reg.int8_path(s))
            reg.register_int8(root, n, reg.int8_path(s), records[n])
    print(f"spinert calibrate: {len(specs)} INT8 model(s) registered in {root / 'manifest.json'}: "
          f"{', '.join(reg.int8_path(s).name for s in specs.values())}")
    return 0


def _guard(args, specs_all, specs, candidates, tmp: Path, report_dir: Path, data_fp: str) -> dict:
    """Run the guard; refuse (GuardRefused, candidates kept as *.rejected.onnx) unless it passes or --force."""
    import os

    from calibration import registry as reg
    from calibration.guard import GuardRefused, Thresholds, run_guard
    from calibration.report import write
    from engine.verse import list_cases

    stage, notes = reg.staging_dir(specs_all, candidates, tmp / "staging")
    precs = ["fp32"] + (["fp16"] if all("fp16" in s.files for s in specs_all.values()) else []) + ["int8"]
    if "fp16" not in precs:
        notes.append("no FP16 run: not every model has an fp16 file")
    n_cases = len(list_cases(args.guard, require=("ct", "msk", "ctd")))
    bar, task = _bar(n_cases * len(precs), "guard")
    with bar:
        def step(prec: str, cid: str) -> None:
            bar.update(task, description=f"guard {prec} {cid}")
            bar.advance(task)

        res = run_guard(stage, args.guard, Thresholds(args.max_dice_drop, args.max_label_drop), precs, progress=step)
    res.notes.extend(notes)
    if res.refused and args.force:
        res.verdict = "forced"
    context = {"models": list(specs), "method": args.method, "samples": args.samples, "data": str(args.data),
               "data_fingerprint": data_fp}
    paths = write(res, report_dir, context, overwrite=args.overwrite)
    def fmt(v, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for prec, s in res.summaries.items():
        la = s["labelling_accuracy"]
        print(f"  guard {prec}: Dice {fmt(s['dice'], '.4f')}, MLE {fmt(s['mle_mm'], '.2f')} mm, labelling "
              f"{fmt(None if la is None else la * 100, '.1f')}% over {len(res.cases)} case(s)")
    print(f"  guard report: {paths['md']}")
    if res.refused and not args.force:
        kept = []
        for n, s in specs.items():
            os.replace(candidates[n], reg.rejected_path(s))
            kept.append(reg.rejected_path(s).name)
            reg.register_refusal(s.root, n, {"reasons": res.reasons, "method": args.method, "cases": len(res.cases),
                                             "data": str(args.guard), "report": str(paths["json"]),
                                             "delta_vs_fp32": res.deltas()})
        raise GuardRefused(f"INT8 refused by the accuracy guard: {'; '.join(res.reasons)}; not registered, kept as "
                           f"{', '.join(kept)} (report {paths['md']}; --force registers it anyway)")
    if res.refused:
        print(f"spinert calibrate: warning: guard refusal overridden by --force: {'; '.join(res.reasons)}",
              file=sys.stderr)
    return {"verdict": res.verdict, "reasons": res.reasons, "cases": len(res.cases), "data": str(args.guard),
            "thresholds": {"max_dice_drop": args.max_dice_drop, "max_label_drop_points": args.max_label_drop},
            "summary": res.summaries, "delta_vs_fp32": res.deltas(), "report": str(paths["json"])}
