"""The bridge over real ZeroMQ sockets on 127.0.0.1: results, status, late joiners, stalled subscribers, fuzzing."""
from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import zmq

from bridge import codec
from bridge.client import BridgeTimeout, Client, RemoteError, Subscriber, decode_result, label_volume
from bridge.replay import replay_runner, result_from_label_map
from bridge.server import BridgeServer, ServerConfig
from engine.errors import InputError
from engine.io import read_volume
from spinert.paths import real_data_dir

REAL = real_data_dir()
CASE = "tssample-example-ct"  # 8 vertebrae, T11-L5 + sacrum
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (real CT cases) not present")


def _bridge_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("spinert-bridge")]


@contextmanager
def running(runner, **cfg):
    """A server on free ports; afterwards no bridge thread and no socket may be left behind."""
    before = _bridge_threads()
    config = ServerConfig(pub="tcp://127.0.0.1:*", rep="tcp://127.0.0.1:*", heartbeat_s=0.05, **cfg)
    srv = BridgeServer(config, runner).start()
    try:
        yield srv
    finally:
        srv.stop()
        assert srv._ctx.closed  # term() returned: every socket of the server is closed
        assert _bridge_threads() == before


@pytest.fixture()
def replay_server():
    with running(replay_runner(REAL)) as srv:
        yield srv


def _ct_path(case: str = CASE) -> str:
    return str(REAL / f"{case}_ct.nii.gz")


def _recv_until(sub: Subscriber, pred, timeout_s: float = 10.0) -> list[dict]:
    """Messages received until (and including) the first for which pred is true."""
    got, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = sub.recv(max(0.0, deadline - time.monotonic()))
        if m is None:
            break
        got.append(m)
        if pred(m):
            return got
    raise AssertionError(f"condition not met within {timeout_s} s; got {[m.get('state') for m in got][-10:]}")


def _assert_result_equals_label_file(msg: dict, case: str = CASE) -> None:
    lab = read_volume(REAL / f"{case}_seg-vert_msk.nii.gz")
    assert msg["schema"] == codec.SCHEMA_RESULT
    assert msg["volume"]["size"] == list(lab.size)
    np.testing.assert_allclose(msg["volume"]["spacing"], lab.spacing)
    np.testing.assert_allclose(msg["volume"]["origin"], lab.origin)
    np.testing.assert_allclose(msg["volume"]["direction"], lab.direction)
    assert np.array_equal(label_volume(msg), lab.array)
    ctd = {c["label"]: (c["X"], c["Y"], c["Z"]) for c in json.loads((REAL / f"{case}_ctd.json").read_text())}
    assert sorted(v["label"] for v in msg["vertebrae"]) == sorted(ctd)
    for v in msg["vertebrae"]:
        np.testing.assert_allclose(v["center_lps_mm"], ctd[v["label"]], atol=0.006)


# ----------------------------------------------------------------------------------------------- results


def test_run_streams_status_then_result_and_reply_equals_label_file(replay_server):
    srv = replay_server
    with Subscriber(srv.pub_endpoint) as sub, Client(srv.rep_endpoint, timeout_s=20) as c:
        sub.wait_connected()
        reply = c.run(path=_ct_path(), request_id="run-1")
        msgs = _recv_until(sub, lambda m: m["schema"] == codec.SCHEMA_RESULT)
    assert reply["id"] == "run-1" and reply["run_id"] == "run-1"
    _assert_result_equals_label_file(reply)
    pub = msgs[-1]
    assert pub["id"] == "run-1"
    assert np.array_equal(label_volume(pub), label_volume(reply))
    # Every message carries the header; seq is strictly increasing on the stream.
    seqs = [m["seq"] for m in msgs]
    assert all(isinstance(m["stamp_ns"], int) and m["stamp_ns"] > 0 for m in msgs)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert reply["seq"] != pub["seq"] and "pub_seq" not in reply
    pub_seqs = [m["pub_seq"] for m in msgs]  # contiguous on the stream: nothing was lost
    assert pub_seqs == list(range(pub_seqs[0], pub_seqs[0] + len(pub_seqs)))
    states = [m["state"] for m in msgs if m["schema"] == codec.SCHEMA_STATUS and m.get("id") == "run-1"]
    assert states == ["queued", "started", "stage_started", "stage_finished", "finished"]
    stage_msgs = [m for m in msgs if m.get("state", "").startswith("stage_")]
    assert {m["stage"] for m in stage_msgs} == {"replay"}
    beats = [m for m in msgs if m.get("state") == "heartbeat"]
    assert all("uptime_s" in b and "busy" in b for b in beats)


