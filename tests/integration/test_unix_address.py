"""``providers.unix_address``: Unix sockets bound and reached whatever their paths' length,
with the permissions the long path would have, and one line when /proc is not there.

Real sockets; another user is user 65534 (``subprocess`` as it); /proc is
taken away in a mount namespace of the test's own (``unshare``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.unix_address import MAX_PATH, unix_address
from tests.support.lazyfs_cli import REPO

pytestmark = pytest.mark.integration

NOBODY = 65534
CONNECT = """
import socket, sys
from pathlib import Path
from providers.unix_address import unix_address
with socket.socket(socket.AF_UNIX) as sock:
    try:
        with unix_address(Path(sys.argv[1]), "--some_dir") as address:
            sock.connect(address)
    except OSError as error:
        print(type(error).__name__, error)
    else:
        print("connected")
"""


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory in /tmp that every user may search, and a deep one in it."""
    base = Path(tempfile.mkdtemp(prefix="lazyfs-unix-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        deep = base / ("a" * 60) / ("b" * 60)
        deep.mkdir(mode=0o755, parents=True)
        os.chmod(deep.parent, 0o755)
        yield deep
    finally:
        shutil.rmtree(base)


def listening(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    with unix_address(path, "--some_dir") as address:
        server.bind(address)
    server.listen()
    return server


def test_a_socket_of_a_long_path_is_bound_and_reached_by_it(tmp_path: Path) -> None:
    path = tmp_path / ("a" * 60) / ("b" * 60) / "daemon.sock"
    path.parent.mkdir(parents=True)
    assert len(bytes(path)) > MAX_PATH
    with listening(path) as server:
        assert path.is_socket()  # where its path says, not under /proc
        with socket.socket(socket.AF_UNIX) as client:
            with unix_address(path, "--some_dir") as address:
                client.connect(address)
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_a_short_path_is_its_own_address() -> None:
    with unix_address(Path("/run/x.sock"), "--some_dir") as address:
        assert address == "/run/x.sock"


def test_a_long_path_in_a_missing_directory_is_not_found(tmp_path: Path) -> None:
    # As a connect to a socket that is not there: no daemon runs, one may be started.
    path = tmp_path / ("a" * 60) / ("b" * 60) / "daemon.sock"
    with pytest.raises(FileNotFoundError), unix_address(path, "--some_dir"):
        pass


def as_nobody(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CONNECT, str(path)], capture_output=True, text=True, timeout=60,
        cwd=REPO, user=NOBODY, group=NOBODY, extra_groups=[], stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_another_user_gets_through_the_short_path_only_what_the_long_one_allows(
    public: Path,
) -> None:
    path = public / "daemon.sock"
    assert len(bytes(path)) > MAX_PATH
    with listening(path):
        os.chmod(path, 0o600)  # root's, as the daemon's is
        assert as_nobody(path) == "PermissionError [Errno 13] Permission denied"
        os.chmod(path, 0o666)  # the control: this user can reach it when it may
        assert as_nobody(path) == "connected"
        os.chmod(public, 0o700)  # a directory closed to others, as the cache dir is
        assert as_nobody(path) == "PermissionError [Errno 13] Permission denied"
        os.chmod(public.parent, 0o700)  # closed on the way: the descriptor is refused
        assert as_nobody(path).startswith("PermissionError [Errno 13] Permission denied: ")


def test_without_proc_a_long_path_is_one_line_naming_it_and_the_flag(tmp_path: Path) -> None:
    path = tmp_path / ("a" * 60) / ("b" * 60) / "daemon.sock"
    path.parent.mkdir(parents=True)
    bind = CONNECT.replace("sock.connect", "sock.bind")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'umount -l /proc && exec "$0" -c "$1" "$2"', sys.executable, bind, str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"OSError [Errno 36] the socket {path} has a path longer than the {MAX_PATH} bytes a Unix"
        " socket takes, and no /proc/self/fd to reach it by a shorter one: use a shorter"
        " --some_dir"
    ]
    assert not path.exists()
