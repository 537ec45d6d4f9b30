"""What a lazy mount asked the registry and the daemon for: a recording proxy and its record.

``proxied`` puts ``tests.support.fault_proxy`` in front of a loopback
registry, ``ranges_of`` reads the Range requests it saw for a blob, and
``settled`` waits for the cache daemon's fetches to land. ``many_files_blob``
is an eStargz layer whose TOC needs the footer's say to be read whole.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

from lazyfs.cache.client import status
from lazyfs.cache.messages import StatusOk
from tests.support.cache_daemons import daemon_status, wait_for
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.fault_proxy import Faults, run_proxy
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
