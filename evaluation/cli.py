"""`spinert evaluate`: VerSe-style metrics of prediction folders against ground truth."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="VerSe-style metrics: localisation, identification, labelling, Dice/HD",
                       description="Compare `spinert run` outputs (<id>_ct_seg-vert_msk.nii.gz, <id>_ct_ctd.json) "
                                   "with VerSe-style ground truth (<id>_seg-vert_msk.nii.gz, <id>_ctd.json).")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth folder")
    p.add_argument("--pred", required=True, type=Path, help="prediction folder")
    p.add_argument("--out", type=Path, help="report folder (default: <pred>/evaluation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=main)


def main(args) -> int:
    from evaluation.report import evaluate_folders, write_report

    report = evaluate_folders(args.gt, args.pred, progress=sys.stderr.isatty())
    missing = [c.case for c in report.cases if c.missing_prediction]
    paths = write_report(report, args.out or args.pred / "evaluation", overwrite=args.overwrite)
    print(report.markdown())
    if missing:
        print(f"warning: no prediction for {len(missing)} case(s): {', '.join(missing)} (counted as missed)",
              file=sys.stderr)
    print(f"report: {paths['json']}  {paths['md']}  {paths['png']}")
    return 0
