"""Lazy rootfses under faults, with real processes: the daemon killed, the registry gone,
bytes spoiled on the way, a full cache, a restart on a warm cache.

Every container is ``lazyfs provision --backend fuse`` of an eStargz image
(``tests.support.estargz_workloads.WORKLOAD``: ``warm/`` files in its bottom layer,
``cold/`` files in its top one) from a loopback ``docker-registry``, often
through a proxy that counts, holds or spoils what crosses it
(``tests.support.counting_proxy``). Files are read through the FUSE mounts
as a container reads them. A mount keeps what it read in memory and the
kernel keeps pages, so "cached data" here is read by a second container
that never read it before: its bytes come from the daemon's cache files.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cache_daemons import daemon_status, wait_for
from tests.support.containerd import Containerd
from tests.support.counting_proxy import CountingProxy, run_counting_proxy
from tests.support.estargz_workloads import (
    COLD_FILES,
    WARM_FILES,
    WORKLOAD,
    WORKLOAD_FILES,
    Published,
    file_span,
    publish,
    sha,
)
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import chunk_bytes_on_disk, machine
from tests.support.registry_servers import Registry, copy_storage, run_registry

WARM = sorted(WARM_FILES)
COLD = sorted(COLD_FILES)
EIO = f"errno {errno.EIO}"


@pytest.fixture(scope="module")
def origin(
    containerd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Registry, Published]]:
    """A loopback registry holding the workload image as eStargz."""
    need_fuse()
    work = tmp_path_factory.mktemp("faults-registry")
    with run_registry(work, work / "storage") as registry:
        yield registry, publish(containerd, "workload", WORKLOAD, work / "image", registry.host)


def outcome(path: Path) -> str:
    """What reading ``path`` whole gave: the bytes' digest, or the error number."""
    try:
        return sha(path.read_bytes())
    except OSError as error:
        return f"errno {error.errno}"


def right(path: str) -> str:
    return sha(WORKLOAD_FILES[path])


def read_each(rootfs: Path, paths: list[str]) -> dict[str, str]:
    return {p: outcome(rootfs / p) for p in paths}


def expected(paths: list[str]) -> dict[str, str]:
    return {p: right(p) for p in paths}


def test_a_daemon_killed_mid_workload_fails_no_cached_read_and_misses_succeed_once_it_is_back(
    origin: tuple[Registry, Published], tmp_path: Path
) -> None:
    registry, image = origin
    proxy = CountingProxy()
    pool = ThreadPoolExecutor(8)
    try:
        with run_counting_proxy(registry.url, proxy) as host, machine(tmp_path / "work") as m:
            daemon = m.start_daemon()
            a, b = m.provision_at_once(["a", "b"], image.reference(host))
            # Container a makes the warm files cached; b has read nothing yet.
            assert read_each(a, WARM) == expected(WARM)

            # A miss of b is being fetched (held at the link) when the daemon dies.
            proxy.hold(image.layers[1])
            misses = {p: pool.submit(outcome, b / p) for p in COLD[:3]}
            wait_for(lambda: proxy.held(image.layers[1]) > 0, "a miss's fetch at the registry")
            reads: list[tuple[str, Future[str]]] = [
                (p, pool.submit(outcome, b / p)) for p in WARM[:8]
            ]
            wait_for(lambda: all(f.done() for _, f in reads), "the first cached reads")

            # More reads in flight as it dies: before, during or after, they must all succeed.
            reads += [(p, pool.submit(outcome, b / p)) for p in WARM[8:16]]
            m.kill_daemon(daemon)
            assert daemon_status(m.cache_dir) is None
            # The rest of the workload, with the daemon dead: cached files b
            # never read, read from the cache files, and again.
            reads += [(p, pool.submit(outcome, b / p)) for p in WARM[16:] + WARM]
            wait_for(lambda: all(f.done() for _, f in reads), "the cached reads")
            failed = [(p, f.result()) for p, f in reads if f.result() != right(p)]
            assert failed == [], f"{len(failed)} failed reads of cached data"
            # Still dead: none of that needed it. The misses wait for it.
            assert daemon_status(m.cache_dir) is None
            assert not any(f.done() for f in misses.values())
            wait_for(lambda: "unreachable" in m.mount_log("b"), "b's mount to log the wait")

            proxy.release()
            killed = proxy.mark()
            m.start_daemon()  # restarted by the test, as systemd would
            assert {p: f.result(timeout=120) for p, f in misses.items()} == expected(COLD[:3])
            # And a miss asked only now.
            assert read_each(b, COLD[3:5]) == expected(COLD[3:5])
            # The kill lost nothing of the cache: a new container reads the
            # warm files with no request for their layer.
            c = m.provision("c", image.reference(host))
            assert read_each(c, WARM) == expected(WARM)
            assert proxy.blob_requests([image.layers[0]], killed) == 0
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_a_stopped_registry_leaves_cached_files_readable_and_never_fetched_ones_eio(
    origin: tuple[Registry, Published], tmp_path: Path
) -> None:
    registry, image = origin
    storage = copy_storage(registry.storage, tmp_path / "storage")
    with run_registry(tmp_path / "registry", storage) as own, machine(tmp_path / "work") as m:
        a, b = m.provision_at_once(["a", "b"], image.reference(own.host))
        assert read_each(a, WARM) == expected(WARM)

        own.process.terminate()
        own.process.wait(timeout=30)

        # b never read the warm files: they come from the daemon's cache files.
        assert read_each(b, WARM) == expected(WARM)
        assert outcome(b / COLD[0]) == EIO
        # With its reason in the mount's log.
        log = m.mount_log("b")
        assert "answering EIO" in log and "cannot reach" in log, log


