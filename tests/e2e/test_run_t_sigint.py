"""``lazyfs run -t`` passes a SIGINT sent to it on to its container, as docker run -t does.

runc under a terminal ends at once on SIGINT (exit 0), leaving its container:
``run`` sends it to the container by ``runc kill`` instead.
"""

from __future__ import annotations

import errno
import os
import select
import signal

import pytest

from tests.support.lazyfs_cli import Lazyfs, on_new_terminal, read_until

pytestmark = pytest.mark.integration


def test_sigint_to_run_t_reaches_the_container_which_ends_run(lazyfs: Lazyfs) -> None:
    script = (
        'trap "echo trapped; exit 5" INT; echo ready-$((3+4)); while :; do sleep 1000 & wait; done'
    )
    argv = lazyfs.argv("run", "-t", "--backend", "copy", "busybox", "--", "sh", "-c", script)
    run, main = on_new_terminal(argv)
    seen = b""
    try:
        # Computed by the shell: nothing lazyfs prints first can be it.
        seen = read_until(main, b"ready-7")
        run.send_signal(signal.SIGINT)
        while True:
            assert select.select([main], [], [], 60)[0], seen
            try:
                chunk = os.read(main, 4096)
            except OSError as error:  # EIO: run, the terminal's last user, ended
                assert error.errno == errno.EIO
                break
            if not chunk:
                break
            seen += chunk
        code = run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        os.close(main)
    assert code == 5, seen
    assert b"trapped" in seen.split(b"ready-7", 1)[1]
