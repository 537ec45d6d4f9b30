"""A mount server or cache daemon whose directory is deleted or replaced exits, not an hour later.

Real processes: a mount server (``lazyfs.fs.mount_server``) for a store,
and ``lazyfs daemon`` over a cache, started as a command starts them (idle
for an hour at the most) and as a service. Each test deletes or replaces the
directory and waits, bounded, for the process to end by itself; whatever
happens, none of them is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cache import service
from lazyfs.fs import mount_server_client as server_client
from tests.support import mount_servers
from tests.support.cache_daemons import daemon_argv, daemon_status, recorded_daemon, wait_for
from tests.support.lazyfs_cli import REPO
from tests.support.processes import stop

pytestmark = pytest.mark.integration

EXIT_WAIT = 60.0  # seconds: a bound on a hang, far below the hour they used to stay


@contextlib.contextmanager
def mount_server(store: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A mount server for ``store``, listening, as ``mount_server_client`` starts one (an hour's
    idle); afterwards no server process of ``store``'s path, its spare's included, is left."""
    directory = server_client.server_dir(store)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = [sys.executable, "-P", "-m", server_client.SERVER_MODULE, "--dir", str(directory)]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:

        def listening() -> bool:
            assert process.poll() is None, log.read_text()
            return server_client.server_pid(directory) == process.pid

        wait_for(listening, "the mount server to listen", timeout=EXIT_WAIT)
        yield process
    finally:
        stop(process)
        for pid in mount_servers.processes(store):  # a spare left by a server killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            mount_servers.wait_gone(pid)


def exits(process: subprocess.Popen[bytes]) -> int:
    """The exit status of ``process``, which must end by itself (bounded by ``EXIT_WAIT``)."""
    try:
        return process.wait(timeout=EXIT_WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pid {process.pid} still runs {EXIT_WAIT:g}s later") from None


def test_a_mount_server_whose_store_is_deleted_exits(tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "server.log"
    with mount_server(store, log) as server:
        shutil.rmtree(store)
        assert exits(server) == 0
        assert f"{server_client.server_dir(store)} was removed: exiting" in log.read_text()
        # Its spare went with it.
        wait_for(lambda: not mount_servers.processes(store), "the spare to end")


def test_a_mount_server_whose_store_is_replaced_exits_and_leaves_the_new_ones_server(
    tmp_path: Path,
) -> None:
    store, log = tmp_path / "store", tmp_path / "server.log"
    directory = server_client.server_dir(store)
    with mount_server(store, log) as old:
        store.rename(tmp_path / "old-store")
        with mount_server(store, tmp_path / "new-server.log") as new:
            assert exits(old) == 0
            assert replaced(directory, log)
            # It took nothing of the directory now at its path with it.
            assert server_client.server_pid(directory) == new.pid
            assert server_client.stop_server(directory) == new.pid


def replaced(path: Path, log: Path) -> bool:
    """Whether ``log`` says its process exits for ``path``'s being gone, or another
    directory's being there (which it finds depends on when it looked)."""
    text = log.read_text()
    return any(f"{path} {why}: exiting" in text for why in ("is gone", "is another directory now"))


def daemon(
    work: Path, cache: Path, log: Path, *, as_service: bool = False
) -> subprocess.Popen[bytes]:
    """``lazyfs daemon --idle_exit`` as ``lazyfs.cli_daemon`` starts it (an hour), answering;
    ``as_service``: without, as a service manager runs it."""
    work.mkdir(parents=True, exist_ok=True)
    idle = [] if as_service else ["--idle_exit", "3600", "--first_idle", "3600"]
    argv = [*daemon_argv(work, cache), *idle]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            return daemon_status(cache) is not None

        wait_for(up, "the cache daemon to answer", timeout=EXIT_WAIT)
    except BaseException:
        stop(process)
        raise
    return process


def test_a_daemon_a_command_started_exits_when_its_cache_is_deleted(tmp_path: Path) -> None:
    work, log = tmp_path / "w", tmp_path / "daemon.log"
    cache = work / "cache"
    running = daemon(work, cache, log)
    try:
        shutil.rmtree(cache)
        assert exits(running) == service.GONE_STATUS
        assert f"cache directory {cache} was removed: exiting" in log.read_text()
    finally:
        stop(running)


def test_a_daemon_whose_cache_is_replaced_exits_and_leaves_the_new_ones_daemon(
    tmp_path: Path,
) -> None:
    work, log = tmp_path / "w", tmp_path / "daemon.log"
    cache = work / "cache"
    old = daemon(work, cache, log)
    try:
        cache.rename(work / "old-cache")
        new = daemon(work, cache, tmp_path / "new-daemon.log")
        try:
            assert exits(old) == service.GONE_STATUS
            assert replaced(cache, log)
            # Its socket and pid file, at the path it had, are the new daemon's: left alone.
            assert daemon_status(cache) is not None
            assert recorded_daemon(cache) == new.pid
        finally:
            stop(new)
    finally:
        stop(old)


def test_a_daemon_run_as_a_service_exits_failing_when_its_cache_is_deleted(
    tmp_path: Path,
) -> None:
    # Its manager restarts it on a fresh cache directory: serving none helps nobody.
    work, log = tmp_path / "w", tmp_path / "daemon.log"
    cache = work / "cache"
    running = daemon(work, cache, log, as_service=True)
    try:
        shutil.rmtree(cache)
        assert exits(running) == service.GONE_STATUS
        assert f"cache directory {cache} was removed: exiting" in log.read_text()
    finally:
        stop(running)
