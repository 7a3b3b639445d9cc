"""`spinert calibrate-centres`: fit the segmenter's centre offset on CTs with ground-truth centres."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate-centres", help="fit the segmenter's centre offset (its mask centroids' bias) on labelled CTs",
        description="Runs the cascade with raw mask centroids on the CTs of --data (VerSe-style <id>_ct.nii.gz "
                    "+ <id>_ctd.json; training cases, never the ones you evaluate on), matches each "
                    "prediction to the same-label truth within 20 mm, and takes per region the median "
                    "residual along the vertebra's posterior axis. The offsets enter the segmenter's entry "
                    "of manifest.json as \"centre_offset\" (tied to its sha256) and spinert run applies "
                    "them; a report (JSON + histogram plot) shows the residuals before and after.")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="VerSe-style folder of CTs with ctd files")
    p.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="models folder with manifest.json (default: the shipped models)")
    p.add_argument("--max-cases", type=int, default=None, metavar="K", help="at most K cases, spread over the folder")
    p.add_argument("--min-count", type=int, default=8, metavar="N",
                   help="a region with fewer matched vertebrae takes the pooled offset (default 8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime (default: all)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="report folder (default <models>/centre_offset)")
    p.add_argument("--dry-run", action="store_true", help="fit and report, leave manifest.json as it is")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a centre offset already in the manifest and an existing report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from calibration.centres import MATCH_MM, REPORT_FILES, fit, measure, write_report
    from calibration.cli import _bar
    from calibration.data import select_cases
    from engine.errors import InputError, ModelError
    from engine.localise import CentreOffset, replace_card_section
    from engine.models import default_models_dir, load_manifest, write_manifest
    from engine.pipeline import Cascade
    from evaluation.report import check_report_targets

    if args.max_cases is not None and args.max_cases < 1:
        raise InputError(f"--max-cases must be >= 1, got {args.max_cases}")
    if args.min_count < 1:
        raise InputError(f"--min-count must be >= 1, got {args.min_count}")
    models = Path(args.models) if args.models is not None else default_models_dir()
    spec = load_manifest(models).get("segmenter")
    if spec is None:
        raise ModelError(f"{models / 'manifest.json'} has no segmenter")
    old = CentreOffset.from_manifest(spec.raw)
    if old is not None and not args.dry_run and not args.overwrite:
        raise InputError(f"the segmenter in {models} already has a centre offset (fitted on "
                         f"{old.fitted.get('data', '?')}): use --overwrite to refit it, or --dry-run")
    paths = check_report_targets(args.report or models / "centre_offset", args.overwrite, REPORT_FILES)
    ids = select_cases(args.data, args.max_cases, require=("ct", "ctd"))

    bar, task = _bar(len(ids), "cascade (raw centroids)")
    with Cascade(models_dir=str(models), threads=args.threads, centre_offset=False) as cascade, bar:
        res = measure(cascade, args.data, ids, progress=lambda _cid: bar.advance(task))
    if len(res.labels) == 0:
        raise InputError(f"{args.data}: no prediction matched a same-label truth within {MATCH_MM:g} mm in "
                         f"{len(ids)} case(s): nothing to fit")
    offset = fit(res, spec.sha256.get("fp32", ""), str(args.data), min_count=args.min_count)
    write_report(res, offset, paths, {"models": str(models), "dry_run": bool(args.dry_run)})
    if not args.dry_run:
        write_manifest(models, {"segmenter": {**spec.raw, "centre_offset": offset.to_manifest()}})
        card = models / "segmenter.md"
        if card.is_file():
            card.write_text(replace_card_section(card.read_text(), offset.card_markdown(), offset.CARD_HEADING))
    regions = ", ".join(f"{k} {v:+.2f}" for k, v in offset.mm.items())
    where = "dry run: manifest unchanged" if args.dry_run else f"written to {models / 'manifest.json'}"
    print(f"centre offset along the posterior axis (mm): {regions}  "
          f"[{len(res.labels)} vertebrae, {res.n_cases} cases; {where}]")
    print(f"report: {paths['json']}  {paths['png']}")
    return 0
