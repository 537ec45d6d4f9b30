"""``lazyfs gc``: one image GC pass (``lazyfs.gc.collect``), its report as JSON.

``--image_gc_config`` (Mesos' ``ImageGcConfig``, ``lazyfs.gc.config``)
gives the headroom and the images to keep; without it, Mesos' defaults.
The report: what was removed (images, layers with the bytes each freed,
stale leftovers), layers left because they were busy, the filesystem's
free and total bytes after, the headroom and whether it was reached.  Not
reached (all that is left is in use or excluded): one line on stderr and
status 1, as for any failure.

The cache daemon's chunks of the layers a pass, ``images rm`` or ``prune``
removed go too, before the pass lets go of the store (``CachedChunks``,
``lazyfs.cache.forget``): nothing names
those blobs any more. ``gc`` counts them in its JSON (``cache_freed``), ``rm``
and ``prune`` in the total they print, saying how much of it they were.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.cli_flags import cache_dir, source
from lazyfs.gc.collect import Report, gc_pass
from lazyfs.gc.config import GcConfig, parse_gc_config
from lazyfs.progress import human_size
from lazyfs.store.disk import Store

if TYPE_CHECKING:
    from lazyfs.cache.forget import Forgotten
    from providers.digest import Digest


def gc_config(args: argparse.Namespace) -> GcConfig | None:
    """``--image_gc_config`` as read, or None when not given."""
    text: str | None = getattr(args, "image_gc_config", None)
    if text is None:
        return None
    return parse_gc_config(text, source(args, "image_gc_config"))


def run_gc(
    args: argparse.Namespace,
    store: Callable[[], Store],
    work_dir: Path,
    *,
    stale_tree: Callable[[str], bool],
) -> int:
    config = gc_config(args) or GcConfig()
    chunks = CachedChunks(args)
    report = gc_pass(store(), work_dir, config, stale_tree=stale_tree, removed=chunks)
    cached = chunks.forgotten
    print(json.dumps({**report_json(report), "cache_freed": cached.freed}, indent=1))
    _say_left(cached)
    if not report.reached:
        after = report.after or report.before
        share = after.free / after.total if after.total else 0.0
        print(
            f"lazyfs: the store's filesystem has {human_size(after.free)} free of "
            f"{human_size(after.total)} ({share:.0%}), less than the headroom "
            f"{config.headroom:.0%}: the rest is in use or excluded",
            file=sys.stderr,
        )
        return 1
    return 0


def report_json(report: Report) -> dict[str, object]:
    after = report.after or report.before
    return {
        "removed_images": report.images,
        "removed_layers": [{"digest": d, "bytes": n} for d, n in report.layers],
        "stale": report.stale,
        "busy_layers": list(report.skipped),
        "freed": report.freed,
        "free": after.free,
        "total": after.total,
        "headroom": report.headroom,
        "reached": report.reached,
    }


class CachedChunks:
    """GC's ``removed``: lets go of the cache's chunks of the layers a pass removed, while it
    holds the store, so that no start may want them again first. Blocking."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._cache_dir = cache_dir(args)
        self.forgotten = _nothing()

    def __call__(self, digests: list[Digest]) -> None:
        try:
            if not self._cache_dir.is_dir():
                return  # no cache, nothing of them in it: no cache code to load
        except OSError:
            pass  # ``forget`` says why
        from lazyfs.cache.forget import forget

        self.forgotten = forget(self._cache_dir, digests)


def _nothing() -> Forgotten:
    from lazyfs.cache.forget import Forgotten

    return Forgotten()


def print_removed(report: Report, cached: Forgotten | None = None) -> None:
    """``images rm`` and ``prune``: a line per removal, as docker rmi and prune print them;
    then the bytes freed, the ``cached`` chunks' among them (said apart: they are of the
    cache, bounded by ``--cache_size``, and maybe on another filesystem than the store)."""
    for name in report.images:
        print(f"removed image {name}")
    for digest, size in report.layers:
        print(f"removed layer {digest} ({human_size(size)})")
    for path in report.stale:
        print(f"removed leftover {path}")
    for digest in report.skipped:
        print(f"kept layer {digest}: busy (being extracted or indexed)", file=sys.stderr)
    if cached is not None:
        _say_left(cached)
    if cached is None or not cached.freed:
        print(f"freed {human_size(report.freed)}")
        return
    total = human_size(report.freed + cached.freed)
    print(f"freed {total} ({human_size(cached.freed)} of it cached chunks)")


def _say_left(cached: Forgotten) -> None:
    if cached.left is not None:
        print(f"lazyfs: the removed layers' cached chunks stay until the cache evicts them: "
              f"{cached.left}", file=sys.stderr)  # fmt: skip
