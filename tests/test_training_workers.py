"""training.common.each_case: per-case work in spawned processes, in order, and gone with their parent."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest

from engine.errors import SpinertError
from training.cli import build_namespace
from training.common import cache_workers, each_case

ROOT = Path(__file__).resolve().parents[1]


def _square_with_pid(folder: str, cid: str) -> tuple[int, int]:
    (Path(folder) / f"{cid}.pid").write_text(str(os.getpid()))
    return int(cid) ** 2, os.getpid()


def test_each_case_keeps_the_order_and_uses_the_workers(tmp_path):
    ids = [str(i) for i in range(6)]
    one = each_case(partial(_square_with_pid, str(tmp_path)), ids, workers=1)
    two = each_case(partial(_square_with_pid, str(tmp_path)), ids, workers=2)
    assert [r for r, _ in one] == [r for r, _ in two] == [i * i for i in range(6)]
    assert {p for _, p in one} == {os.getpid()}
    assert os.getpid() not in {p for _, p in two}  # the work ran in the spawned processes


def test_workers_default_and_bad_values():
    assert cache_workers(build_namespace(model="labeller", tiny=True)) == 1
    assert 1 <= cache_workers(build_namespace(model="labeller")) <= 4
    assert cache_workers(build_namespace(model="labeller", workers=3)) == 3
    with pytest.raises(SpinertError, match="--workers"):
        cache_workers(build_namespace(model="labeller", workers=0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from functools import partial
        from pathlib import Path
        sys.path[:0] = [{str(ROOT)!r}]
        from training.common import each_case

        def slow(folder, cid):
            (Path(folder) / f"{{cid}}.pid").write_text(str(os.getpid()))
            time.sleep(60)

        if __name__ == "__main__":
            each_case(partial(slow, {str(tmp_path)!r}), [str(i) for i in range(8)], workers=2)
    """))
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 2, "the two workers did not start"
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.time() + 20
        alive = pids
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [p for p in pids if _running(p)]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        parent.kill()
        for p in tmp_path.glob("*.pid"):
            try:
                os.kill(int(p.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A dead worker may linger as a zombie until init reaps it: it counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
