"""Python client for the spinert robot bridge: subscribe to the stream, send requests, decode masks.

    from bridge.client import Client, Subscriber, decode_result
    with Subscriber("tcp://127.0.0.1:5556") as sub:
        for msg in sub:                                  # every message, decoded to a dict
            if msg["schema"] == "spinert.result/1":
                result = decode_result(msg)              # engine.types.SpineResult, masks as numpy bool
                labels = label_volume(msg)               # full uint8 label map, input geometry, [k, j, i]
    with Client("tcp://127.0.0.1:5557") as c:
        last = c.last()                                   # late joiners: the last result

Requests use a REQ socket with the "lazy pirate" pattern: poll with a timeout; on timeout close the socket
(linger 0) and open a fresh one, retrying idempotent requests. "run" is sent once by default (resending
would run the cascade twice).
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import zmq

from bridge import codec
from bridge.codec import decode_mask, label_volume, paste_masks, result_from_message  # noqa: F401 (re-export)
from bridge.keys import CurveClientKeys
from engine.errors import SpinertError

decode_result = result_from_message


class BridgeError(SpinertError):
    """Base class of client-side bridge failures."""


class BridgeTimeout(BridgeError):
    """No reply within the timeout after every retry (server down, overloaded, or refused our key)."""


class RemoteError(BridgeError):
    """The server answered with spinert.error/1."""

    def __init__(self, msg: dict[str, Any]):
        super().__init__(f"{msg.get('code', 'error')}: {msg.get('error', '')}")
        self.code = msg.get("code")
        self.message = msg


class Client:
    """Request socket client (REQ, lazy pirate). One request at a time; not thread-safe."""

    def __init__(self, endpoint: str, curve: CurveClientKeys | None = None, timeout_s: float = 10.0,
                 retries: int = 3, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.curve = curve
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock: zmq.Socket | None = None

    def _open(self) -> zmq.Socket:
        s = self._ctx.socket(zmq.REQ)
        s.linger = 0
        if self.curve is not None:
            self.curve.apply(s)
        s.connect(self.endpoint)
        return s

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = None

    def request_raw(self, data: bytes, timeout_s: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """Sends one frame as is and returns the decoded reply map (whatever its schema)."""
        timeout_ms = int(1000 * (self.timeout_s if timeout_s is None else timeout_s))
        attempts = self.retries if retries is None else max(1, retries)
        for _ in range(attempts):
            if self._sock is None:
                self._sock = self._open()
            self._sock.send(data)
            if self._sock.poll(timeout_ms, zmq.POLLIN):
                return codec.unpack(self._sock.recv())
            self._reset()  # lazy pirate: a REQ socket stuck waiting can only be closed and reopened
        raise BridgeTimeout(f"no reply from {self.endpoint} after {attempts} attempt(s) of {timeout_ms} ms")

    def request(self, op: str, timeout_s: float | None = None, retries: int | None = None,
                raise_errors: bool = True, request_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Sends {"schema": "spinert.request/1", "op": op, "id": ..., **fields}; returns the reply map."""
        rid = request_id or uuid.uuid4().hex
        if retries is None and op == "run":
            retries = 1
        reply = self.request_raw(codec.pack({"schema": codec.SCHEMA_REQUEST, "op": op, "id": rid, **fields}),
                                 timeout_s, retries)
        if reply.get("id") != rid:
            raise BridgeError(f"reply id {reply.get('id')!r} does not match request id {rid!r}")
        if raise_errors and reply.get("schema") == codec.SCHEMA_ERROR:
            raise RemoteError(reply)
        return reply

    def run(self, path: str | None = None, ct: bytes | None = None, timeout_s: float = 600.0, **fields) -> dict:
        if path is not None:
            fields["path"] = str(path)
        if ct is not None:
            fields["ct"] = bytes(ct)
        return self.request("run", timeout_s=timeout_s, **fields)

    def last(self, **kw) -> dict[str, Any]:
        return self.request("last", **kw)

    def health(self, **kw) -> dict[str, Any]:
        return self.request("health", **kw)

    def models(self, **kw) -> dict[str, Any]:
        return self.request("models", **kw)

    def close(self) -> None:
        self._reset()
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Subscriber:
    """SUB socket on the server's PUB endpoint. Iterating yields decoded maps; undecodable frames are skipped."""

    def __init__(self, endpoint: str, curve: CurveClientKeys | None = None, schemas: tuple[str, ...] | None = None,
                 rcvhwm: int = 1000, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.schemas = schemas
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.rcvhwm = rcvhwm
        if curve is not None:
            curve.apply(self._sock)
        # One frame per message, a msgpack map: no topic prefix to filter on, so take everything.
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self.skipped = 0

    def recv(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next message (matching `schemas`), or None when `timeout_s` passes without one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._sock.poll(None if left is None else int(left * 1000), zmq.POLLIN):
                return None
            try:
                msg = codec.unpack(self._sock.recv())
                codec.check_schema(msg)
            except codec.CodecError:
                self.skipped += 1
                continue
            if self.schemas is None or msg["schema"] in self.schemas:
                return msg

    def wait_connected(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Blocks until the first message (a heartbeat at the latest) arrives: the subscription is live."""
        msg = self.recv(timeout_s)
        if msg is None:
            raise BridgeTimeout(f"nothing received from {self.endpoint} within {timeout_s} s")
        return msg

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self._sock.close(linger=0)
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def subscribe(endpoint: str, timeout_s: float | None = None, **kw) -> Iterator[dict[str, Any]]:
    """Generator of decoded messages; ends after `timeout_s` without a message (never, if None)."""
    with Subscriber(endpoint, **kw) as sub:
        while True:
            msg = sub.recv(timeout_s)
            if msg is None:
                return
            yield msg
