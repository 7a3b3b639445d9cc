"""CURVE on: only clients whose public key is authorised receive anything; the right key gets everything."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from bridge import codec
from bridge.client import BridgeTimeout, Client, Subscriber, label_volume
from bridge.keys import CurveClientKeys, generate_keys, load_client_keys, load_server_keys
from bridge.replay import replay_runner
from bridge.server import BridgeServer, ServerConfig
from engine.errors import InputError, OutputExistsError
from engine.io import read_volume
from spinert.paths import real_data_dir

REAL = real_data_dir()
CASE = "tptbox-sample-ct-L3"
pytestmark = [pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE"),
              pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (real CT cases) not present")]


@pytest.fixture()
def keys(tmp_path):
    generate_keys(tmp_path / "keys", clients=("robot",))
    # An outsider: a valid key pair that the server was never told about.
    (tmp_path / "outsider").mkdir()
    zmq.auth.create_certificates(tmp_path / "outsider", "robot")
    return tmp_path / "keys", tmp_path / "outsider"


@pytest.fixture()
def curve_server(keys):
    cfg = ServerConfig(pub="tcp://127.0.0.1:*", rep="tcp://127.0.0.1:*", heartbeat_s=0.05, curve_keys=keys[0])
    srv = BridgeServer(cfg, replay_runner(REAL)).start()
    yield srv
    srv.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("spinert-bridge")]


def test_wrong_key_and_no_key_receive_nothing_right_key_receives_everything(keys, curve_server):
    key_dir, outsider_dir = keys
    srv = curve_server
    right = load_client_keys(key_dir, "robot")
    out_pub, out_sec = zmq.auth.load_certificate(outsider_dir / "robot.key_secret")
    wrong = CurveClientKeys(out_pub, out_sec, right.server_public)
    with Subscriber(srv.pub_endpoint, curve=wrong) as bad_sub, Subscriber(srv.pub_endpoint) as plain_sub, \
            Subscriber(srv.pub_endpoint, curve=right) as good_sub:
        good_sub.wait_connected()
        with Client(srv.rep_endpoint, curve=right, timeout_s=20) as good:
            reply = good.run(path=str(REAL / f"{CASE}_ct.nii.gz"), request_id="curve-run")
            assert good.health()["curve"] is True
        lab = read_volume(REAL / f"{CASE}_seg-vert_msk.nii.gz")
        assert np.array_equal(label_volume(reply), lab.array)
        # The authorised subscriber saw the whole run on the stream.
        got = []
        while True:
            m = good_sub.recv(5)
            assert m is not None
            got.append(m)
            if m["schema"] == codec.SCHEMA_RESULT:
                break
        assert got[-1]["id"] == "curve-run" and np.array_equal(label_volume(got[-1]), lab.array)
        assert [m["state"] for m in got if m.get("id") == "curve-run" and "state" in m][:2] == ["queued", "started"]
        # Heartbeats every 50 ms and a published result: the others still hold nothing at all.
        assert bad_sub.recv(0.5) is None
        assert plain_sub.recv(0.1) is None
    for curve in (wrong, None):
        with Client(srv.rep_endpoint, curve=curve, timeout_s=0.5, retries=2) as bad:
            with pytest.raises(BridgeTimeout):
                bad.last()
    with Client(srv.rep_endpoint, curve=right, timeout_s=5) as good:  # and the server still serves
        assert good.last()["run_id"] == "curve-run"


def test_key_files(tmp_path):
    files = generate_keys(tmp_path, clients=("robot", "nav2"))
    assert {f.name for f in files} == {"server.key", "server.key_secret", "robot.key", "robot.key_secret",
                                       "nav2.key", "nav2.key_secret"}
    assert all(f.stat().st_mode & 0o077 == 0 for f in files if f.name.endswith("_secret"))
    with pytest.raises(OutputExistsError):
        generate_keys(tmp_path, clients=("robot",))
    srv = load_server_keys(tmp_path)
    cli = load_client_keys(tmp_path, "nav2")
    assert cli.server_public == srv.public and len(cli.secret) == 40
    with pytest.raises(InputError, match="key file not found"):
        load_client_keys(tmp_path, "nobody")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "server.key_secret").write_text("garbage\n")
    with pytest.raises(InputError):
        load_server_keys(tmp_path / "bad")
