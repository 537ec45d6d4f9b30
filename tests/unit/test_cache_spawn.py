"""What starting the cache daemon leaves behind when the starter does not wait for it.

The "daemon" here is a Python that exits at once: what is checked is the
starter's side (the start lock, the child reaped), not the daemon.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazyfs.cache.layout import socket_path
from lazyfs.cache.remote import Remote, RemoteOrigin
from lazyfs.cache.spawn import SPEC_NAME, START_LOCK, DaemonSpec, start_daemon, started_as
from lazyfs.fs import mount as lazy_mount
from providers.digest import Digest
from providers.manifest import Layer
from tests.support.processes import reaped

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path) -> DaemonSpec:
    return DaemonSpec(tmp_path / "cache", (sys.executable, "-c", ""), timeout=60.0)


def _lock_freed(cache_dir: Path, guard: float = 60.0) -> bool:
    """Whether the start lock is free, soon; ``guard``: a hang bound.

    Not at once: a child spawned with vfork lets its parent go on before its
    exec has closed the close-on-exec descriptors, the lock's among them.
    """
    deadline = time.monotonic() + guard
    fd = os.open(cache_dir / START_LOCK, os.O_RDWR | os.O_CLOEXEC)
    try:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            return True
        return False
    finally:
        os.close(fd)


def test_a_daemon_start_released_without_waiting_isreaped(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    starting = start_daemon(spec)
    assert starting is not None and starting.pid is not None
    pid = starting.pid
    starting.release()
    assert _lock_freed(spec.cache_dir)
    assert reaped(pid), f"the daemon {pid} started here is a zombie"


def test_a_mount_that_fails_after_starting_the_daemon_lets_go_of_the_start_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path)
    layer = Layer(Digest("sha256:" + "ab" * 32), "application/vnd.oci.image.layer.v1.tar", 10)
    remote = Remote(spec, {layer.digest: RemoteOrigin("registry.example", "some/image")})
    (tmp_path / "m").mkdir()

    def no_descriptors() -> tuple[int, int]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    # Kept till the end: its traceback holds what the mount left, as a caller's would.
    with monkeypatch.context() as patch, pytest.raises(OSError, match="Too many") as raised:
        patch.setattr(os, "pipe", no_descriptors)
        lazy_mount.mount(
            [layer], tmp_path / "m", store=tmp_path / "store", log_path=tmp_path / "log",
            remote=remote,
        )  # fmt: skip
    assert _lock_freed(spec.cache_dir)
    assert raised.value.errno == errno.EMFILE


def test_no_socket_is_no_daemon_said_without_loading_the_client(tmp_path: Path) -> None:
    """The first start on a machine spawns the daemon before it loads the protocol's code."""
    code = (
        "import sys; from pathlib import Path; from lazyfs.cache.spawn import answers\n"
        "print(answers(Path(sys.argv[1])), 'lazyfs.cache.connection' in sys.modules)\n"
    )
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()

    def ask() -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, str(cache_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    assert ask() == "False False"
    # A socket file nobody listens on: asked through the client, and still no daemon.
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(socket_path(cache_dir)))
    dead.close()
    assert ask() == "False True"


def test_a_start_whose_daemon_exits_at_once_keeps_no_way_to_start_it(tmp_path: Path) -> None:
    # A command whose flags the daemon refuses: its mounts must not start that again later.
    spec = _spec(tmp_path)
    kept = DaemonSpec(spec.cache_dir, (sys.executable, "-c", "pass", "earlier"), {"A": "1"})
    spec.cache_dir.mkdir(mode=0o700)
    _keep(kept)
    starting = start_daemon(spec)
    assert starting is not None
    starting.hand_over()  # the "daemon" exits without taking its cache
    assert started_as(spec.cache_dir) == kept


def test_a_start_whose_daemon_holds_its_cache_keeps_how_it_started(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    # A "daemon" that takes the cache's lock and holds it until the test is done.
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "while os.path.exists(sys.argv[2]): time.sleep(0.02)\n"
    )
    held = tmp_path / "held"
    held.touch()
    spec = DaemonSpec(
        cache_dir, (sys.executable, "-c", code, str(cache_dir / "lock"), str(held)),
        {"LAZYFS_CACHE_SIZE": "1"}, timeout=60.0,
    )  # fmt: skip
    starting = start_daemon(spec)
    assert starting is not None and starting.pid is not None
    pid = starting.pid
    try:
        starting.hand_over()
        again = started_as(cache_dir)
        assert again is not None and (again.command, again.env) == (spec.command, spec.env)
        assert stat.S_IMODE(os.stat(cache_dir / SPEC_NAME).st_mode) == 0o600
    finally:
        held.unlink()
    assert reaped(pid)


def _keep(spec: DaemonSpec) -> None:
    """What an earlier start left."""
    (spec.cache_dir / SPEC_NAME).write_text(
        json.dumps({"command": list(spec.command), "env": dict(spec.env)})
    )
