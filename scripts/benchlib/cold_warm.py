"""The warm start of the eStargz image: after a lazy start whose layers have all arrived.

``lazyfs fuse (eStargz, warm)``: on a new work dir, store and cache, an
untimed lazy ``lazyfs run`` of the eStargz image, through the link (not
counted); then a wait until its cache daemon has fetched every layer in
the background and the process that start left has copied them into the
store (``lazyfs.provision.adopt``); then the daemon is stopped (so that
process ends) and the same ``lazyfs run`` is run once more, untimed, now
of an image the store holds whole: it leaves a cache daemon and the
store's mount server running, as the gzip warm row's pull does
(``benchlib.cold_index``).  Then the same ``lazyfs run`` is timed as that
row's is (``benchlib.cold_run.warm_until_printed``: once both answer, after
a ``sync``, the page cache kept).  Issue 12's target: no slower than a warm
start of the plain image, ``lazyfs fuse (gzip, warm)``.  A timed start that
finds a layer not in the store, sends a byte over the link or fetches
through the daemon is refused: it would be another row's figure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from benchlib.cold_run import lazyfs_argv, lazyfs_untimed_on, stop_leftovers, warm_until_printed
from benchlib.measure import Context, Timing
from benchlib.shaper import Shaper
from benchlib.util import ToolError, scratch_dir
from lazyfs.cache.connection import status
from lazyfs.cache.framing import ProtocolError
from lazyfs.cache.values import BlobKind

NAME = "lazyfs fuse (eStargz, warm)"
_ARRIVAL_TIMEOUT = 600.0


def estargz_warm_once(
    ctx: Context, link: Shaper, reference: str, image_bytes: int
) -> Callable[[], Timing]:
    """A ``once`` timing the row's ``lazyfs run`` (see the module docstring)."""

    def once() -> Timing:
        with scratch_dir(ctx.scratch, "cold-estargz-warm-") as work:
            try:
                argv = lazyfs_argv(ctx, work, link.host, reference, "fuse")
                lazyfs_untimed_on(work, argv)
                _wait_local(work)
                stop_leftovers(work)
                lazyfs_untimed_on(work, argv)  # leaves a daemon and a mount server running
                timing = warm_until_printed(ctx, argv, work, link, image_bytes, drop=False)
                missing = _not_in_store(work)
            finally:
                stop_leftovers(work)
        if missing or timing.facts.get("daemon_requests"):
            raise ToolError(f"not a warm start: {missing} not in the store, {timing.facts}")
        return timing

    return once


def _wait_local(work: Path) -> None:
    """Until every layer of the work dir's images is in its store (bounded)."""
    deadline = time.monotonic() + _ARRIVAL_TIMEOUT
    while _not_in_store(work):
        if time.monotonic() > deadline:
            raise ToolError(f"the layers did not arrive: {_fetching(work)}")
        time.sleep(0.2)


def _not_in_store(work: Path) -> list[str]:
    store = work / "store" / "docker"
    layers = []
    for record in (store / "images").glob("*.json"):
        layers += [layer["digest"] for layer in json.loads(record.read_text())["layers"]]
    if not layers:
        return ["(no image)"]
    return [d for d in layers if not (store / "blobs" / d.replace(":", "/")).is_file()]


def _fetching(work: Path) -> str:
    try:
        found = status(work / "cache")
    except (OSError, ProtocolError) as error:
        return f"no daemon answers: {error}"
    return ", ".join(f"{b.digest[:19]} {BlobKind(b.kind).name}" for b in found.blobs)
