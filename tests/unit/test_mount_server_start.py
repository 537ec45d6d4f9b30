"""A mount server that hangs before it listens gives up, and lets go of ``start.lock``.

A real server process, its ``pyfuse3`` preload shadowed by a module that
never finishes importing (as an import stuck on a dead network path would).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lazyfs.fs import mount_server_client as server_client
from tests.support.lazyfs_cli import REPO


def test_a_server_stuck_before_listening_exits_and_releases_the_start_lock(
    tmp_path: Path,
) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    marker = tmp_path / "importing"
    (stubs / "pyfuse3.py").write_text(
        f"import pathlib, threading\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        f"threading.Event().wait()  # never set\n"
    )
    directory = tmp_path / "server"
    directory.mkdir(mode=0o700)
    lock_path = directory / server_client.LOCK_NAME
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a starter holds it for the server
    env = {**os.environ, "PYTHONPATH": f"{stubs}{os.pathsep}{REPO}"}
    argv = [sys.executable, "-P", "-m", "lazyfs.fs.mount_server", "--dir", str(directory)]
    argv += ["--start-lock-fd", str(lock), "--start-timeout", "1"]
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(argv, env=env, pass_fds=(lock,), stdout=log, stderr=log)
    os.close(lock)  # the server's copy holds it now
    try:
        # A bound on a hang, not a timing threshold: the server is to go in 1s.
        code = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert marker.exists(), (tmp_path / "server.log").read_text()  # it hung where meant to
    assert code == -signal.SIGALRM
    assert not (directory / server_client.SOCKET_NAME).exists()
    again = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: the next mount may start one
    finally:
        os.close(again)


SPARE_SCRIPT = """
import os, sys
from lazyfs.fs import mount_server_child
pid, sock = mount_server_child.fork_spare(close=())
print(pid, flush=True)
sys.stdin.readline()
sock.close()  # as the server does when it stops: the spare exits
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_a_spare_leaves_the_server_s_session_before_any_request(tmp_path: Path) -> None:
    """What does not depend on the request is done before it comes, not on a mount's way."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        [sys.executable, "-P", "-c", SPARE_SCRIPT],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as forker:
        assert forker.stdin is not None and forker.stdout is not None
        try:
            spare = int(forker.stdout.readline())
            deadline = time.monotonic() + 30
            while os.getsid(spare) != spare:  # it runs setsid as soon as it is scheduled
                assert time.monotonic() < deadline, "the spare stayed in the server's session"
                time.sleep(0.01)
            assert os.getsid(forker.pid) == forker.pid != spare
            forker.stdin.write("\n")
            forker.stdin.flush()
            assert forker.stdout.readline().strip() == "0"
        finally:
            forker.kill()


def test_a_socket_whose_listener_ended_since_is_no_server(tmp_path: Path) -> None:
    # SO_PEERCRED names the process that made the listening socket. One that ended
    # since (killed, a zombie not yet reaped) while the socket lived on was taken
    # for a server "in another place we cannot see": every mount of the store failed.
    directory = tmp_path / "server"
    directory.mkdir(mode=0o700)
    told, tell = os.pipe()
    maker = os.fork()
    if maker == 0:  # makes the socket, leaves it to a child that keeps it, and ends
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(directory / server_client.SOCKET_NAME))
            listener.listen(8)
            keeper = os.fork()
            if keeper == 0:
                while True:
                    signal.pause()  # connections queue on the socket, never accepted
            os.write(tell, f"{keeper}".encode())
        finally:
            os._exit(0)
    os.close(tell)
    assert os.waitpid(maker, 0)[1] == 0
    keeper = int(os.read(told, 64))
    os.close(told)
    try:
        assert server_client._connect(directory) is None  # a new server replaces it
    finally:
        os.kill(keeper, signal.SIGKILL)
