"""`spinert serve` / `spinert serve-keys` as subprocesses: clean shutdown on signals, one-line errors."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.client import Client, Subscriber
from bridge.keys import load_client_keys
from engine.localise import CentreOffset
from engine.models import load_manifest
from spinert.paths import real_data_dir

REAL = real_data_dir()
ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = re.compile(r"PUB (\S+) requests (\S+)")


def _spinert(*args: str) -> list[str]:
    return [sys.executable, "-m", "spinert", *args]


def _start(*args: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(_spinert("serve", "--pub", "tcp://127.0.0.1:*", "--rep", "tcp://127.0.0.1:*",
                                     "--heartbeat", "0.05", *args),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # bounded: the process prints the endpoints or exits
        lines.append(line)
        m = ENDPOINTS.search(line)
        if m:
            return proc, m[1], m[2]
    proc.wait(30)
    raise AssertionError(f"spinert serve did not start (rc={proc.returncode}): {''.join(lines)}")


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("spinert serve did not exit within 20 s of the signal")
    return proc.returncode, err


@pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not present")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_replay_answers_then_exits_cleanly_on_signal(sig):
    proc, pub, rep = _start("--replay", str(REAL))
    try:
        with Subscriber(pub) as sub, Client(rep, timeout_s=20) as c:
            assert sub.wait_connected(10)["schema"] == "spinert.status/1"
            reply = c.run(path=str(REAL / "tptbox-sample-ct-L3_ct.nii.gz"))
            assert [v["name"] for v in reply["vertebrae"]] == ["L2", "L3", "L4"]
    finally:
        rc, err = _stop(proc, sig)
    assert rc == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_serve_with_the_cascade_starts_reports_models_and_stops():
    proc, pub, rep = _start()
    try:
        with Client(rep, timeout_s=20) as c:
            info = c.models()["models"]
            assert "backend" in info and "trained" in info and set(info["models"]) == {"detector", "segmenter", "labeller"}
            # the shipped segmenter carries a fitted centre offset: the robot can see which centres it gets
            shipped = CentreOffset.from_manifest(load_manifest()["segmenter"].raw)
            assert info["centre_offset_mm"] == (dict(shipped.mm) if shipped else None)
            assert c.health()["state"] == "ok"
    finally:
        rc, err = _stop(proc, signal.SIGTERM)
    assert rc == 0, err


def test_serve_with_curve_keys(tmp_path):
    keys = tmp_path / "keys"
    r = subprocess.run(_spinert("serve-keys", str(keys), "--client", "robot"), cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (keys / "server.key_secret").is_file() and (keys / "clients" / "robot.key").is_file()
    again = subprocess.run(_spinert("serve-keys", str(keys)), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    proc, pub, rep = _start("--curve-keys", str(keys), "--replay", str(tmp_path))
    try:
        with Client(rep, curve=load_client_keys(keys, "robot"), timeout_s=10) as c:
            assert c.health()["curve"] is True
    finally:
        rc, err = _stop(proc, signal.SIGTERM)
    assert rc == 0, err


@pytest.mark.parametrize("args, why", [
    (["--pub", "127.0.0.1:1", "--rep", "tcp://127.0.0.1:*"], "expected a ZeroMQ endpoint"),
    (["--pub", "tcp://127.0.0.1:*", "--rep", "tcp://256.1.1.1:5", "--replay", str(ROOT)], "cannot bind"),
    (["--pub", "tcp://127.0.0.1:*", "--rep", "tcp://127.0.0.1:*", "--hwm", "0"], "--hwm"),
    (["--pub", "tcp://127.0.0.1:*", "--rep", "tcp://127.0.0.1:*", "--curve-keys", "/no/such/keys"], "no such folder"),
    (["--pub", "tcp://127.0.0.1:*", "--rep", "tcp://127.0.0.1:*", "--replay", "/no/such/dir"], "replay folder"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, why):
    r = subprocess.run(_spinert("serve", *args), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and why in r.stderr and "Traceback" not in r.stderr