def test_decoded_result_equals_files_written_by_engine_output(replay_server, tmp_path):
    output = pytest.importorskip("engine.output", reason="engine/output.py (the contract file writer) not in this build")
    lab = read_volume(REAL / f"{CASE}_seg-vert_msk.nii.gz")
    result = result_from_label_map(lab, CASE)
    with Subscriber(replay_server.pub_endpoint, schemas=(codec.SCHEMA_RESULT,)) as sub:
        time.sleep(0.2)  # slow joiner: give the subscription time to reach the PUB socket
        replay_server.publish_result(result, "direct")
        msg = sub.recv(10)
    assert msg is not None
    _assert_message_equals_output_files(msg, output.write_result(result, tmp_path, name=CASE))


def _assert_message_equals_output_files(msg: dict, paths: dict) -> None:
    """A decoded result against the contract files engine.output wrote for the same SpineResult."""
    seg = read_volume(paths["mask"])
    assert msg["volume"]["size"] == list(seg.size)
    np.testing.assert_allclose(msg["volume"]["spacing"], seg.spacing, atol=1e-6)
    np.testing.assert_allclose(msg["volume"]["origin"], seg.origin, atol=1e-4)
    np.testing.assert_allclose(msg["volume"]["direction"], seg.direction, atol=1e-6)
    assert np.array_equal(label_volume(msg), seg.array)  # voxel for voxel
    ctd = json.loads(paths["ctd"].read_text())
    assert [v["label"] for v in msg["vertebrae"]] == [c["label"] for c in ctd]
    for v, c in zip(msg["vertebrae"], ctd):
        assert v["name"] == c["name"]
        np.testing.assert_allclose(v["center_lps_mm"], (c["X"], c["Y"], c["Z"]), atol=1e-6)
        assert v["confidence"] == pytest.approx(c["confidence"])
    full = json.loads(paths["result"].read_text())
    assert [(v["label"], v["offset_ijk"], v["shape_ijk"]) for v in full["vertebrae"]] == \
        [(v["label"], v["mask"]["offset_ijk"], v["mask"]["shape_ijk"]) for v in msg["vertebrae"]]
    assert full["backend"] == msg["backend"] and full["precision"] == msg["precision"]


@pytest.mark.slow
def test_real_cascade_result_over_the_bridge_equals_spinert_run_files(tmp_path):
    """The trained cascade behind the server: the reply equals the files engine.output writes."""
    from bridge.engine_runner import cascade_runner
    from engine import output

    runner, models, cascade = cascade_runner()
    try:
        if not cascade.trained:
            pytest.skip("shipped models are untrained placeholders: no meaningful cascade output to compare")
        results = []

        def keep(source, progress=None):
            results.append(runner(source, progress))
            return results[-1]

        with running(keep) as srv, Client(srv.rep_endpoint, timeout_s=600) as c:
            reply = c.run(path=_ct_path())
        assert reply["vertebrae"], "the cascade found no vertebra on the real case"
        _assert_message_equals_output_files(reply, output.write_result(results[0], tmp_path, name=CASE))
    finally:
        cascade.close()


def test_spinert_run_files_equal_the_bridge_reply_for_the_same_ct(tmp_path):
    """`spinert run` and `spinert serve` drive the same cascade (real ONNX Runtime sessions of small
    analytic models that find bone blocks): the decoded reply equals the files `spinert run` wrote."""
    import pipeline_synth as ps
    from bridge.engine_runner import cascade_runner
    from engine.io import write_volume
    from spinert.cli import main

    models = ps.make_models(tmp_path / "models")
    ct = write_volume(ps.make_ct(n_vert=4), tmp_path / "blocks_ct.nii.gz")
    out = tmp_path / "run"
    assert main(["run", str(ct), "--out", str(out), "--models", str(models), "--quiet"]) == 0
    paths = {k: out / f"blocks_ct{suf}" for k, suf in
             (("mask", "_seg-vert_msk.nii.gz"), ("ctd", "_ctd.json"), ("result", "_result.json"))}
    runner, _, cascade = cascade_runner(models_dir=models)
    try:
        with running(runner) as srv, Client(srv.rep_endpoint, timeout_s=120) as c:
            reply = c.run(path=str(ct))
    finally:
        cascade.close()
    assert len(reply["vertebrae"]) == 4, "the analytic cascade must find all four blocks"
    _assert_message_equals_output_files(reply, paths)


