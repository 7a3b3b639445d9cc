"""`spinert evaluate`: VerSe-style metrics of prediction folders against ground truth."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="VerSe-style metrics: localisation, identification, labelling, Dice/HD",
                       description="Compare `spinert run` outputs (<id>_ct_seg-vert_msk.nii.gz, <id>_ct_ctd.json; "
                                   "<id>_seg-vert_msk.nii.gz / <id>_ctd.json accepted too) with VerSe-style "
                                   "ground truth (<id>_seg-vert_msk.nii.gz, <id>_ctd.json). Writes "
                                   "evaluation.json, evaluation.md and evaluation.png.")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth folder")
    p.add_argument("--pred", required=True, type=Path, help="prediction folder")
    p.add_argument("--out", type=Path, help="report folder (default: <pred>/evaluation)")
    p.add_argument("--case", action="append", dest="cases", metavar="ID",
                   help="evaluate only this GT case (repeatable)")
    p.add_argument("--baseline", type=Path, metavar="REPORT",
                   help="also compare with this earlier evaluation.json (or its folder) of the same ground "
                        "truth: comparison.md/.json with the summary's changes and the vertebrae each case "
                        "gained or lost")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=main)


def main(args) -> int:
    from evaluation import compare
    from evaluation.report import check_report_targets, evaluate_folders, write_report

    out = args.out or args.pred / "evaluation"
    # Fail before minutes of work, not after.
    check_report_targets(out, overwrite=args.overwrite)
    baseline = None
    if args.baseline is not None:
        baseline = compare.load_report(args.baseline)
        compare.check_comparison_targets(out, overwrite=args.overwrite)
    report = evaluate_folders(args.gt, args.pred, ids=args.cases, progress=sys.stderr.isatty())
    paths = write_report(report, out, overwrite=args.overwrite)
    print(report.markdown(per_label=False))  # the per-vertebra table is in evaluation.md
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"report: {paths['json']}  {paths['md']}  {paths['png']}")
    if baseline is not None:
        cmp = compare.compare(report.to_json(), baseline)
        cpaths = compare.write_comparison(cmp, out, overwrite=args.overwrite)
        print(f"\nagainst {args.baseline}:\n")
        print(compare.markdown(cmp))
        print(f"comparison: {cpaths['json']}  {cpaths['md']}")
    return 0
