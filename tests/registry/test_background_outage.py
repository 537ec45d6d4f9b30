"""A background fetch the registry went away from goes on by itself once it is back.

A lazy mount (real FUSE, through the real command, its cache daemon
started by the mount) of an eStargz image with one layer of a few MiB,
from a loopback registry through a gate proxy (``tests.support.gate_proxy``).
The proxy holds the background fetch's request for the chunk at the
blob's first MiB, so the test knows the fetch is under way; the registry is then
stopped, and the held request and the client's retries find it gone. The
daemon's background job waits (before: it gave the blob up, partial until
another mount asked). The registry is started again on the same port with
the same storage, and, with no new mount and no read, the layer becomes
complete in the cache, its first MiB not asked for again, and is adopted
into the store.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from lazyfs.cache.blobstate import COMPLETE, read_verdict
from lazyfs.cache.layout import CHUNK_SIZE
from lazyfs.cache.values import BlobInfo, BlobKind
from providers.digest import Digest
from tests.support.cache_daemons import daemon_status, wait_for
from tests.support.estargz_writer import File, write_estargz
from tests.support.fuse_mounts import need_fuse
from tests.support.gate_proxy import Gate, run_gate_proxy
from tests.support.lazy_images import push_estargz_image
from tests.support.lazy_machine import machine
from tests.support.processes import stop
from tests.support.registry_servers import Registry, run_registry

LAYER = write_estargz(
    [File("data", type="dir", mode=0o755), File("data/big", os.urandom(3 << 20))],
    chunk_size=512 << 10,
)
HELD_FROM = 16 * CHUNK_SIZE  # past the background's first requests: their chunks are cached
BOUND = 120.0  # seconds: a bound on a hang, not a timing


def _blob(cache_dir: Path, digest: str) -> BlobInfo | None:
    """What the daemon says of blob ``digest`` (a status request: it fetches nothing)."""
    found = daemon_status(cache_dir)
    return next((b for b in found.blobs if b.digest == digest), None) if found else None


@contextmanager
def started_again(registry: Registry, workdir: Path) -> Iterator[None]:
    """``registry`` (stopped) started again: same config, so the same port and storage."""
    port = registry.host.rpartition(":")[2]
    config = workdir / f"registry-{port}.yml"  # as ``run_registry`` wrote it
    with open(workdir / f"registry-{port}-again.log", "wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:

        def answers() -> bool:
            assert process.poll() is None, "docker-registry exited when started again"
            try:
                return requests.get(f"{registry.url}/v2/", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(answers, "the registry to answer again", timeout=BOUND)
        yield
    finally:
        stop(process)


def test_a_background_fetch_cut_by_a_registry_outage_completes_once_it_is_back(
    tmp_path: Path,
) -> None:
    need_fuse()
    with run_registry(tmp_path / "registry", tmp_path / "storage") as registry:
        pushed = push_estargz_image(registry.url, "lazy/outage", "v1", [LAYER])
        (digest,) = pushed.layers
        # Only a request from that chunk on: the mount's own reads are of the blob's tail.
        gate = Gate(digest, HELD_FROM, HELD_FROM + CHUNK_SIZE)
        with (
            run_gate_proxy(registry.url, gate) as host,
            machine(tmp_path / "work", background_fetch=True) as m,
        ):
            gate.close()
            m.provision("c", f"docker:{host}/lazy/outage:v1")
            wait_for(gate.arrived.is_set, "the background fetch past the held byte", BOUND)
            stop(registry.process)  # the registry goes away mid-fetch
            gate.release()
            wait_for(lambda: bool(getattr(_blob(m.cache_dir, digest), "reason", "")),
                     "the background fetch to fail", BOUND)  # fmt: skip
            failed = _blob(m.cache_dir, digest)
            # Before: PARTIAL with the failure, and nothing more until a mount asked.
            assert failed is not None and failed.kind is BlobKind.FETCHING, failed
            assert "waiting for its origin" in failed.reason, failed
            since = gate.mark()
            with started_again(registry, tmp_path / "registry"):
                wait_for(lambda: _complete(m.cache_dir, digest), "the layer's verdict", BOUND)
            # The chunks fetched before the outage were kept, not asked for again.
            again = gate.starts(since)
            assert again and all(s is not None and s >= HELD_FROM for s in again), again
            done = _blob(m.cache_dir, digest)
            assert done is not None and done.kind is BlobKind.COMPLETE, done
            # And the process the provision left copies it into the store, as it waited to.
            stored = m.work / "store" / "docker" / "blobs" / "sha256" / digest.partition(":")[2]
            wait_for(stored.is_file, "the layer adopted into the store", BOUND)


def _complete(cache_dir: Path, digest: str) -> bool:
    verdict = read_verdict(cache_dir, Digest(digest))
    return verdict is not None and verdict.state == COMPLETE
