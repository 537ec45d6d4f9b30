"""Mount processes forked by the mount server (``lazyfs.fs.mount_server``) are exec'd ones' equals.

Each test that mounts takes down its mounts and stops the store's server
afterwards, checking that neither a mount process nor the server is left
(``mounted``, ``tests.support.mount_servers.chosen``). Tests that hold for
both ways of starting run on each (``start``: exec and server).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from lazyfs.fs import caps as fuse_caps
from lazyfs.fs import mount as lazy_mount
from lazyfs.fs import mount_server_client as server_client
from lazyfs.gc.uses import mounted_layers
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import BackendError, LazyfsError
from providers.fslock import exclusive_lock_until
from providers.manifest import Layer
from tests.support import images, mount_servers
from tests.support.backend_variants import IGNORED_XATTRS
from tests.support.blob_sources import store_files
from tests.support.fuse_mounts import need_fuse, runs_mount_main, unmount_all, walk_and_read
from tests.support.images import Entry, whiteout, write_layer
from tests.support.lazyfs_cli import REPO
from tests.support.mount_servers import EXEC, SERVER
from tests.support.rich_image import RICH_TAG
from tests.support.tree import diff_trees, tree_digest

pytestmark = pytest.mark.integration

LAYERS = [
    [Entry("etc", "dir"), Entry("etc/hosts", data=b"127.0.0.1 localhost\n"), Entry("etc/gone")],
    [whiteout("etc/gone"), Entry("big", data=b"0123456789" * 100_000)],
]


class Mount(Protocol):
    def __call__(self, point: Path, *, writable: bool = False) -> int: ...


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, list[Layer]]]:
    """A store with ``LAYERS``; its mount server, if one was started, is stopped afterwards."""
    need_fuse()
    lazy_store = Store(tmp_path / "store")
    blobs = [write_layer(entries, tmp_path / f"layer{i}.tar") for i, entries in enumerate(LAYERS)]
    layers = store_files(lazy_store, blobs)
    with mount_servers.chosen(SERVER, lazy_store.root, monkeypatch.setenv):
        yield lazy_store, layers


@pytest.fixture
def mounted(store: tuple[Store, list[Layer]], tmp_path: Path) -> Iterator[Mount]:
    """Mounts ``LAYERS`` where asked; every mount is taken down and its process gone afterwards."""
    lazy_store, layers = store
    made: list[tuple[Path, int]] = []

    def mount(point: Path, *, writable: bool = False) -> int:
        point.mkdir(exist_ok=True)
        record = tmp_path / f"record-{point.name}"
        record.mkdir()
        pid = lazy_mount.mount_recorded(
            record, layers, point, store=lazy_store.root, writable=writable
        )
        made.append((point, pid))
        return pid

    try:
        yield mount
    finally:
        unmount_all(made)


@pytest.mark.parametrize("writable", [False, True], ids=["ro", "rw"])
def test_a_served_mount_shows_what_an_exec_one_shows(
    rich_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writable: bool
) -> None:
    need_fuse()
    lazy_store = Store(tmp_path / "store")
    layers = store_files(
        lazy_store, [path for _, path in images.layer_paths(rich_layout, RICH_TAG)]
    )
    trees = {}
    made: list[tuple[Path, int]] = []
    try:
        for start in mount_servers.PATHS:
            with mount_servers.chosen(start, lazy_store.root, monkeypatch.setenv):
                point, record = tmp_path / start, tmp_path / f"record-{start}"
                point.mkdir()
                record.mkdir()
                pid = lazy_mount.mount_recorded(
                    record, layers, point, store=lazy_store.root, writable=writable
                )
                made.append((point, pid))
                forked = mount_servers.parent(pid) != os.getpid()
                assert forked == (start == SERVER)
                assert runs_mount_main(pid, point)
                if writable:
                    (point / "written").write_bytes(b"by the container\n")
                    os.utime(point / "written", ns=(0, 1_700_000_000_000_000_000))
                trees[start] = tree_digest(point, ignore_xattrs=IGNORED_XATTRS)
                unmount_all([made.pop()])
    finally:
        unmount_all(made)
    assert not diff_trees(trees[EXEC], trees[SERVER])
    assert len(trees[SERVER]) > 10 and ("written" in trees[SERVER]) == writable


def test_mounts_are_forked_by_one_server_and_go_down_as_exec_ones(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, _ = store
    first, second = mounted(tmp_path / "a"), mounted(tmp_path / "b", writable=True)
    server = mount_servers.server_of(lazy_store.root)
    assert {first, second} <= mount_servers.children(server)
    assert (tmp_path / "a" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert not (tmp_path / "b" / "etc" / "gone").exists()
    # Each its own session, as an exec'd one: a signal to the server's group misses it.
    assert os.getsid(first) == first and os.getsid(second) == second
    os.kill(second, signal.SIGTERM)
    assert mount_servers.wait_gone(second)
    assert not lazy_mount.is_mounted(tmp_path / "b")
    assert "SIGTERM: unmounting" in (tmp_path / "record-b" / "mount.log").read_text()


@pytest.fixture
def adopting() -> Iterator[None]:
    with mount_servers.adopting_orphans():
        yield


def test_killing_the_server_leaves_every_mount_serving_and_the_next_starts_another(
    adopting: None, mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, _ = store
    points = [tmp_path / "a", tmp_path / "b"]
    pids = [mounted(point) for point in points]
    server = mount_servers.server_of(lazy_store.root)
    os.kill(server, signal.SIGKILL)
    assert mount_servers.wait_gone(server)
    for point, pid in zip(points, pids, strict=True):
        assert mount_servers.alive(pid) and mount_servers.parent(pid) == os.getpid()
        # Bytes never read before: the mount process itself answers.
        assert walk_and_read(point) == (2, 2)
        assert (point / "big").read_bytes()[-10:] == b"0123456789"
    pid = mounted(tmp_path / "c")
    assert mount_servers.server_of(lazy_store.root) not in (server, None)
    assert mount_servers.parent(pid) == mount_servers.server_of(lazy_store.root)
    assert (tmp_path / "c" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_each_mount_gets_its_callers_environment(
    mounted: Mount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = fuse_caps.why_not()
    if reason is not None:
        pytest.skip(f"the no-open path cannot run here: {reason}")
    # The server started with the first; the second's environment is its caller's own.
    monkeypatch.setenv(fuse_caps.ENV, "0")
    mounted(tmp_path / "a")
    monkeypatch.setenv(fuse_caps.ENV, "1")
    mounted(tmp_path / "b")
    assert "on the open (" in (tmp_path / "record-a" / "mount.log").read_text()
    assert "on the no-open path" in (tmp_path / "record-b" / "mount.log").read_text()


def test_a_server_of_other_code_exits_and_is_replaced(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, _ = store
    mounted(tmp_path / "a")
    old = mount_servers.server_of(lazy_store.root)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(server_client.Unreachable, match="other code"):
            server_client.start_mount(
                server_client.server_dir(lazy_store.root),
                ["--mountpoint", str(tmp_path / "x")],
                ready_fd=write_end,
                log_fd=write_end,
                key="code of another lazyfs",
            )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert mount_servers.wait_gone(old)
    assert server_client.server_pid(server_client.server_dir(lazy_store.root)) is None
    mounted(tmp_path / "b")
    assert mount_servers.server_of(lazy_store.root) != old


def test_a_mount_not_waiting_is_told_the_server_ran_other_code(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    # What a mount's log says when it starts afresh beside the server replacing the old.
    lazy_store, _ = store
    mounted(tmp_path / "a")
    old = mount_servers.server_of(lazy_store.root)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(server_client.Unreachable) as refused:
            server_client.start_mount(
                server_client.server_dir(lazy_store.root),
                ["--mountpoint", str(tmp_path / "x")],
                ready_fd=write_end,
                log_fd=write_end,
                key="code of another lazyfs",
                wait=False,
            )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert str(refused.value) == (
        "the mount server ran other lazyfs code; one is starting for the next mounts"
    )
    assert mount_servers.wait_gone(old)
    mounted(tmp_path / "b")  # by the new one, which the fixture stops


def test_a_request_is_checked_and_its_arguments_parsed_as_an_exec_ones(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, _ = store
    mounted(tmp_path / "a")
    server = mount_servers.server_of(lazy_store.root)
    directory = server_client.server_dir(lazy_store.root)
    before = mount_servers.children(server)
    log = tmp_path / "bad.log"
    read_end, write_end = os.pipe()
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(server_client.Unreachable, match="--ready-fd is the server's"):
            server_client.start_mount(
                directory, ["--ready-fd", "0"], ready_fd=write_end, log_fd=log_fd
            )
        assert mount_servers.children(server) == before
        pid = server_client.start_mount(
            directory, ["--no-such-flag"], ready_fd=write_end, log_fd=log_fd
        )
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b""  # it said nothing: it exited
    finally:
        os.close(read_end)
        os.close(log_fd)
        if write_end >= 0:
            os.close(write_end)
    assert mount_servers.wait_gone(pid)
    assert "the following arguments are required: --mountpoint" in log.read_text()


def test_the_server_is_closed_to_other_users(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, _ = store
    mounted(tmp_path / "a")
    server = mount_servers.server_of(lazy_store.root)
    directory = server_client.server_dir(lazy_store.root)
    sock = directory / server_client.SOCKET_NAME
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    # Past the closed directory and socket (a hole there would be another bug),
    # the server still refuses a peer of another uid.
    sock.chmod(0o666)
    before = mount_servers.children(server)
    answer = _ask_as(65534, sock, tmp_path)
    assert "uid 65534 may not use this mount server" in answer
    assert mount_servers.children(server) == before
    assert mount_servers.alive(server)


def _ask_as(uid: int, sock: Path, tmp_path: Path) -> str:
    """What the server answers a mount request sent by a process of ``uid``."""
    out = tmp_path / "answer"
    path_fd = os.open(sock, os.O_PATH)
    script = (
        "import os, socket, sys, json, struct\n"
        f"os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); os.setresuid({uid}, {uid}, {uid})\n"
        "c = socket.socket(socket.AF_UNIX)\n"
        f"c.connect('/proc/self/fd/{path_fd}')\n"
        "body = json.dumps({'op': 'mount', 'key': '', 'args': [], 'env': {}, 'umask': 0})\n"
        "try:\n"
        "    socket.send_fds(c, [struct.pack('>I', len(body)) + body.encode()], [0, 1, 2])\n"
        "except BrokenPipeError:\n"
        "    pass  # answered and closed before reading: the answer is there still\n"
        "sys.stdout.write(c.recv(65536)[4:].decode())\n"
    )
    try:
        with out.open("w") as answer:
            # The interpreter itself: the venv's link may sit where uid cannot look.
            subprocess.run(
                [os.path.realpath("/proc/self/exe"), "-I", "-c", script],
                stdout=answer,
                pass_fds=[path_fd],
                check=True,
                timeout=60,
            )
    finally:
        os.close(path_fd)
    return str(json.loads(out.read_text()).get("error"))


def test_without_a_server_mounts_are_exec_d_unless_the_server_is_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_fuse()
    lazy_store = Store(tmp_path / "store")
    layers = store_files(lazy_store, [write_layer(LAYERS[0], tmp_path / "layer.tar")])
    # No server can live there: its directory is a file.
    server_client.server_dir(lazy_store.root).write_bytes(b"")
    point = tmp_path / "m"
    point.mkdir()
    monkeypatch.setenv(server_client.ENV, "1")
    with pytest.raises(BackendError, match="the mount server cannot start this mount"):
        lazy_mount.mount(layers, point, store=lazy_store.root, log_path=tmp_path / "log")
    assert not lazy_mount.is_mounted(point)
    monkeypatch.delenv(server_client.ENV)
    pid = lazy_mount.mount(layers, point, store=lazy_store.root, log_path=tmp_path / "log")
    try:
        assert mount_servers.parent(pid) == os.getpid()
        assert (point / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
        assert "starting the mount process itself" in (tmp_path / "log").read_text()
    finally:
        unmount_all([(point, pid)])


def test_unless_required_the_first_mount_is_exec_d_while_a_server_starts_for_the_next(
    mounted: Mount,
    store: tuple[Store, list[Layer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    monkeypatch.delenv(server_client.ENV)  # unset: the server where it can, else exec
    first = mounted(tmp_path / "a")
    assert mount_servers.parent(first) == os.getpid()
    assert (
        "one is starting for the next mounts" in (tmp_path / "record-a" / "mount.log").read_text()
    )
    assert (tmp_path / "a" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    server = _listening(directory)
    second = mounted(tmp_path / "b")
    assert mount_servers.parent(second) == server
    assert (tmp_path / "b" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"


@pytest.mark.parametrize("lazy", [False, True], ids=["local", "remote-layers"])
def test_a_server_started_ahead_is_waited_for_and_forks_the_first_mount(
    mounted: Mount,
    store: tuple[Store, list[Layer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lazy: bool,
) -> None:
    """What a command does while it resolves its image (``lazyfs.cli_early``)."""
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    monkeypatch.delenv(server_client.ENV)
    if lazy:
        # A mount of remote layers starts no server of its own (``lazyfs.fs.mount._start``).
        start = lazy_mount._start
        monkeypatch.setattr(
            lazy_mount, "_start", lambda *a, **kw: start(*a, **{**kw, "start_server": False})
        )
    server_client.start_ahead(directory)
    # Called right away, long before the server has imported what a mount runs.
    first = mounted(tmp_path / "a")
    server = mount_servers.server_of(lazy_store.root)
    assert mount_servers.parent(first) == server
    assert (tmp_path / "a" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    # Once only: the same process starting it again starts none, and is not kept waiting.
    server_client.start_ahead(directory)
    assert mount_servers.parent(mounted(tmp_path / "b")) == server


# A server's pyfuse3, shadowed: one that dies at start, one whose import never ends (as
# one stuck on a dead network path would; its alarm ends it in 30 s).
DIES = "raise SystemExit('no pyfuse3 here')\n"
HANGS = "import threading\nthreading.Event().wait()\n"


def _start_ahead_with(
    directory: Path, pyfuse3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start_ahead`` a server that imports ``pyfuse3`` as its pyfuse3; mounts import ours."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "pyfuse3.py").write_text(pyfuse3)
    monkeypatch.setenv("PYTHONPATH", f"{stubs}{os.pathsep}{REPO}")
    server_client.start_ahead(directory)
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def test_a_server_started_ahead_that_dies_at_start_leaves_the_mount_to_exec(
    mounted: Mount,
    store: tuple[Store, list[Layer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    monkeypatch.delenv(server_client.ENV)
    _start_ahead_with(directory, DIES, tmp_path, monkeypatch)
    pid = mounted(tmp_path / "a")
    assert mount_servers.parent(pid) == os.getpid()
    log = (tmp_path / "record-a" / "mount.log").read_text()
    assert "the mount server started ahead exited" in log, log
    assert (tmp_path / "a" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_a_required_server_is_waited_for_in_full_though_one_started_ahead_died(
    mounted: Mount,
    store: tuple[Store, list[Layer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LAZYFS_MOUNT_SERVER=1: the mount waits and starts a server as ever, never exec'd."""
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    _start_ahead_with(directory, DIES, tmp_path, monkeypatch)
    pid = mounted(tmp_path / "a")  # the fixture has set LAZYFS_MOUNT_SERVER=1
    assert mount_servers.parent(pid) == mount_servers.server_of(lazy_store.root)
    assert (tmp_path / "a" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_a_server_started_ahead_that_no_mount_asks_for_exits_on_its_own(
    store: tuple[Store, list[Layer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command that started it failed before it mounted: it does not idle for an hour."""
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    monkeypatch.delenv(server_client.ENV)
    monkeypatch.setattr(server_client, "AHEAD_IDLE", 1.0)
    server_client.start_ahead(directory)
    server = _listening(directory)
    assert mount_servers.wait_gone(server, timeout=60.0)
    assert "idle for 1s" in (directory / server_client.LOG_NAME).read_text()


def test_a_server_started_ahead_that_hangs_is_waited_for_a_moment_only(
    mounted: Mount,
    store: tuple[Store, list[Layer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    monkeypatch.delenv(server_client.ENV)
    monkeypatch.setattr(server_client, "AHEAD_WAIT", 0.5)
    _start_ahead_with(directory, HANGS, tmp_path, monkeypatch)
    (server,) = mount_servers.processes(lazy_store.root)
    try:
        pid = mounted(tmp_path / "a")
        # Exec'd while the server still hangs: not kept waiting for its alarm.
        assert mount_servers.alive(server)
        assert mount_servers.parent(pid) == os.getpid()
        assert "stayed locked" in (tmp_path / "record-a" / "mount.log").read_text()
        assert (tmp_path / "a" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    finally:
        os.kill(server, signal.SIGKILL)
        assert mount_servers.wait_gone(server)


def test_a_mount_while_a_server_starts_neither_waits_nor_starts_another(
    mounted: Mount,
    store: tuple[Store, list[Layer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    monkeypatch.delenv(server_client.ENV)
    directory.mkdir(mode=0o700)
    # What a server that is starting holds until it listens.
    lock = os.open(directory / server_client.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = mounted(tmp_path / "a")
        assert mount_servers.parent(pid) == os.getpid()
        assert "the mount server is starting" in (tmp_path / "record-a" / "mount.log").read_text()
        assert server_client.server_pid(directory) is None
    finally:
        os.close(lock)
    assert not (directory / server_client.SOCKET_NAME).exists()


def test_a_first_mount_that_fails_early_raises_while_a_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server started beside the first mount must not hold its ready pipe open."""
    need_fuse()
    lazy_store = Store(tmp_path / "store")
    missing = Layer(Digest("sha256:" + "ab" * 32), "application/vnd.oci.image.layer.v1.tar", 10)
    point = tmp_path / "m"
    point.mkdir()
    outcome: list[BaseException | int] = []

    def first_mount() -> None:
        try:
            outcome.append(
                lazy_mount.mount([missing], point, store=lazy_store.root, log_path=tmp_path / "log")
            )
        except BaseException as error:
            outcome.append(error)

    with mount_servers.chosen(SERVER, lazy_store.root, monkeypatch.setenv):
        monkeypatch.delenv(server_client.ENV)  # unset: exec'd while a server starts
        caller = threading.Thread(target=first_mount, daemon=True)
        caller.start()
        # A hang guard, not a timing claim: stopping the server (on leaving
        # ``chosen``) lets a caller stuck on the held pipe return.
        caller.join(120)
        hung = caller.is_alive()
        _listening(server_client.server_dir(lazy_store.root))
    caller.join(120)
    assert not hung, "the first mount waited for the mount server to exit"
    assert len(outcome) == 1 and isinstance(outcome[0], LazyfsError), outcome
    assert "not in the store" in str(outcome[0])
    assert not lazy_mount.is_mounted(point)


def _listening(directory: Path, timeout: float = 60.0) -> int:
    """The pid of the server of ``directory`` once it listens (it was started in the background)."""
    deadline = time.monotonic() + timeout
    while (pid := server_client.server_pid(directory)) is None:
        assert time.monotonic() < deadline, f"no mount server listened in {directory}"
        time.sleep(0.05)
    return pid


def test_a_caller_in_another_mount_namespace_gets_a_mount_of_its_own(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, layers = store
    mounted(tmp_path / "a")  # the server now runs, in our namespaces and cgroup
    server = mount_servers.server_of(lazy_store.root)
    point = tmp_path / "b"
    point.mkdir()
    # In a mount namespace of its own, a mount forked by the server would be
    # made in ours and leave the caller an empty directory.
    script = (
        "import os, sys, json\n"
        "from pathlib import Path\n"
        "from lazyfs.fs import mount as lazy_mount\n"
        "from providers.manifest import Layer\n"
        "layers = [Layer(**d) for d in json.loads(sys.argv[1])]\n"
        "point, store, log = (Path(a) for a in sys.argv[2:5])\n"
        "pid = lazy_mount.mount(layers, point, store=store, log_path=log)\n"
        "print((point / 'etc' / 'hosts').read_text(), end='')\n"
        "lazy_mount.unmount(point, pid=pid)\n"
    )
    described = json.dumps([
        {"digest": la.digest, "media_type": la.media_type, "size": la.size, "diff_id": la.diff_id}
        for la in layers
    ])  # fmt: skip
    before = mount_servers.children(server)

    def unshared(server_wanted: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), server_client.ENV: server_wanted}
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
             described, str(point), str(lazy_store.root), str(tmp_path / "b.log")],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    required = unshared("1")
    assert required.returncode != 0
    assert "runs in another mnt namespace" in required.stderr.splitlines()[-1]
    result = unshared("")  # unset: the server where it can, else exec
    assert result.returncode == 0, result.stderr
    assert result.stdout == "127.0.0.1 localhost\n"
    assert "runs in another mnt namespace" in (tmp_path / "b.log").read_text()
    assert mount_servers.children(server) == before  # the server forked nothing for it
    assert not lazy_mount.is_mounted(point)  # nor is anything left in ours


def _first_mount_and_spare(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> tuple[int, int, int]:
    """Mount ``tmp_path/a``: its mount process, the store's mount server and the spare beside it."""
    lazy_store, _ = store
    first = mounted(tmp_path / "a")
    server = mount_servers.server_of(lazy_store.root)
    assert server is not None
    (spare,) = mount_servers.children(server) - {first}  # forked before the caller was answered
    return first, server, spare


def test_a_mount_goes_to_the_spare_forked_before_it_and_the_next_spare_waits_already(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, _ = store
    first, server, spare = _first_mount_and_spare(mounted, store, tmp_path)
    second = mounted(tmp_path / "b", writable=True)
    assert second == spare
    assert os.getsid(second) == second  # it left the server's session, as a forked one does
    (next_spare,) = mount_servers.children(server) - {first, second}
    assert (tmp_path / "b" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert "lazyfs.fs.mount_main" in Path(f"/proc/{second}/cmdline").read_text()
    # A spare holds no descriptor of the requests served before it.
    held = {
        os.readlink(f"/proc/{next_spare}/fd/{fd}") for fd in os.listdir(f"/proc/{next_spare}/fd")
    }
    assert (
        not {str(tmp_path / "record-a" / "mount.log"), str(tmp_path / "record-b" / "mount.log")}
        & held
    )
    # The spare is gone once the server is; the mounts stay.
    server_client.stop_server(server_client.server_dir(lazy_store.root))
    assert not mount_servers.alive(next_spare)
    assert mount_servers.alive(first) and mount_servers.alive(second)


def test_a_mount_is_forked_when_the_spare_is_gone(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    lazy_store, _ = store
    _, server, spare = _first_mount_and_spare(mounted, store, tmp_path)
    os.kill(spare, signal.SIGKILL)
    assert mount_servers.wait_gone(spare)
    second = mounted(tmp_path / "b")
    assert second != spare and mount_servers.parent(second) == server
    assert (tmp_path / "b" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert "is gone" in (server_client.server_dir(lazy_store.root) / "server.log").read_text()


def test_a_mount_whose_pid_cannot_be_recorded_does_not_stay(
    store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    # The pid is written once the mount is up. When that failed (ENOSPC on the work
    # dir, Ctrl-C there), the caller removed the record and the mount stayed, which
    # `lazyfs umount` then said lazyfs did not have.
    lazy_store, layers = store
    point, record = tmp_path / "mnt", tmp_path / "record"
    point.mkdir()
    (record / "pid").mkdir(parents=True)  # where the pid file goes: it cannot be written
    try:
        with pytest.raises(IsADirectoryError):
            lazy_mount.mount_recorded(record, layers, point, store=lazy_store.root, writable=False)
        assert not lazy_mount.is_mounted(point)
        assert not serving(point), (record / "mount.log").read_text()
    finally:
        left: list[int | None] = [*serving(point)] or [None]
        for pid in left:
            lazy_mount.unmount(point, pid=pid)  # fine when nothing is mounted


def serving(point: Path) -> list[int]:
    """The mount processes serving ``point``."""
    pids = map(int, filter(str.isdigit, os.listdir("/proc")))
    return [pid for pid in pids if runs_mount_main(pid, point)]


def test_a_mount_given_relative_paths_serves_them_from_the_root(
    store: tuple[Store, list[Layer]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mount process serves for the mount's life: it leaves its caller's directory
    # (which it kept busy) for /, its paths made absolute first, upper and work too.
    lazy_store, layers = store
    (tmp_path / "mnt").mkdir()
    (tmp_path / "record").mkdir()
    monkeypatch.chdir(tmp_path)
    store_dir = Path(os.path.relpath(lazy_store.root, tmp_path))
    pid = lazy_mount.mount_recorded(
        Path("record"), layers, Path("mnt"), store=store_dir, writable=True
    )
    try:
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        # Its command line names them as unmount and GC look for them, whoever asks.
        assert [x.pid for x in mounted_layers(lazy_store.root)] == [pid]
        assert runs_mount_main(pid, tmp_path / "mnt")
        (tmp_path / "mnt" / "written").write_text("kept in the upper\n")
        assert (tmp_path / "record" / "upper" / "written").read_text() == "kept in the upper\n"
        assert (tmp_path / "mnt" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    finally:
        unmount_all([(tmp_path / "mnt", pid)])


TWO_MIB = b"x" * (2 << 20)


@contextlib.contextmanager
def file_size_soft_limit(size: int) -> Iterator[None]:
    """This process's RLIMIT_FSIZE soft limit at ``size`` inside (its hard one as it was)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_each_mount_gets_its_callers_limits_not_the_first_callers(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    # The server inherited the limits of the command that started it, and every
    # later mount got them for the server's hour: after one `ulimit -f 1024`, a
    # later run without limits could not write 2 MiB in its rootfs.
    lazy_store, _ = store
    with file_size_soft_limit(1 << 20):
        limited = mounted(tmp_path / "a", writable=True)  # starts the server
    server = mount_servers.server_of(lazy_store.root)
    unlimited = mounted(tmp_path / "b", writable=True)
    assert {limited, unlimited} <= mount_servers.children(server)
    # Written by a process without the limit: the mount process's own is what counts.
    (tmp_path / "b" / "two").write_bytes(TWO_MIB)
    assert (tmp_path / "b" / "two").stat().st_size == len(TWO_MIB)
    with pytest.raises(OSError) as refused:
        (tmp_path / "a" / "two").write_bytes(TWO_MIB)  # as an exec'd one would refuse it
    assert refused.value.errno == errno.EFBIG


def test_a_server_whose_hard_limits_are_below_the_callers_makes_way(
    mounted: Mount, store: tuple[Store, list[Layer]], tmp_path: Path
) -> None:
    # A hard limit cannot be raised without CAP_SYS_RESOURCE: a server started by a
    # command under `ulimit -f 1024` (soft and hard) could give no later mount more.
    lazy_store, _ = store
    directory = server_client.server_dir(lazy_store.root)
    script = (
        "import resource, sys\n"
        "from lazyfs.fs import mount_server_client as client\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "client.start_ahead(client.Path(sys.argv[1]))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(directory)], cwd=REPO, check=True)
    deadline = time.monotonic() + server_client.START_TIMEOUT
    with exclusive_lock_until(directory / server_client.LOCK_NAME, deadline, AssertionError):
        pass  # held by the server until it listens
    low = mount_servers.server_of(lazy_store.root)
    assert resource.prlimit(low, resource.RLIMIT_FSIZE) == (1 << 20, 1 << 20)
    pid = mounted(tmp_path / "a", writable=True)
    assert mount_servers.wait_gone(low)
    assert mount_servers.parent(pid) == mount_servers.server_of(lazy_store.root) != low
    (tmp_path / "a" / "two").write_bytes(TWO_MIB)
    assert (tmp_path / "a" / "two").stat().st_size == len(TWO_MIB)
    assert "higher limits: fsize" in (directory / "server.log").read_text()