def test_inline_ct_in_every_format(replay_server, tmp_path):
    img = sitk.ReadImage(_ct_path())
    with Client(replay_server.rep_endpoint, timeout_s=20) as c:
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
            f = tmp_path / f"{CASE}_ct{suffix}"
            sitk.WriteImage(img, str(f))
            reply = c.run(ct=f.read_bytes(), name=f"{CASE}_ct")
            _assert_result_equals_label_file(reply)


def test_late_joiner_gets_last_result(replay_server):
    srv = replay_server
    with Client(srv.rep_endpoint, timeout_s=20) as c:
        with pytest.raises(RemoteError, match="no_result"):
            c.last()
        first = c.run(path=_ct_path())
    with Client(srv.rep_endpoint, timeout_s=5) as late:  # a new client, after the fact
        last = late.last(request_id="late-1")
    assert last["id"] == "late-1" and last["run_id"] == first["id"]
    assert last["result_seq"] < last["seq"]
    assert np.array_equal(label_volume(last), label_volume(first))
    back = decode_result(last)
    assert [v.label for v in back.vertebrae] == [v["label"] for v in first["vertebrae"]]


def test_health_and_models_echo_id(replay_server):
    with Client(replay_server.rep_endpoint, timeout_s=5) as c:
        h = c.health(request_id="h")
        m = c.models(request_id="m")
    assert h["schema"] == codec.SCHEMA_STATUS and h["id"] == "h" and h["state"] == "ok"
    assert h["uptime_s"] >= 0 and h["busy"] is False
    assert m["schema"] == codec.SCHEMA_STATUS and m["id"] == "m" and m["state"] == "models"


def test_failed_runs_answer_errors_and_server_keeps_serving():
    calls = []

    def runner(source, progress=None):
        calls.append(source)
        if len(calls) == 1:
            raise InputError("cannot read image (truncated)")
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return result_from_label_map(read_volume(REAL / f"{CASE}_seg-vert_msk.nii.gz"), CASE)

    with running(runner) as srv, Client(srv.rep_endpoint, timeout_s=10) as c:
        with pytest.raises(RemoteError, match="run_failed: .*truncated"):
            c.run(path=_ct_path())
        with pytest.raises(RemoteError, match="internal: internal error: RuntimeError: CUDA out of memory"):
            c.run(path=_ct_path())
        _assert_result_equals_label_file(c.run(path=_ct_path()))


def test_requests_are_served_while_a_run_is_in_progress_and_queue_is_bounded():
    gate, entered = threading.Event(), threading.Event()
    lab = read_volume(REAL / f"{CASE}_seg-vert_msk.nii.gz")

    def runner(source, progress=None):
        entered.set()
        gate.wait(10)
        return result_from_label_map(lab, CASE)

    with running(runner, max_queue=1) as srv:
        ctx = zmq.Context()
        dealers = []
        try:
            def send(op, rid, **kw):
                d = ctx.socket(zmq.DEALER)
                d.linger = 0
                d.connect(srv.rep_endpoint)
                dealers.append(d)
                d.send_multipart([b"", codec.pack({"schema": codec.SCHEMA_REQUEST, "op": op, "id": rid, **kw})])
                return d

            def reply(d, timeout_ms=10_000):
                assert d.poll(timeout_ms), "no reply"
                empty, body = d.recv_multipart()
                return codec.unpack(body)

            running_req = send("run", "a", path=_ct_path())
            assert entered.wait(10)
            queued = send("run", "b", path=_ct_path())
            time.sleep(0.1)
            busy = reply(send("run", "c", path=_ct_path()))
            assert busy["schema"] == codec.SCHEMA_ERROR and busy["code"] == "busy" and busy["id"] == "c"
            health = reply(send("health", "h"))
            assert health["busy"] is True and health["current_id"] == "a" and health["queued"] == 1
            gate.set()
            assert reply(running_req)["id"] == "a"
            assert reply(queued)["id"] == "b"
        finally:
            gate.set()
            for d in dealers:
                d.close(linger=0)
            ctx.term()


# ------------------------------------------------------------------------------------ slow subscribers

