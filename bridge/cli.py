"""`spinert serve` (the robot bridge) and `spinert serve-keys` (CURVE key pairs for it)."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from engine.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("serve", help="robot bridge: stream results over ZeroMQ and take run requests",
                       description="Publishes results, status and heartbeats on --pub (msgpack, schema v1, see "
                                   "bridge/PROTOCOL.md) and answers requests (run/last/health/models) on --rep. "
                                   "Use port * to bind a free port; the bound endpoints are printed on stderr.")
    p.add_argument("--pub", required=True, help="PUB endpoint to bind, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--rep", required=True, help="request endpoint to bind (plain REQ clients), e.g. tcp://127.0.0.1:5557")
    p.add_argument("--curve-keys", type=Path, metavar="DIR",
                   help="encrypt and authenticate with CURVE: DIR/server.key_secret and DIR/clients/*.key "
                        "(make them with `spinert serve-keys DIR`)")
    p.add_argument("--hwm", type=int, default=64, help="messages queued per subscriber before dropping for it (default 64)")
    p.add_argument("--max-request-mb", type=float, default=512.0,
                   help="largest request answered, e.g. an inline CT (default 512)")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="S", help="heartbeat period in seconds (default 1)")
    p.add_argument("--max-queue", type=int, default=4, help="run requests queued behind the running one (default 4)")
    p.add_argument("--backend", default=None, help="cascade backend (as `spinert run --backend`)")
    p.add_argument("--precision", default=None, help="cascade precision (as `spinert run --precision`)")
    p.add_argument("--replay", type=Path, metavar="DIR",
                   help="no cascade: answer run requests with DIR/<id>_seg-vert_msk.nii.gz "
                        "(robot-side integration tests without models)")
    p.set_defaults(func=serve)

    k = sub.add_parser("serve-keys", help="make CURVE key pairs for `spinert serve --curve-keys`",
                       description="Writes DIR/server.key(_secret) and DIR/clients/NAME.key(_secret) per client. "
                                   "The server admits exactly the public keys in DIR/clients/; move each client's "
                                   ".key_secret and DIR/server.key to that client.")
    k.add_argument("dir", type=Path)
    k.add_argument("--client", action="append", default=None, metavar="NAME",
                   help="client name (repeatable; default: robot)")
    k.add_argument("--overwrite", action="store_true", help="replace existing key files")
    k.set_defaults(func=serve_keys)


def serve_keys(args) -> int:
    from bridge.keys import generate_keys

    for path in generate_keys(args.dir, tuple(args.client or ["robot"]), overwrite=args.overwrite):
        print(path)
    return 0


def _check_args(args) -> None:
    if args.hwm < 1:
        raise InputError(f"--hwm must be >= 1, got {args.hwm}")
    if not args.max_request_mb > 0:
        raise InputError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    if not args.heartbeat > 0:
        raise InputError(f"--heartbeat must be > 0, got {args.heartbeat}")
    if args.max_queue < 1:
        raise InputError(f"--max-queue must be >= 1, got {args.max_queue}")
    for opt in ("pub", "rep"):
        addr = getattr(args, opt)
        if "://" not in addr:
            raise InputError(f"--{opt} {addr!r}: expected a ZeroMQ endpoint such as tcp://127.0.0.1:5556")
    if args.curve_keys is not None and not args.curve_keys.is_dir():
        raise InputError(f"--curve-keys {args.curve_keys}: no such folder (make one with `spinert serve-keys DIR`)")


def serve(args) -> int:
    from bridge.server import BridgeServer, ServerConfig

    _check_args(args)
    cascade = None
    if args.replay is not None:
        from bridge.replay import replay_runner

        runner, models = replay_runner(args.replay), (lambda: {"replay": str(args.replay)})
    else:
        from bridge.engine_runner import cascade_runner

        runner, models, cascade = cascade_runner(backend=args.backend, precision=args.precision)
        if not cascade.trained:
            print("spinert serve: warning: models are untrained placeholders; results are not meaningful",
                  file=sys.stderr, flush=True)

    cfg = ServerConfig(pub=args.pub, rep=args.rep, hwm=args.hwm, max_request_mb=args.max_request_mb,
                       heartbeat_s=args.heartbeat, max_queue=args.max_queue, curve_keys=args.curve_keys)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = BridgeServer(cfg, runner, models).start()
    try:
        print(f"spinert serve: PUB {server.pub_endpoint} requests {server.rep_endpoint}"
              f"{' (CURVE)' if args.curve_keys else ''}", file=sys.stderr, flush=True)
        # Short waits: signal handlers run between them; the loop thread dying also ends the server.
        while not stop.wait(0.2):
            if not server.running:
                print("spinert serve: error: the bridge loop stopped unexpectedly", file=sys.stderr)
                return 1
    finally:
        server.stop()
        if cascade is not None:
            cascade.close()
        for s, h in old.items():
            signal.signal(s, h)
    print("spinert serve: stopped", file=sys.stderr, flush=True)
    return 0
