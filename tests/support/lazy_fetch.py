"""What a lazy mount asked the registry and the daemon for: a recording proxy and its record.

``proxied`` puts ``tests.support.fault_proxy`` in front of a loopback
registry, ``ranges_of`` reads the Range requests it saw for a blob, and
``settled`` waits for the cache daemon's fetches to land. ``many_files_blob``
is an eStargz layer whose TOC needs the footer's say to be read whole.
``provisioned`` is a fuse provision through the CLI, destroyed afterwards;
``wait_adopted`` waits for the process a lazy start leaves to copy its
complete layers into the store.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lazyfs.cache.client import status
from lazyfs.cache.messages import StatusOk
from providers.fslock import try_exclusive_lock
from tests.support.cache_daemons import daemon_status, kill_recorded, wait_for
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.fault_proxy import Faults, run_proxy
from tests.support.lazy_images import lazyfs
from tests.support.registry_servers import Registry


@contextlib.contextmanager
def proxied(registry: Registry) -> Iterator[tuple[str, Faults]]:
    """A recording proxy in front of ``registry``: its host, and its record."""
    faults = Faults()
    with run_proxy(registry.url, faults) as url:
        yield url.removeprefix("http://"), faults


def ranges_of(faults: Faults, digest: str) -> list[tuple[int, int]]:
    """The (first, last) byte of every Range request the proxy saw for blob ``digest``."""
    found = []
    with faults.lock:
        seen = list(faults.seen)
    for path, headers in seen:
        if path.endswith(f"/blobs/{digest}") and "Range" in headers:
            first, last = headers["Range"].removeprefix("bytes=").split("-")
            found.append((int(first), int(last)))
    return found


def settled(cache_dir: Path) -> StatusOk:
    """The daemon's status once no fetch is in flight."""

    def idle() -> bool:
        found = daemon_status(cache_dir)
        return found is not None and found.fetches_in_flight == 0

    wait_for(idle, "the daemon's fetches to land")
    found = status(cache_dir)
    return found


def many_files_blob(seed: int = 1) -> Blob:
    """A layer whose TOC is bigger than a first small tail and far smaller than 1 MiB, after
    a 2 MiB file: a tail read generously would bring much of what lies before the TOC."""
    rng = random.Random(seed)
    files = [File("big", rng.randbytes(2 << 20)), File("many", type="dir", mode=0o755)]
    files += [File(f"many/{rng.randbytes(8).hex()}", rng.randbytes(64)) for _ in range(3000)]
    return write_estargz(files)


@contextlib.contextmanager
def provisioned(
    work: Path, host: str, image: str, container: str = "c1", *, background: bool
) -> Iterator[dict[str, Any]]:
    """``lazyfs provision --backend fuse``; destroyed, and its daemon ended, afterwards."""
    url = f"http://{host}"
    try:
        done = lazyfs(work, url, "provision", container, f"docker:{host}/{image}",
                      "--backend", "fuse", background=background)  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield json.loads(done.stdout)
    finally:
        gone = lazyfs(work, url, "destroy", container)
        kill_recorded(work / "cache")
        assert gone.returncode == 0, gone.stderr


def wait_adopted(work: Path, layers: Sequence[str]) -> None:
    """Wait (bounded) until ``layers`` are in the store and no process is adopting any image."""
    store = work / "store" / "docker"

    def adopted() -> bool:
        if not all(
            (store / "blobs" / "sha256" / d.removeprefix("sha256:")).is_file() for d in layers
        ):
            return False
        for lock in (store / "locks").glob("adopt-*.lock"):
            with try_exclusive_lock(lock) as free:
                if not free:
                    return False
        return True

    wait_for(adopted, "the complete layers to be copied into the store", timeout=120)
