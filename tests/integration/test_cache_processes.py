"""The cache daemon and its clients as real processes, over a loopback registry.

Each reader is a process of its own (``tests.support.cache_reader``), as a
mount is; the daemon is ``lazyfs daemon``, as systemd runs it, or started by
the first user that needs it. What the daemon did is read from its status
message: ``reads`` (requests that reached it) and ``fetches`` (requests it
sent upstream).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cache.layout import CHUNK_SIZE
from lazyfs.cache.spawn import SPEC_NAME, DaemonSpec, answers, ensure_daemon, started_as
from tests.support.cache_daemons import (
    ROOT,
    GatedProxy,
    daemon_argv,
    daemon_status,
    kill_recorded,
    recorded_daemon,
    run_daemon,
    run_gated_proxy,
    wait_for,
)
from tests.support.cache_reader import argv, expected, read_ranges
from tests.support.registry_servers import Registry, push_blob_image, run_registry

REPOSITORY = "cache/blob"
# Four chunks and a bit: the blob's last chunk is short.
DATA = os.urandom(4 * CHUNK_SIZE + 1000)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, str]]:
    work = tmp_path_factory.mktemp("cache-registry")
    with run_registry(work, work / "storage") as running:
        digest = push_blob_image(running, REPOSITORY, "v1", DATA)
        yield running, digest


def _reader(cache_dir: Path, digest: str, host: str, ranges: list[tuple[int, int]], **kw: float):
    return read_ranges(cache_dir, digest, host, REPOSITORY, len(DATA), ranges, **kw)


def test_hits_are_read_from_the_files_without_asking_the_daemon(
    tmp_path: Path, registry: tuple[Registry, str]
) -> None:
    server, digest = registry
    cache_dir = tmp_path / "cache"
    with run_daemon(tmp_path / "work", cache_dir):
        first = [(0, 2 * CHUNK_SIZE + 10)]
        assert _reader(cache_dir, digest, server.host, first) == [
            expected(DATA, 0, 2 * CHUNK_SIZE + 10)
        ]
        after_miss = daemon_status(cache_dir)
        assert after_miss is not None
        assert (after_miss.reads, after_miss.fetches) == (1, 1)
        assert after_miss.chunks == 3

        # Inside the cached chunks, from another process: no request reaches the daemon.
        hits = [(5, 100), (CHUNK_SIZE - 50, 2 * CHUNK_SIZE), (2 * CHUNK_SIZE, 7)]
        assert _reader(cache_dir, digest, server.host, hits) == [expected(DATA, *r) for r in hits]
        after_hits = daemon_status(cache_dir)
        assert after_hits is not None
        assert (after_hits.reads, after_hits.fetches) == (1, 1)

        # Past the cached chunks, up to the blob's short end: one more read.
        tail = [(3 * CHUNK_SIZE, 2 * CHUNK_SIZE)]
        assert _reader(cache_dir, digest, server.host, tail) == [expected(DATA, *tail[0])]
        last = daemon_status(cache_dir)
        assert last is not None and last.reads == 2


def test_concurrent_misses_of_two_readers_make_one_upstream_fetch(
    tmp_path: Path, registry: tuple[Registry, str]
) -> None:
    server, digest = registry
    cache_dir = tmp_path / "cache"
    proxy = GatedProxy()
    wanted = [(CHUNK_SIZE + 3, CHUNK_SIZE)]
    with run_gated_proxy(server.url, proxy) as host, run_daemon(tmp_path / "work", cache_dir):
        readers = []
        try:
            for count in (1, 2):
                readers.append(
                    subprocess.Popen(
                        argv(cache_dir, digest, host, REPOSITORY, len(DATA), wanted),
                        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    )
                )  # fmt: skip

                def arrived(count: int = count) -> bool:
                    found = daemon_status(cache_dir)
                    return found is not None and found.reads == count

                wait_for(arrived, f"read request {count} at the daemon")
            # Both wait on the one fetch the proxy holds.
            assert proxy.blob_requests() == 1
            proxy.gate.set()
            for reader in readers:
                out, err = reader.communicate(timeout=60)
                assert reader.returncode == 0, err
                assert [json.loads(line) for line in out.splitlines()] == [
                    expected(DATA, *wanted[0])
                ]
        finally:
            proxy.gate.set()
            for reader in readers:
                if reader.poll() is None:
                    reader.kill()
                reader.wait()
        found = daemon_status(cache_dir)
        assert found is not None and found.fetches == 1
    assert proxy.blob_requests() == 1


def test_a_killed_daemon_leaves_cached_reads_working_and_misses_waiting(
    tmp_path: Path, registry: tuple[Registry, str]
) -> None:
    server, digest = registry
    cache_dir, work = tmp_path / "cache", tmp_path / "work"
    cached = [(0, CHUNK_SIZE)]
    miss = [(3 * CHUNK_SIZE, 100)]
    with run_daemon(work, cache_dir) as daemon:
        assert _reader(cache_dir, digest, server.host, cached) == [expected(DATA, *cached[0])]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    assert not answers(cache_dir)

    # Cached: read from the files as before. A miss: an error after the wait.
    both = _reader(cache_dir, digest, server.host, [*cached, *miss], wait=0.5)
    assert both[0] == expected(DATA, *cached[0])
    assert both[1]["ok"] is False
    assert "did not answer within 0.5s" in both[1]["error"]

    # A miss that waits while the daemon comes back is served.
    waiting = subprocess.Popen(
        argv(cache_dir, digest, server.host, REPOSITORY, len(DATA), miss, wait=60),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert waiting.stderr is not None
        line = waiting.stderr.readline()  # the client's warning: it is waiting now
        assert "unreachable" in line, line
        with run_daemon(work, cache_dir):
            out, err = waiting.communicate(timeout=60)
            assert waiting.returncode == 0, err
            assert [json.loads(x) for x in out.splitlines()] == [expected(DATA, *miss[0])]
            found = daemon_status(cache_dir)
            # The restarted daemon kept the chunk cached before: it fetched only the miss.
            assert found is not None and found.chunks == 2 and found.fetches == 1
    finally:
        if waiting.poll() is None:
            waiting.kill()
        waiting.wait()


def test_a_daemon_a_command_started_is_started_again_by_the_next_miss(
    tmp_path: Path, registry: tuple[Registry, str]
) -> None:
    # Killed, crashed, or exited idle under a mount it never knew: the mount brings it back.
    server, digest = registry
    cache_dir, work = tmp_path / "cache", tmp_path / "work"
    cached = [(0, CHUNK_SIZE)]
    miss = [(3 * CHUNK_SIZE, 100)]
    try:
        ensure_daemon(_spec(work, cache_dir))
        first = recorded_daemon(cache_dir)
        assert first is not None
        assert _reader(cache_dir, digest, server.host, cached) == [expected(DATA, *cached[0])]
        kill_recorded(cache_dir)
        assert not answers(cache_dir)

        assert _reader(cache_dir, digest, server.host, miss, wait=60) == [expected(DATA, *miss[0])]
        again = recorded_daemon(cache_dir)
        assert again is not None and again != first
        found = daemon_status(cache_dir)
        # Started as the command started it: the same cache, which kept the chunk read before.
        assert found is not None and found.chunks == 2 and found.fetches == 1
    finally:
        kill_recorded(cache_dir)


def test_a_daemon_run_as_a_service_leaves_no_mount_a_way_to_start_another(
    tmp_path: Path,
) -> None:
    # What a command's start left: a service's daemon is its manager's to start and stop.
    cache_dir, work = tmp_path / "cache", tmp_path / "work"
    cache_dir.mkdir(mode=0o700)
    (cache_dir / SPEC_NAME).write_text(json.dumps({"command": ["/bin/true"], "env": {}}))
    with run_daemon(work, cache_dir):
        assert started_as(cache_dir) is None


def test_lazyfs_daemon_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with run_daemon(tmp_path / "work", cache_dir) as daemon:
        assert recorded_daemon(cache_dir) == daemon.pid
        assert (cache_dir / "daemon.sock").exists()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    assert not (cache_dir / "daemon.sock").exists()
    assert not (cache_dir / "daemon.pid").exists()
    log = (tmp_path / "work" / "daemon-0.log").read_text()
    assert "SIGTERM: stopping" in log and "Traceback" not in log


def test_a_second_daemon_on_the_same_cache_is_refused(tmp_path: Path) -> None:
    cache_dir, work = tmp_path / "cache", tmp_path / "work"
    with run_daemon(work, cache_dir):
        second = subprocess.run(
            daemon_argv(work, cache_dir), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert second.stderr.strip().splitlines() == [
            f"lazyfs: the cache at {cache_dir} is in use by another lazyfs daemon"
        ]
        assert daemon_status(cache_dir) is not None


def _spec(work: Path, cache_dir: Path) -> DaemonSpec:
    # What cli_daemon.daemon_spec makes: the command, and the flags in the environment.
    env = {"LAZYFS_WORK_DIR": str(work), "LAZYFS_CACHE_DIR": str(cache_dir),
           "LAZYFS_CACHE_SIZE": "64MB", "PYTHONPATH": str(ROOT)}  # fmt: skip
    return DaemonSpec(cache_dir, (*daemon_argv(work, cache_dir)[:3], "daemon"), env)


def test_the_first_user_starts_the_daemon_once_and_a_stale_socket_is_replaced(
    tmp_path: Path,
) -> None:
    cache_dir, work = tmp_path / "cache", tmp_path / "work"
    spec = _spec(work, cache_dir)
    try:
        # Left by a daemon that died: a socket file nobody answers on.
        with run_daemon(work, cache_dir) as old:
            old.send_signal(signal.SIGKILL)
            old.wait()
        assert (cache_dir / "daemon.sock").exists() and not answers(cache_dir)

        # Two users at once (threads here; the lock is a file lock, across processes too).
        errors: list[BaseException] = []

        def user() -> None:
            try:
                ensure_daemon(spec)
            except BaseException as error:
                errors.append(error)

        users = [threading.Thread(target=user) for _ in range(2)]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join()
        assert errors == []
        assert answers(cache_dir)
        started = recorded_daemon(cache_dir)
        assert started is not None
        log = (cache_dir / "daemon.log").read_text()
        assert log.count("cache daemon serving on") == 1, log
        assert "in use by another" not in log

        # A later user finds it running and starts nothing.
        ensure_daemon(spec)
        assert recorded_daemon(cache_dir) == started
        # Detached: its own session, not the test's.
        assert os.getsid(started) == started
    finally:
        kill_recorded(cache_dir)


def test_a_blob_in_two_repositories_is_read_from_each_origin_as_named(
    tmp_path: Path, registry: tuple[Registry, str]
) -> None:
    server, digest = registry
    cache_dir = tmp_path / "cache"
    with run_daemon(tmp_path / "work", cache_dir):
        # The blob is in REPOSITORY only. A mount naming another repository
        # for it fails; the daemon must not then send REPOSITORY's reads there.
        first = [(0, 100)]
        assert _reader(cache_dir, digest, server.host, first) == [expected(DATA, 0, 100)]
        elsewhere = read_ranges(
            cache_dir, digest, server.host, "cache/other", len(DATA), [(CHUNK_SIZE, 100)]
        )
        assert elsewhere[0]["ok"] is False
        later = [(2 * CHUNK_SIZE, 100)]
        assert _reader(cache_dir, digest, server.host, later) == [expected(DATA, *later[0])]
