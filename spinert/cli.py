"""The `spinert` console script: one dispatcher, each subcommand registered by the package that owns it.

Command modules are imported only to build the parser; each must keep heavy imports (torch, ultralytics,
TensorRT) inside its handler so `spinert --help` and the lean runtime stay light.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine.errors import SpinertError

# Modules that expose register(subparsers). Order = order in --help.
COMMAND_MODULES = (
    "engine.cli",        # demo, run
    "bridge.cli",        # serve
    "export.cli",        # export
    "calibration.cli",   # calibrate
    "calibration.centres_cli",  # calibrate-centres
    "bench.cli",         # bench
    "training.cli",      # train
    "phantom.cli",       # phantom
    "phantom.realism",   # realism
    "evaluation.cli",    # evaluate
)


def build_parser() -> argparse.ArgumentParser:
    from spinert import __version__

    parser = argparse.ArgumentParser(prog="spinert", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"spinert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:  # that command is not part of this build yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except SpinertError as exc:
        print(f"spinert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spinert {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a traceback
        if os.environ.get("SPINERT_DEBUG"):
            raise
        print(f"spinert {args.command}: internal error: {type(exc).__name__}: {exc} "
              f"(set SPINERT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
