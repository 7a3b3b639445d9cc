"""`spinert train detector|segmenter|labeller --data DIR ...` (and `spinert train placeholders`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import OutputExistsError, SpinertError

MODELS = ("detector", "segmenter", "labeller")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="(re)train one of the three models and ship it as ONNX",
                              description=__doc__)
    p.add_argument("model", choices=MODELS + ("placeholders",),
                   help="which model; 'placeholders' exports untrained models (interface only)")
    p.add_argument("--data", help="VerSe-style folder (<id>_ct.nii.gz, <id>_seg-vert_msk.nii.gz)")
    p.add_argument("--out", help="models folder to ship into (default: the package's spinert/models)")
    p.add_argument("--work", help="cache + checkpoints folder (default: ./spinert-train/<model>)")
    p.add_argument("--overwrite", action="store_true", help="replace this model's files in --out")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="steps per epoch (segmenter/labeller)")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-frac", type=float, default=0.15, help="fraction of cases held out for validation")
    p.add_argument("--val-data", metavar="DIR",
                   help="validate on this VerSe-style folder's cases instead (new case ids; --data then all trains)")
    p.add_argument("--max-cases", type=int, help="use only the first N cases")
    p.add_argument("--workers", type=int,
                   help="processes that fill the segmenter/labeller data cache (default: the cores, at most 4; "
                        "1 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long schedule with tiny inputs (CI smoke test)")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--widths", help="comma-separated channel widths (segmenter/labeller)")
    p.add_argument("--patch", type=int, help="segmenter training sub-crop edge (voxels)")
    p.add_argument("--val-rois", type=int, help="segmenter ROIs evaluated each epoch")
    p.add_argument("--channels", help="labeller channels: 'mask' or 'mask,ct'")
    p.add_argument("--coarse-p", type=float,
                   help="segmenter/labeller: probability of the coarse-scanner simulation per sample (training.lowres; default 0)")
    p.add_argument("--density-p", type=float,
                   help="segmenter: probability of fainter bone per sample (training.density; default 0)")
    p.add_argument("--crop", choices=["fixed", "bbox"], help="labeller crop mode")
    p.add_argument("--masks-from", metavar="MODELS",
                   help="labeller: train (or --evaluate) on the masks this models folder's segmenter draws, "
                        "as the cascade hands them over, instead of the ground-truth masks")
    p.add_argument("--imgsz", type=int, help="detector image size")
    p.add_argument("--arch", help="detector ultralytics yaml (default yolo11n.yaml)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start from these weights (detector: ultralytics .pt; segmenter/labeller: a checkpoint of --work/ckpt "
                        "or a shipped fp32 ONNX file such as spinert/models/segmenter.onnx) with a new schedule "
                        "instead of from scratch")
    p.add_argument("--slice-step", type=int, help="detector: use every Nth sagittal slice")
    p.add_argument("--evaluate", metavar="DIR",
                   help="no training: acceptance figures of the shipped model in --out on this held-out folder")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="file evaluated by --evaluate")
    p.add_argument("--json", metavar="PATH", help="--evaluate: also write the figures to this JSON file")
    p.add_argument("--record", action="store_true",
                   help="--evaluate: store the figures in the model's manifest entry and card (under the folder's name)")
    p.set_defaults(func=run)


def _check_out(args) -> None:
    names = MODELS if args.model == "placeholders" else (args.model,)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SpinertError(f"--out {out} is not a folder")
    clash = [f for n in names for f in (f"{n}.onnx", f"{n}_fp16.onnx", f"{n}.md") if (out / f).exists()]
    if clash and not args.overwrite:
        raise OutputExistsError(f"{out / clash[0]} exists (use --overwrite to replace the shipped model)")


def run(args) -> int:
    if args.out is None:
        import spinert

        args.out = str(spinert.asset_path("models"))
    if args.work is None:
        args.work = str(Path("spinert-train") / args.model)
    if args.evaluate:
        if args.model == "placeholders":
            raise SpinertError("--evaluate needs a model name")
        if not Path(args.evaluate).is_dir():
            raise SpinertError(f"evaluation folder not found: {args.evaluate}")
        from training.evaluate import evaluate

        res = evaluate(args, log=lambda s: print(s, flush=True))
        if args.json:
            import json

            dst = Path(args.json)
            if dst.exists() and not args.overwrite:
                raise OutputExistsError(f"{dst} exists (use --overwrite to replace it)")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(json.dumps({"model": args.model, **res}, indent=1) + "\n")
        if args.record:
            from training.cards import record_heldout

            print(f"recorded in {record_heldout(args.out, args.model, Path(args.evaluate).name, res)}")
        return 0
    _check_out(args)
    if args.model == "placeholders":
        from training.placeholders import export_placeholders

        res = export_placeholders(Path(args.out), Path(args.work))
        print(f"untrained placeholder models written: {res}")
        return 0
    if not args.data:
        raise SpinertError("--data DIR is required")
    from training.common import init_path

    init_path(args)  # a missing --init file fails now, not after minutes of data caching
    if not Path(args.data).is_dir():
        raise SpinertError(f"data folder not found: {args.data}")
    if args.val_data and not Path(args.val_data).is_dir():
        raise SpinertError(f"--val-data folder not found: {args.val_data}")
    if args.model == "detector":
        from training import detector as mod
    elif args.model == "segmenter":
        from training import segmenter as mod
    else:
        from training import labeller as mod
    res = mod.train(args, log=lambda s: print(s, flush=True))
    print(f"{args.model}: metrics {res['metrics']}")
    print(f"{args.model}: ONNX parity (max abs err) {res['parity']}")
    print(f"{args.model}: manifest {res['manifest']}")
    return 0


def build_namespace(**kw) -> argparse.Namespace:
    """Defaults of the CLI as a Namespace (for tests and scripts)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    argv = ["train", kw.pop("model")]
    ns = parser.parse_args(argv)
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns
