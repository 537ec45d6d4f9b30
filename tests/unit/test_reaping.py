"""``providers.reaping``: a child started and forgotten leaves no zombie."""

from __future__ import annotations

import os
import threading

import pytest

from providers.reaping import reap_later


def test_a_child_is_reaped_once_it_ends() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait to be told, then end
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    reap_later(pid)
    # WNOWAIT: look without reaping. The child still runs; nothing to reap yet.
    assert os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    (reaper,) = [t for t in threading.enumerate() if t.name == f"reap-{pid}"]
    os.close(write_end)  # the child ends now
    reaper.join(timeout=60)
    assert not reaper.is_alive()
    with pytest.raises(ChildProcessError):  # reaped: no zombie left
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
