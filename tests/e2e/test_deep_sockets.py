"""The cache daemon and the mount server in directories whose sockets' paths pass 107 bytes.

A Unix socket's address holds 107 bytes of path: a work dir or cache dir a
little deep used to end the daemon with "AF_UNIX path too long". Real
processes: ``lazyfs daemon`` and ``lazyfs cache``; then ``lazyfs mount`` of
an eStargz image in a loopback ``docker-registry``, its mount process forked
by the store's mount server and reading through the daemon the mount starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cache.layout import socket_path
from lazyfs.fs import mount_server_client as server_client
from lazyfs.fs.mount import is_mounted
from providers.unix_address import MAX_PATH
from tests.support import mount_servers
from tests.support.cache_daemons import daemon_status, kill_recorded, run_daemon
from tests.support.estargz_writer import File, write_estargz
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_images import lazyfs, push_estargz_image
from tests.support.registry_servers import Registry, run_registry

pytestmark = pytest.mark.integration

DATA = os.urandom(3 << 20)
LAYER = write_estargz(
    [File("data", type="dir", mode=0o755), File("data/big", DATA)], chunk_size=512 << 10
)


def deep(tmp_path: Path) -> Path:
    """A directory under ``tmp_path`` whose sockets' paths cannot be a Unix socket's address."""
    return tmp_path / ("d" * 60) / ("e" * 60)


def test_a_daemon_in_a_deep_cache_dir_listens_and_answers(tmp_path: Path) -> None:
    cache = deep(tmp_path) / "cache"
    assert len(bytes(socket_path(cache))) > MAX_PATH
    with run_daemon(tmp_path / "work", cache):  # fails unless it answers a status request
        status = daemon_status(cache)
        assert status is not None and status.chunks == 0
        shown = lazyfs(tmp_path / "work", "http://127.0.0.1:1", "cache", "--cache_dir", str(cache))
        assert shown.returncode == 0, shown.stderr
        assert "(daemon running" in shown.stdout.splitlines()[0], shown.stdout
    assert not socket_path(cache).exists()  # removed as it stopped


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("deep-sockets-registry")
    with run_registry(work, work / "storage") as running:
        push_estargz_image(running.url, "deep/sockets", "v1", [LAYER])
        yield running


def test_a_lazy_mount_with_a_deep_work_dir_reads_through_the_server_and_the_daemon(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_fuse()
    monkeypatch.setenv(server_client.ENV, "1")  # the mount server or a failure, no exec
    work, mountpoint = deep(tmp_path) / "work", tmp_path / "mnt"
    store, cache = work / "store" / "docker", work / "cache"
    mountpoint.mkdir()
    assert len(bytes(socket_path(cache))) > MAX_PATH
    assert len(bytes(server_client.server_dir(store) / server_client.SOCKET_NAME)) > MAX_PATH
    ref = f"docker:{registry.host}/deep/sockets:v1"
    try:
        done = lazyfs(work, registry.url, "mount", ref, str(mountpoint), background=False)
        assert done.returncode == 0, done.stderr
        pid = json.loads(done.stdout)["pid"]
        assert mount_servers.parent(pid) == mount_servers.server_of(store)
        # Not prefetched, not fetched in the background: the daemon fetches it now.
        assert (mountpoint / "data" / "big").read_bytes() == DATA
        status = daemon_status(cache)
        assert status is not None and status.reads > 0 and status.fetched_bytes > 0
        gone = lazyfs(work, registry.url, "umount", str(mountpoint))
        assert gone.returncode == 0, gone.stderr
    finally:
        if is_mounted(mountpoint):
            lazyfs(work, registry.url, "umount", str(mountpoint))
        kill_recorded(cache)
        mount_servers.stop(store)
    assert not is_mounted(mountpoint)