def _target(image: Published) -> tuple[str, int]:
    """A warm file, and the blob offset of a byte in the middle of its compressed chunk."""
    path = WARM[5]
    start, end = file_span(image.layer_blob(0), path)
    return path, (start + end) // 2


def test_a_chunk_corrupted_in_flight_is_never_served(
    origin: tuple[Registry, Published], tmp_path: Path
) -> None:
    registry, image = origin
    path, offset = _target(image)
    proxy = CountingProxy()
    proxy.corrupt(image.layers[0], offset, times=None)  # every time it crosses the link
    with run_counting_proxy(registry.url, proxy) as host, machine(tmp_path / "work") as m:
        a, b = m.provision_at_once(["a", "b"], image.reference(host))
        assert outcome(a / path) == EIO
        assert proxy.corrupted() >= 1
        # The spoiled byte is that file's alone: its neighbours read right.
        neighbours = [WARM[4], WARM[6]]
        assert read_each(a, neighbours) == expected(neighbours)
        # Nor does another mount, or a second try, ever get the wrong bytes.
        assert outcome(b / path) == EIO
        assert outcome(a / path) == EIO
        # Each EIO says why: the chunk of that file that did not verify.
        log = m.mount_log("a")
        assert "answering EIO" in log and f"of '{path}' in layer {image.layers[0]}" in log, log


def test_once_the_link_is_clean_a_corrupted_chunk_is_fetched_again_and_read_right(
    origin: tuple[Registry, Published], tmp_path: Path
) -> None:
    registry, image = origin
    path, offset = _target(image)
    proxy = CountingProxy()
    proxy.corrupt(image.layers[0], offset, times=1)
    with run_counting_proxy(registry.url, proxy) as host, machine(tmp_path / "work") as m:
        a = m.provision("a", image.reference(host))
        assert outcome(a / path) in (EIO, right(path))  # never wrong bytes
        assert proxy.corrupted() == 1
        # The link is clean now: a refetch gives the right bytes, to a and to a new mount.
        assert outcome(a / path) == right(path)
        b = m.provision("b", image.reference(host))
        assert outcome(b / path) == right(path)


def test_a_cache_filled_past_its_size_stays_under_it_on_disk_and_reads_succeed(
    origin: tuple[Registry, Published], tmp_path: Path
) -> None:
    registry, image = origin
    limit = 4 << 20
    # Twice the limit and more: the image's layers.
    assert image.layer_size(0) + image.layer_size(1) > 2 * limit
    with machine(tmp_path / "work") as m:
        m.start_daemon(cache_size="4MB")
        a = m.provision("a", image.reference(registry.host))
        for path in WARM + COLD:
            assert outcome(a / path) == right(path), path
            assert chunk_bytes_on_disk(m.cache_dir) <= limit
        # The first files were evicted to make room: a new mount reads them
        # again through the daemon, which fetches them again, still in bounds.
        b = m.provision("b", image.reference(registry.host))
        assert read_each(b, WARM) == expected(WARM)
        assert chunk_bytes_on_disk(m.cache_dir) <= limit
        found = daemon_status(m.cache_dir)
        assert found is not None
        assert found.limit_bytes == limit and found.used_bytes <= limit


def test_a_daemon_restarted_on_a_warm_cache_fetches_nothing_again(
    origin: tuple[Registry, Published], tmp_path: Path
) -> None:
    # Stopped as systemd restarts it; the SIGKILL test above restarts it after a crash.
    registry, image = origin
    proxy = CountingProxy()
    with run_counting_proxy(registry.url, proxy) as host, machine(tmp_path / "work") as m:
        daemon = m.start_daemon()
        a = m.provision("a", image.reference(host))
        everything = WARM + COLD
        assert read_each(a, everything) == expected(everything)
        before = daemon_status(m.cache_dir)
        assert before is not None and before.fetches > 0
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)

        since = proxy.mark()
        m.start_daemon()
        b = m.provision("b", image.reference(host))
        assert read_each(b, everything) == expected(everything)
        assert proxy.blob_requests(image.layers, since) == 0
        after = daemon_status(m.cache_dir)
        assert after is not None
        assert (after.fetches, after.chunks) == (0, before.chunks)