STALLED_SUB = r"""
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(sys.argv[1])
s.recv(); print("ready", flush=True)
import time; time.sleep(600)
"""


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_stalled_subscriber_never_blocks_the_other_and_memory_stays_bounded():
    hwm = 4
    rng = np.random.default_rng(0)
    # Incompressible masks: each message is ~1 MB, so an unbounded queue would show up as 100s of MB.
    noise = rng.random((80, 100, 1000)) < 0.5
    big = {"schema": codec.SCHEMA_RESULT, "id": None,
           "volume": {"id": "noise", "size": [1000, 100, 80], "spacing": [1.0] * 3, "origin": [0.0] * 3,
                      "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]},
           "vertebrae": [{"label": 20, "name": "L1", "center_lps_mm": [0.0, 0.0, 0.0], "confidence": 1.0,
                          "mask": codec.encode_mask(noise)}]}
    msg_bytes = len(codec.pack(big))
    assert msg_bytes > 900_000
    n_warm, n = 40, 300
    with running(lambda *a, **k: None, hwm=hwm) as srv:
        stalled = subprocess.Popen([sys.executable, "-c", STALLED_SUB, srv.pub_endpoint],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert stalled.stdout.readline().strip() == "ready"
            os.kill(stalled.pid, signal.SIGSTOP)  # frozen: it reads nothing from its TCP socket any more
            with Subscriber(srv.pub_endpoint, schemas=(codec.SCHEMA_RESULT,)) as good:
                time.sleep(0.3)  # slow joiner
                received = []  # (id, seq): the messages themselves are dropped, RSS must reflect the server
                data = big["vertebrae"][0]["mask"]["data"]

                def publish_and_receive(i):
                    srv.publish({**big, "id": f"m{i}"})
                    m = good.recv(10)
                    assert m is not None, f"message m{i} never arrived while the other subscriber is stalled"
                    assert m["vertebrae"][0]["mask"]["data"] == data
                    received.append((m["id"], m["seq"]))

                for i in range(n_warm):
                    publish_and_receive(i)
                rss0 = _rss_bytes()
                for i in range(n_warm, n_warm + n):
                    publish_and_receive(i)
                rss1 = _rss_bytes()
            # Every message, in order, each once, and all mask bytes intact.
            assert [rid for rid, _ in received] == [f"m{i}" for i in range(n_warm + n)]
            seqs = [seq for _, seq in received]
            assert all(b > a for a, b in zip(seqs, seqs[1:]))
            # n MB went to the stalled subscriber's pipe; at most HWM messages may be held for it.
            growth = rss1 - rss0
            assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB while publishing {n} x {msg_bytes} B"
            assert Path(f"/proc/{stalled.pid}/stat").read_text().split()[2] == "T"  # it was stalled all along
        finally:
            stalled.kill()
            stalled.wait(10)
            stalled.stdout.close()


# ----------------------------------------------------------------------------------------- fuzzing


def _nifti_header_claiming(dims: tuple[int, int, int]) -> bytes:
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<h", hdr, 70, 4)  # datatype int16
    struct.pack_into("<h", hdr, 72, 16)
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352)  # vox_offset
    hdr[344:348] = b"n+1\0"
    return bytes(hdr) + b"\0" * 64


def _fuzz_cases(rng: np.random.Generator, max_bytes: int, n: int):
    """(frame, request id or None) pairs: random bytes, wrong types, missing fields, hostile sizes."""
    R = codec.SCHEMA_REQUEST
    fixed = [
        (b"", None), (b"\xc1", None), (b"\x91" * 50_000 + b"\xc0", None), (b"\xc6\xff\xff\xff\xff" + b"xy", None),
        (b"\xdf\xff\xff\xff\xff", None), (codec.pack(None), None), (codec.pack([R, "run"]), None),
        (codec.pack("health"), None), (codec.pack(12), None), (codec.pack({}), None),
        (codec.pack({"op": "health", "id": "a"}), "a"),  # no schema
        (codec.pack({"schema": "spinert.request/2", "op": "health", "id": "b"}), "b"),
        (codec.pack({"schema": R, "op": "health"}), None),  # no id
        (codec.pack({"schema": R, "op": "health", "id": 7}), None),
        (codec.pack({"schema": R, "op": "health", "id": "x" * 1000}), "x" * 1000),  # refused, still echoed
        (codec.pack({"schema": R, "id": "c"}), "c"),
        (codec.pack({"schema": R, "op": 3, "id": "d"}), "d"),
        (codec.pack({"schema": R, "op": "shutdown", "id": "e"}), "e"),
        (codec.pack({"schema": R, "op": "run", "id": "f"}), "f"),
        (codec.pack({"schema": R, "op": "run", "id": "g", "path": _ct_path(), "ct": b"x"}), "g"),
        (codec.pack({"schema": R, "op": "run", "id": "h", "path": 5}), "h"),
        (codec.pack({"schema": R, "op": "run", "id": "i", "path": "/no/such/ct.nii.gz"}), "i"),
        (codec.pack({"schema": R, "op": "run", "id": "j", "path": "a\0b"}), "j"),
        (codec.pack({"schema": R, "op": "run", "id": "k", "ct": "text, not bytes"}), "k"),
        (codec.pack({"schema": R, "op": "run", "id": "l", "ct": b""}), "l"),
        (codec.pack({"schema": R, "op": "run", "id": "m", "ct": b"\x1f\x8b" + b"\0" * 100}), "m"),
        (codec.pack({"schema": R, "op": "run", "id": "n", "ct": gzip.compress(b"just text" * 100)}), "n"),
        (codec.pack({"schema": R, "op": "run", "id": "o", "ct": b"NRRD0004\ntype: short\ndata file: /etc/passwd\n\n"}), "o"),
        (codec.pack({"schema": R, "op": "run", "id": "p", "ct": b"ObjectType = Image\nElementDataFile = /etc/passwd\n"}), "p"),
        (codec.pack({"schema": R, "op": "run", "id": "q", "ct": b"x" * 600, "format": "dicom"}), "q"),
        (codec.pack({"schema": R, "op": "run", "id": "r", "ct": b"x" * 600, "format": 12}), "r"),
        (codec.pack({"schema": R, "op": "run", "id": "s", "ct": _nifti_header_claiming((30000, 30000, 30000))}), "s"),
        (codec.pack({"schema": R, "op": "run", "id": "t", "ct": _nifti_header_claiming((4, 4, 4))[:300]}), "t"),
        (codec.pack({"schema": R, "op": "run", "id": "u", "ct": b"\0" * 1000, "format": "nii"}), "u"),
        (codec.pack({"schema": R, "op": "run", "id": "v", "ct": b"y" * (max_bytes + 1)}), None),  # too large to parse: no id
        (codec.pack({"schema": R, "op": "run", "id": "w", "path": _ct_path(), "name": ["x"]}), None),
    ]
    fixed[-1] = (fixed[-1][0], "w")
    yield from fixed
    kinds = ["bytes", "msgpack_junk", "bad_map", "truncated"]
    junk_values = [None, True, -1, 2**63, 1.5, "", "run", b"\x00", [], [1, [2, [3]]], {"a": {"b": None}}]
    for i in range(n - len(fixed)):
        kind = kinds[i % len(kinds)]
        if kind == "bytes":
            yield rng.bytes(int(rng.integers(0, 300))), None
        elif kind == "msgpack_junk":
            yield codec.pack(junk_values[int(rng.integers(len(junk_values)))]), None
        elif kind == "bad_map":
            rid = f"z{i}"
            req = {"schema": R, "op": "run", "id": rid}
            field = ["schema", "op", "path", "ct", "format", "name"][int(rng.integers(6))]
            req[field] = junk_values[int(rng.integers(len(junk_values)))]
            if field in ("format", "name"):
                req["ct"] = rng.bytes(64)
            yield codec.pack(req), rid
        else:
            good = codec.pack({"schema": R, "op": "health", "id": f"t{i}"})
            yield good[: int(rng.integers(1, len(good)))], None


def test_a_thousand_malformed_requests_each_get_an_error_and_the_server_keeps_serving():
    max_mb = 0.25
    max_bytes = int(max_mb * 2**20)
    with running(replay_runner(REAL), max_request_mb=max_mb) as srv, Client(srv.rep_endpoint, timeout_s=10) as c:
        n = 0
        codes = set()
        for frame, rid in _fuzz_cases(np.random.default_rng(1234), max_bytes, 1200):
            reply = c.request_raw(frame, retries=1)
            assert reply["schema"] == codec.SCHEMA_ERROR, (frame[:80], reply)
            assert reply["id"] == rid, (frame[:80], reply)
            assert isinstance(reply["error"], str) and "\n" not in reply["error"] and reply["error"]
            assert isinstance(reply["seq"], int) and isinstance(reply["stamp_ns"], int)
            codes.add(reply["code"])
            n += 1
        assert n >= 1000
        assert {"bad_request", "bad_op", "input", "too_large", "run_failed"} <= codes
        # Still serving: health, and a real run with the right answer.
        assert c.health()["state"] == "ok"
        _assert_result_equals_label_file(c.run(path=_ct_path()))


def test_frame_above_maxmsgsize_drops_only_that_connection():
    max_bytes = int(0.1 * 2**20)
    with running(replay_runner(REAL), max_request_mb=0.1) as srv:
        with Client(srv.rep_endpoint, timeout_s=1.0) as c:
            with pytest.raises(BridgeTimeout):  # libzmq cuts the peer off: no reply is possible
                c.request_raw(b"\0" * (2 * max_bytes + 10), retries=1)
            assert c.health()["state"] == "ok"  # the lazy-pirate reset reconnects
        with Client(srv.rep_endpoint, timeout_s=5) as other:
            assert other.health(request_id=uuid.uuid4().hex)["state"] == "ok"
