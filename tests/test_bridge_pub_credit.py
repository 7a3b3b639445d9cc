"""PUB flow control over real ZeroMQ sockets: a subscriber that keeps up must never hit the HWM.

libzmq's PUB learns how far each subscriber's pipe has been drained from "activate_write" commands that the
I/O thread posts to the socket's mailbox, and zmq_send() reads that mailbox at most once per ~3M TSC ticks
(~1 ms). A publisher that sends faster than that sees stale credit and silently drops for a subscriber that
has already received everything (tests/test_bridge_server.py's stalled-subscriber test hit this with 1 MB
messages). No real CT data needed: the server runs with a no-op runner.
"""
from __future__ import annotations

import numpy as np
import pytest

from bridge import codec
from bridge.client import Subscriber
from bridge.server import BridgeServer, ServerConfig


@pytest.mark.parametrize("hwm, payload_bytes", [(2, 64), (4, 64), (4, 300_000)])
def test_a_subscriber_that_keeps_up_receives_every_message_at_a_small_hwm(hwm, payload_bytes):
    # Heartbeats off (one an hour): in lockstep at most one published message is ever in flight, far below
    # any HWM >= 2, so every single message must arrive, contiguous in pub_seq.
    config = ServerConfig(pub="tcp://127.0.0.1:*", rep="tcp://127.0.0.1:*", heartbeat_s=3600.0, hwm=hwm)
    blob = np.random.default_rng(1).bytes(payload_bytes)  # incompressible; >= 64 KiB goes zero-copy in pyzmq
    n = 400
    with BridgeServer(config, lambda *a, **k: None) as srv, \
            Subscriber(srv.pub_endpoint, schemas=(codec.SCHEMA_STATUS,)) as sub:
        # Slow joiner: publish probes until one arrives, then drain whatever else got through.
        for _ in range(100):
            srv.publish(codec.status_message("probe", id=None))
            if sub.recv(0.1) is not None:
                break
        else:
            pytest.fail("subscriber never connected")
        while sub.recv(0.2) is not None:
            pass
        seqs = []
        for i in range(n):
            srv.publish(codec.status_message("tick", id=f"t{i}", blob=blob))
            m = sub.recv(5)
            assert m is not None, f"t{i} (of {n}) dropped for a subscriber that had received everything before it"
            assert m["id"] == f"t{i}" and m["blob"] == blob
            seqs.append(m["pub_seq"])
        assert seqs == list(range(seqs[0], seqs[0] + n))  # contiguous: nothing lost in between
        assert srv.stats["dropped"] == 0
