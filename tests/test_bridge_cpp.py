"""The C++ example client (cppzmq + msgpack-c) against a live server: its printout equals the Python decode."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from bridge import codec
from bridge.client import Client, decode_result
from bridge.replay import replay_runner
from bridge.server import BridgeServer, ServerConfig
from spinert.paths import real_data_dir

REAL = real_data_dir()
CASE = "tssample-example-ct"
CPP = Path(__file__).resolve().parents[1] / "bridge" / "cpp"
APT = "g++ make pkg-config libzmq3-dev cppzmq-dev libmsgpack-cxx-dev zlib1g-dev"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (real CT cases) not present")


def _missing_toolchain() -> str | None:
    for tool in ("make", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {APT})"
    probe = "#include <zmq.hpp>\n#define MSGPACK_NO_BOOST 1\n#include <msgpack.hpp>\n#include <zlib.h>\n"
    r = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-x", "c++", "-"], input=probe, text=True,
                       capture_output=True, timeout=120)
    if r.returncode != 0:
        return f"C++ headers missing (apt-get install {APT}): {r.stderr.strip().splitlines()[0][:200]}"
    return None


@pytest.fixture(scope="module")
def cpp_client(tmp_path_factory) -> Path:
    why = _missing_toolchain()
    if why:
        pytest.skip(why)
    build = tmp_path_factory.mktemp("cpp")
    r = subprocess.run(["make", "-s", "-C", str(CPP), f"BUILD={build}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the C++ client does not build:\n{r.stdout}\n{r.stderr}"
    return build / "spinert_client"


LINE = re.compile(r"vertebra label=(\d+) name=(\S+) center=([-\d.]+),([-\d.]+),([-\d.]+) voxels=(\d+)")


def _parse(stdout: str) -> tuple[list[str], list[tuple]]:
    results = [ln for ln in stdout.splitlines() if ln.startswith("result ")]
    verts = [(int(m[1]), m[2], (float(m[3]), float(m[4]), float(m[5])), int(m[6])) for m in LINE.finditer(stdout)]
    return results, verts


def _assert_same(verts: list[tuple], msg: dict) -> None:
    expected = decode_result(msg).vertebrae
    assert [(v[0], v[1]) for v in verts] == [(e.label, e.name) for e in expected]
    for (_, _, centre, voxels), e in zip(verts, expected):
        assert centre == pytest.approx(e.center_lps, abs=1e-4)
        assert voxels == int(e.mask.sum())


def test_cpp_client_subscribes_and_requests_last(cpp_client):
    cfg = ServerConfig(pub="tcp://127.0.0.1:*", rep="tcp://127.0.0.1:*", heartbeat_s=0.05)
    with BridgeServer(cfg, replay_runner(REAL)) as srv:
        proc = subprocess.Popen([str(cpp_client), "--sub", srv.pub_endpoint, "--count", "1", "--timeout-ms", "20000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # It is subscribed once it logs a heartbeat: then the run's result cannot be missed.
            seen = threading.Event()
            err_lines: list[str] = []

            def pump():
                for ln in proc.stderr:
                    err_lines.append(ln)
                    if ln.startswith("status heartbeat"):
                        seen.set()

            t = threading.Thread(target=pump, daemon=True)
            t.start()
            assert seen.wait(20), f"C++ client never received a heartbeat: {err_lines[-5:]}"
            with Client(srv.rep_endpoint, timeout_s=20) as c:
                reply = c.run(path=str(REAL / f"{CASE}_ct.nii.gz"), request_id="cpp-run")
            out, _ = proc.communicate(timeout=20)
            t.join(5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, "".join(err_lines[-10:])
        results, verts = _parse(out)
        assert len(results) == 1 and "id=cpp-run" in results[0] and f"volume={CASE}" in results[0]
        assert reply["schema"] == codec.SCHEMA_RESULT
        assert len(verts) == len(reply["vertebrae"]) == 8
        _assert_same(verts, reply)

        last = subprocess.run([str(cpp_client), "--req", srv.rep_endpoint, "--last", "--timeout-ms", "10000"],
                              capture_output=True, text=True, timeout=30)
        assert last.returncode == 0, last.stderr
        results, verts = _parse(last.stdout)
        assert len(results) == 1 and "id=cpp-last" in results[0]
        _assert_same(verts, reply)
