"""`spinert phantom`: write N synthetic VerSe-style spine CT cases."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from phantom.profiles import PROFILES

    p = subparsers.add_parser("phantom", help="generate synthetic spine CTs (VerSe-style files)",
                              description="Write N synthetic spine CTs with VerSe labels and centroids. "
                                          "Case i uses seed S+i (training < 100000 <= held-out evaluation).")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES), help="sampling profile")
    p.add_argument("--orientation", default=None, help="force a storage orientation code, e.g. LPS, RAS, PIR")
    p.add_argument("--generator", type=int, default=None,
                   help="generator version to make (default the newest; 4 rebuilds the data the shipped models "
                        "were trained and judged on)")
    p.add_argument("--overwrite", action="store_true", help="replace existing case files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.errors import InputError, OutputExistsError
    from phantom import generate, write_case
    from phantom.generator import GENERATOR_VERSION, GENERATOR_VERSIONS
    from phantom.io import case_paths
    from phantom.scanner import ALL_CODES

    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise InputError(f"--seed must be non-negative, got {args.seed}")
    version = GENERATOR_VERSION if args.generator is None else args.generator
    if version not in GENERATOR_VERSIONS:
        raise InputError(f"--generator must be one of {', '.join(map(str, GENERATOR_VERSIONS))}, got {version}")
    if args.orientation is not None and args.orientation.upper() not in ALL_CODES:
        raise InputError(f"--orientation {args.orientation!r} is not an orientation code like LPS, RAS, PIR")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out} is not writable")
    if not args.overwrite:  # fail before spending minutes on generation
        for i in range(args.n):
            cid = f"phantom-{args.profile}-{args.seed + i:06d}"
            clash = [p.name for p in case_paths(cid, out).values() if p.exists()]
            if clash:
                raise OutputExistsError(f"{out}: {clash[0]} already exists; use --overwrite to replace")
    orient = args.orientation.upper() if args.orientation else None
    with Progress(TextColumn("phantom"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}")) as prog:
        task = prog.add_task("", total=args.n)
        for i in range(args.n):
            case = generate(args.seed + i, args.profile, orientation=orient, generator=version)
            write_case(case, out, overwrite=args.overwrite)
            prog.update(task, advance=1, description=f"{case.case_id} {len(case.centroids)} vertebrae")
    print(f"wrote {args.n} case(s) to {out}")
    return 0
