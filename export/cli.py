"""`spinert export`: the shipped ONNX models -> TensorRT engines (+ manifests), and `--check` for stale ones."""
from __future__ import annotations

import argparse
from pathlib import Path

PRECISIONS = ("fp16", "int8", "fp32")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="build TensorRT engines from the ONNX models; --check lists stale engines",
        description="Builds one TensorRT engine per model (ONNX, opset >= 17, dynamic batch, simplified with "
                    "onnxslim) with a JSON manifest beside it. Up-to-date engines are skipped unless --force. "
                    "With --check nothing is built: each engine is listed as fresh/stale/missing and the exit "
                    "code is 1 if any is not fresh.")
    p.add_argument("--precision", default="fp16", help="fp16 (default), int8 (needs `spinert calibrate` first) or fp32")
    p.add_argument("--target", default="auto",
                   help="rtx (TensorRT for RTX: builds without a GPU), trt (TensorRT 10+: builds on the GPU present) "
                        "or auto (trt where a GPU and TensorRT are present, else rtx)")
    p.add_argument("--out", type=Path, default=None,
                   help="engine folder (default $SPINERT_ENGINES or ~/.cache/spinert/engines)")
    p.add_argument("--models", type=Path, default=None, help="models folder with manifest.json (default: shipped models)")
    p.add_argument("--model", action="append", default=None, metavar="NAME",
                   help="only this model (repeatable; default all in the manifest)")
    p.add_argument("--cc", default="auto",
                   help="RTX target compute capabilities: auto (the GPU present, else all the library supports), "
                        "all, or a list like 8.6,8.9,12.0")
    p.add_argument("--profile", action="append", default=None, metavar="MODEL=MIN/OPT/MAX",
                   help="batch sizes of a model's optimisation profile (default detector=1/32/64, "
                        "segmenter=1/8/24, labeller=1/17/32)")
    p.add_argument("--check", action="store_true", help="only report fresh/stale/missing engines (exit 1 if any is not fresh)")
    p.add_argument("--force", action="store_true", help="rebuild even fresh engines (and replace unmanaged engine files)")
    p.add_argument("--no-parity", action="store_true", help="skip the engine-vs-ONNX parity run (it needs a GPU anyway)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import BackendError, ModelError, OutputExistsError
    from engine.models import load_manifest, run_precision
    from export import flavour as fl
    from export.engines import check_engine, default_engine_dir
    from export.gpu import gpu_info
    from export.profiles import batch_for, parse_overrides, profiles_for

    if args.precision not in PRECISIONS:
        raise BackendError(f"unknown precision {args.precision!r} (choose {', '.join(PRECISIONS)})")
    if args.models is not None and not args.models.is_dir():
        raise ModelError(f"models folder not found: {args.models}")
    specs = load_manifest(args.models)
    names = args.model or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ModelError(f"unknown model(s) {', '.join(unknown)} (the manifest has {', '.join(specs)})")
    overrides = parse_overrides(args.profile)
    bad = [n for n in overrides if n not in specs]
    if bad:
        raise ModelError(f"--profile for unknown model(s) {', '.join(bad)}")
    target = fl.canonical(args.target) if args.target != "auto" else fl.default_target(gpu_info() is not None)
    out = args.out if args.out is not None else default_engine_dir()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder")

    # The precision the cascade loads each model at (engine.models.run_precision): FP16 for a refused INT8.
    precs = {n: run_precision(specs[n], args.precision) for n in names}
    if args.check:
        statuses = [check_engine(specs[n], precs[n], target, out) for n in names]
        for st in statuses:
            print(st.line())
        bad_n = sum(not s.fresh for s in statuses)
        if bad_n:
            print(f"{bad_n} of {len(statuses)} engine(s) need a rebuild: spinert export --precision {args.precision} "
                  f"--target {fl.SHORT[target]}" + (f" --out {args.out}" if args.out else "")
                  + (f" --models {args.models}" if args.models else ""))
        return 1 if bad_n else 0

    from export.build import build_engine, parse_cc, resolve_targets

    f = fl.load(target)
    cc = parse_cc(args.cc, f)
    targets = resolve_targets(f, cc)
    gpu = gpu_info()
    print(f"spinert export: {f.name} {f.version}, {args.precision}, targets cc {', '.join(targets)}, "
          f"{'GPU ' + gpu.name + ' (cc ' + gpu.cc + ')' if gpu else 'no GPU (ahead-of-time build)'} -> {out}")
    n_built = 0
    for n in names:
        spec = specs[n]
        batch = batch_for(n, overrides)
        prec = precs[n]
        if prec != args.precision:
            print(f"  note    {n}: no {args.precision} file (refused by spinert calibrate's guard): {prec} engine")
        st = check_engine(spec, prec, target, out)
        why = list(st.reasons)
        if st.fresh and st.manifest is not None:
            if st.manifest.profiles != profiles_for(n, spec.inputs, batch):
                why.append("profiles changed")
            if sorted(st.manifest.target_cc) != sorted(targets):
                why.append("target compute capabilities changed")
        if st.fresh and not why and not args.force:
            print(f"  fresh   {n}: {st.path.name} (skipped; --force rebuilds)")
            continue
        if st.path.is_file() and st.manifest is None and st.state != "missing" and not args.force:
            raise OutputExistsError(f"{st.path} exists without a spinert manifest; pass --force to replace it")
        m = build_engine(spec, prec, f, out, batch, cc=cc, parity=not args.no_parity)
        n_built += 1
        parity = m.parity if isinstance(m.parity, str) else ", ".join(
            f"{k} max|d| {v['max_abs']:.3g}" for k, v in m.parity.items() if isinstance(v, dict))
        print(f"  built   {n}: {m.engine_file} {m.engine_bytes / 1e6:.1f} MB in {m.build_seconds:.1f} s "
              f"(batch {'/'.join(map(str, batch))}; {'; '.join(why) or 'forced' if st.state != 'missing' else 'new'}); "
              f"parity {parity}")
    print(f"spinert export: {n_built} engine(s) built, {len(names) - n_built} fresh")
    return 0
