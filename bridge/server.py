"""The robot bridge server: a PUB socket streaming results/status/heartbeats and a ROUTER taking requests.

Threads and ownership (ZeroMQ sockets are not thread-safe):
- the loop thread owns every socket. It polls the ROUTER, a self-pipe and the heartbeat clock; it alone
  sends, so seq numbers are assigned in send order;
- the worker thread runs the cascade (the injected ``runner``) one request at a time and hands messages
  to the loop through a queue plus a byte on the self-pipe (any thread may call ``publish``);
- zmq.auth's ThreadAuthenticator (CURVE only) answers ZAP requests in its own thread.

Nothing ever waits on a subscriber: PUB drops for a peer whose queue holds SNDHWM messages and every send
is NOBLOCK. PUB's idea of how full each peer's queue is comes from credit its I/O thread posts to the socket's
mailbox, which zmq_send() reads at most once per ~1 ms; the loop refreshes it before every publish, so a
subscriber that keeps up is never taken for a full one (see _send_pub).

Requests are checked for size, type and content; every malformed one gets a spinert.error/1 reply. Frames
larger than MAXMSGSIZE (twice the request limit) are cut off by libzmq itself, which drops that connection
without a reply (a REQ client then times out and resets: lazy pirate).
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import zmq

from bridge import codec
from bridge.inline import MAX_VOXELS_DEFAULT, detect_suffix, read_inline
from engine.errors import SpinertError

log = logging.getLogger("spinert.bridge")

OPS = ("run", "last", "health", "models")
MiB = 1 << 20
REPLY_GRACE_S = 2.0  # how long a reply may wait for a peer that looks full before it is dropped
ROUTER_HWM = 64  # replies queued per request peer (a REQ peer has at most one outstanding)


class Progress(Protocol):
    def __call__(self, stage: str, event: str, **info: Any) -> None: ...


# runner(volume_or_path, progress) -> SpineResult. progress(stage, "started" | "finished", **info).
Runner = Callable[..., Any]


@dataclass
class ServerConfig:
    pub: str = "tcp://127.0.0.1:5556"
    rep: str = "tcp://127.0.0.1:5557"
    hwm: int = 64  # messages queued per subscriber before PUB drops for that subscriber (a run bursts ~15)
    max_request_mb: float = 512.0  # largest request answered (inline CTs); MAXMSGSIZE is twice this
    heartbeat_s: float = 1.0
    max_queue: int = 4  # run requests waiting behind the one running
    max_voxels: int = MAX_VOXELS_DEFAULT
    curve_keys: Path | None = None
    linger_ms: int = 200  # how long close() may try to flush; never longer

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MiB)


@dataclass
class _Job:
    envelope: list[bytes]
    request_id: str
    source: Any  # a path (str) or ("inline", bytes, suffix, name)
    queued_ns: int = field(default_factory=time.time_ns)


class RequestError(Exception):
    """A request that is answered with spinert.error/1 (code, one-line message)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class BridgeServer:
    """See the module docstring. Use as a context manager or start()/stop()."""

    def __init__(self, config: ServerConfig, runner: Runner, models: Callable[[], Any] | None = None,
                 context: zmq.Context | None = None):
        self.config = config
        self._runner = runner
        self._models = models or (lambda: [])
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._seq = itertools.count(1)
        self._pub_seq = itertools.count(1)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: queue.Queue = queue.Queue(maxsize=max(1, config.max_queue))
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._loop_thread: threading.Thread | None = None
        self._worker_thread: threading.Thread | None = None
        self._auth = None
        self._pub: zmq.Socket | None = None
        self._router: zmq.Socket | None = None
        self._started_ns = 0
        self._current: str | None = None
        self._last: dict[str, Any] | None = None  # last result map (stamped)
        self._pending: dict[bytes, collections.deque] = {}  # peer -> replies waiting for credit
        self.pub_endpoint = ""
        self.rep_endpoint = ""
        self.stats = {"published": 0, "dropped": 0, "requests": 0, "errors": 0, "runs": 0}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "BridgeServer":
        cfg = self.config
        try:
            self._pub = self._ctx.socket(zmq.PUB)
            self._router = self._ctx.socket(zmq.ROUTER)
            for s in (self._pub, self._router):
                s.linger = cfg.linger_ms
            self._pub.sndhwm = max(1, cfg.hwm)
            self._router.sndhwm = ROUTER_HWM
            self._router.rcvhwm = ROUTER_HWM
            self._router.maxmsgsize = 2 * cfg.max_request_bytes
            self._router.router_mandatory = 1
            if cfg.curve_keys is not None:
                self._setup_curve(cfg.curve_keys)
            self._pub.bind(cfg.pub)
            self._router.bind(cfg.rep)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise SpinertError(f"cannot bind bridge sockets ({exc})") from None
        except BaseException:
            self._close_sockets()
            raise
        self.pub_endpoint = self._pub.last_endpoint.decode()
        self.rep_endpoint = self._router.last_endpoint.decode()
        self._started_ns = time.monotonic_ns()
        self._loop_thread = threading.Thread(target=self._loop, name="spinert-bridge-loop", daemon=True)
        self._worker_thread = threading.Thread(target=self._work, name="spinert-bridge-worker", daemon=True)
        self._loop_thread.start()
        self._worker_thread.start()
        log.info("bridge: PUB %s, requests %s%s", self.pub_endpoint, self.rep_endpoint,
                 " (CURVE)" if cfg.curve_keys else "")
        return self

    def _setup_curve(self, folder: Path) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        from bridge.keys import load_server_keys

        keys = load_server_keys(folder)
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        # Only the public keys found in clients/ pass; everyone else is refused during the handshake.
        self._auth.configure_curve(domain="*", location=str(keys.clients_dir))
        keys.apply(self._pub)
        keys.apply(self._router)

    def stop(self, timeout: float = 5.0) -> None:
        """Stops accepting work, joins the loop, closes sockets. A running cascade is not interrupted."""
        self._stop.set()
        self._poke()
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass
        if self._loop_thread is not None:
            self._loop_thread.join(timeout)
        if self._worker_thread is not None:
            self._worker_thread.join(min(timeout, 1.0))
        self._close_sockets()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def _close_sockets(self) -> None:
        for s in (self._pub, self._router):
            if s is not None and not s.closed:
                s.close(linger=self.config.linger_ms)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> "BridgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._loop_thread is not None and self._loop_thread.is_alive()

    # ------------------------------------------------------------------ thread-safe API

    def publish(self, msg: dict[str, Any]) -> None:
        """Queues a message map (without seq/stamp_ns) for the PUB socket. Any thread; never blocks."""
        self._outbox.put(("pub", None, msg))
        self._poke()

    def publish_result(self, result, request_id: str | None = None) -> None:
        """Encodes a SpineResult (in the calling thread) and publishes it; it becomes the 'last' result."""
        msg = codec.result_message(result, request_id)
        msg["run_id"] = request_id
        self._outbox.put(("result", None, msg))
        self._poke()

    def _reply(self, envelope: list[bytes], msg: dict[str, Any]) -> None:
        self._outbox.put(("reply", envelope, msg))
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # pipe full (the loop is already due to wake) or closed (stopping)

    # ------------------------------------------------------------------ loop thread

    def _uptime_s(self) -> float:
        return (time.monotonic_ns() - self._started_ns) / 1e9

    def _state_fields(self) -> dict[str, Any]:
        return {"uptime_s": round(self._uptime_s(), 3), "busy": self._current is not None,
                "current_id": self._current, "queued": self._jobs.qsize(),
                "last_result_seq": self._last["seq"] if self._last else None}

    def _send_pub(self, msg: dict[str, Any]) -> None:
        codec.stamp(msg, next(self._seq))
        msg["pub_seq"] = next(self._pub_seq)  # contiguous on the stream: a gap means this subscriber lost messages
        try:
            # Credit first. Each peer's I/O thread returns credit ("activate_write": this many messages left
            # the queue) every ceil(hwm/2) messages through the PUB socket's mailbox, and zmq_send() reads that
            # mailbox at most once per 3M TSC ticks (~1 ms). Publishing faster than that (big results in a row,
            # bursts), PUB still counted messages a subscriber had long received and, with a small --hwm, dropped
            # the next ones even for subscribers that were fully caught up. Reading ZMQ_EVENTS drains the mailbox
            # unthrottled (microseconds, no waiting); the HWM then counts only what a peer really has not taken.
            self._pub.getsockopt(zmq.EVENTS)
            self._pub.send(codec.pack(msg), zmq.NOBLOCK)
            self.stats["published"] += 1
        except zmq.Again:  # PUB drops by itself at HWM; this covers a mute socket just in case
            self.stats["dropped"] += 1

    def _send_reply(self, envelope: list[bytes], msg: dict[str, Any]) -> None:
        codec.stamp(msg, next(self._seq))
        if msg.get("schema") == codec.SCHEMA_ERROR:
            self.stats["errors"] += 1
        frames = envelope + [codec.pack(msg)]
        peer = envelope[0]
        if peer in self._pending:  # keep this peer's replies in order behind the ones still waiting
            self._pending[peer].append((frames, time.monotonic() + REPLY_GRACE_S))
            return
        self._try_reply(peer, frames, time.monotonic() + REPLY_GRACE_S)

    def _try_reply(self, peer: bytes, frames: list[bytes], deadline: float) -> bool:
        """NOBLOCK send with ROUTER_MANDATORY. The HWM check uses credit the peer's I/O thread returns
        asynchronously, so a fast REQ peer can look "full" for a moment: such replies wait in a small
        per-peer queue and are retried from the loop until REPLY_GRACE_S passes, then dropped."""
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            if time.monotonic() < deadline:
                self._pending.setdefault(peer, collections.deque()).appendleft((frames, deadline))
                return False
        except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone
            pass
        self.stats["dropped"] += 1
        return True

    def _flush_pending(self) -> None:
        for peer in list(self._pending):
            q = self._pending.pop(peer)
            while q:
                frames, deadline = q.popleft()
                if not self._try_reply(peer, frames, deadline):
                    self._pending[peer].extend(q)  # _try_reply re-queued the head; keep the rest behind it
                    break

    def _drain_outbox(self) -> None:
        while True:
            try:
                kind, envelope, msg = self._outbox.get_nowait()
            except queue.Empty:
                return
            if kind == "reply":
                self._send_reply(envelope, msg)
            elif kind == "result":
                self._send_pub(msg)
                self._last = msg
            else:
                self._send_pub(msg)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        period_ns = int(self.config.heartbeat_s * 1e9)
        next_beat = time.monotonic_ns()
        try:
            while not self._stop.is_set():
                wait_ms = max(0, (next_beat - time.monotonic_ns()) // 1_000_000)
                if self._pending:
                    wait_ms = min(wait_ms, 2)
                events = dict(poller.poll(wait_ms))
                if self._pending:
                    self._flush_pending()
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                self._drain_outbox()
                if self._router in events:
                    # Bounded batch: heartbeats and published results are not starved by a flood.
                    for _ in range(256):
                        try:
                            frames = self._router.recv_multipart(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._handle(frames)
                    self._drain_outbox()
                now = time.monotonic_ns()
                if now >= next_beat:
                    self._send_pub(codec.status_message("heartbeat", id=None, **self._state_fields()))
                    next_beat = now + period_ns
            self._drain_outbox()  # results/errors already produced still go out
        except zmq.ContextTerminated:
            pass
        except Exception:  # noqa: BLE001 - keep the process alive long enough to report and shut down
            log.exception("bridge loop failed")
            self._stop.set()

    # ------------------------------------------------------------------ requests

    def _handle(self, frames: list[bytes]) -> None:
        self.stats["requests"] += 1
        # REQ clients send [identity, b"", body]; a bare DEALER sends [identity, body]. Reply on the same path.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        request_id = None
        try:
            if len(body) != 1:
                raise RequestError("bad_request", f"a request is one frame, got {len(body)}")
            data = body[0]
            if len(data) > self.config.max_request_bytes:
                raise RequestError("too_large", f"request of {len(data)} bytes exceeds the limit of "
                                                f"{self.config.max_request_bytes}")
            try:
                req = codec.unpack(data)
            except codec.CodecError as exc:
                raise RequestError("bad_request", str(exc)) from None
            rid = req.get("id")
            request_id = rid if isinstance(rid, str) else None
            self._dispatch(envelope, req)
        except RequestError as exc:
            self._send_reply(envelope, codec.error_message(str(exc), request_id, exc.code))
        except Exception as exc:  # noqa: BLE001 - a request must never take the loop down
            log.exception("request handling failed")
            self._send_reply(envelope, codec.error_message(f"internal error: {type(exc).__name__}: {exc}",
                                                           request_id, "internal"))

    def _dispatch(self, envelope: list[bytes], req: dict[str, Any]) -> None:
        if req.get("schema") != codec.SCHEMA_REQUEST:
            raise RequestError("bad_request", f"schema must be {codec.SCHEMA_REQUEST!r}, got {req.get('schema')!r:.60}")
        rid = req.get("id")
        if not isinstance(rid, str) or len(rid) > 256:
            raise RequestError("bad_request", "id must be a string of at most 256 characters")
        op = req.get("op")
        if op not in OPS:
            raise RequestError("bad_op", f"op must be one of {', '.join(OPS)}; got {op!r:.60}")
        if op == "health":
            cfg = self.config
            self._send_reply(envelope, codec.status_message(
                "ok", id=rid, pub=self.pub_endpoint, hwm=cfg.hwm, curve=cfg.curve_keys is not None,
                max_request_bytes=cfg.max_request_bytes, stats=dict(self.stats), **self._state_fields()))
        elif op == "models":
            try:
                models = self._models()
            except SpinertError as exc:
                raise RequestError("models_failed", str(exc)) from None
            self._send_reply(envelope, codec.status_message("models", id=rid, models=models))
        elif op == "last":
            if self._last is None:
                raise RequestError("no_result", "no result yet")
            msg = dict(self._last)
            msg.pop("pub_seq", None)  # a reply is not part of the stream
            msg["id"] = rid
            msg["result_seq"], msg["result_stamp_ns"] = self._last["seq"], self._last["stamp_ns"]
            self._send_reply(envelope, msg)
        else:
            self._enqueue_run(envelope, rid, req)

    def _enqueue_run(self, envelope: list[bytes], rid: str, req: dict[str, Any]) -> None:
        path, ct = req.get("path"), req.get("ct")
        name = req.get("name", "inline")
        if not isinstance(name, str) or not name or len(name) > 200 or "/" in name or "\0" in name:
            raise RequestError("bad_request", "name must be a short string without '/'")
        if (path is None) == (ct is None):
            raise RequestError("bad_request", "run needs exactly one of 'path' (str) or 'ct' (bytes)")
        if path is not None:
            if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
                raise RequestError("bad_request", "path must be a non-empty string")
            try:
                exists = Path(path).exists()
            except OSError:  # e.g. a component longer than NAME_MAX
                exists = False
            if not exists:
                raise RequestError("input", f"{path}: no such file or folder on the server")
            source: Any = path
        else:
            if not isinstance(ct, (bytes, bytearray)) or not ct:
                raise RequestError("bad_request", "ct must be the non-empty bytes of a NIfTI/NRRD/MHA file")
            try:
                suffix = detect_suffix(ct, req.get("format"))
            except SpinertError as exc:
                raise RequestError("input", str(exc)) from None
            source = ("inline", bytes(ct), suffix, name)
        if self._stop.is_set():
            raise RequestError("shutting_down", "server is shutting down")
        try:
            self._jobs.put_nowait(_Job(envelope, rid, source))
        except queue.Full:
            raise RequestError("busy", f"{self._jobs.maxsize} runs already queued; retry later") from None
        self._send_pub(codec.status_message("queued", id=rid, **self._state_fields()))

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                return
            self._current = job.request_id
            try:
                self._run_job(job)
            finally:
                self._current = None

    def _run_job(self, job: _Job) -> None:
        rid = job.request_id

        def progress(stage: str, event: str, **info: Any) -> None:
            self.publish(codec.status_message(f"stage_{event}", id=rid, stage=str(stage),
                                              **{k: v for k, v in info.items() if _plain(v)}))

        self.publish(codec.status_message("started", id=rid))
        t0 = time.perf_counter()
        try:
            if isinstance(job.source, tuple):
                _, data, suffix, name = job.source
                progress("read", "started")
                source = read_inline(data, suffix, name, self.config.max_voxels)
                progress("read", "finished", ms=(time.perf_counter() - t0) * 1e3)
            else:
                source = job.source
            result = self._runner(source, progress)
            msg = codec.result_message(result, rid)
            msg["run_id"] = rid
        except SpinertError as exc:
            self.publish(codec.status_message("failed", id=rid, error=" ".join(str(exc).split())[:500]))
            self._reply(job.envelope, codec.error_message(str(exc), rid, "run_failed"))
            return
        except Exception as exc:  # noqa: BLE001 - a crashing cascade must not take the server down
            log.exception("run %s failed", rid)
            text = f"internal error: {type(exc).__name__}: {exc}"
            self.publish(codec.status_message("failed", id=rid, error=" ".join(text.split())[:500]))
            self._reply(job.envelope, codec.error_message(text, rid, "internal"))
            return
        self.stats["runs"] += 1
        self.publish(codec.status_message("finished", id=rid, ms=(time.perf_counter() - t0) * 1e3))
        # Same map to PUB (becomes 'last') and to the requester; the reply is a shallow copy (made before the
        # loop thread stamps the original) so it gets its own seq.
        reply = dict(msg)
        self._outbox.put(("result", None, msg))
        self._reply(job.envelope, reply)


def _plain(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None
