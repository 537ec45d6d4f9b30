"""``lazyfs gc``: one image GC pass (``lazyfs.gc.collect``), its report as JSON.

``--image_gc_config`` (Mesos' ``ImageGcConfig``, ``lazyfs.gc.config``)
gives the headroom and the images to keep; without it, Mesos' defaults.
The report: what was removed (images, layers with the bytes each freed,
stale leftovers), layers left because they were busy, the filesystem's
free and total bytes after, the headroom and whether it was reached.  Not
reached (all that is left is in use or excluded): one line on stderr and
status 1, as for any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lazyfs.cli_flags import source
from lazyfs.gc.collect import Report, gc_pass
from lazyfs.gc.config import GcConfig, parse_gc_config
from lazyfs.progress import human_size
from lazyfs.store.disk import Store


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
    report = gc_pass(store(), work_dir, config, stale_tree=stale_tree)
    print(json.dumps(report_json(report), indent=1))
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


def print_removed(report: Report) -> None:
    """``images rm`` and ``prune``: a line per removal, as docker rmi and prune print them."""
    for name in report.images:
        print(f"removed image {name}")
    for digest, size in report.layers:
        print(f"removed layer {digest} ({human_size(size)})")
    for path in report.stale:
        print(f"removed leftover {path}")
    for digest in report.skipped:
        print(f"kept layer {digest}: busy (being extracted or indexed)", file=sys.stderr)
    print(f"freed {human_size(report.freed)}")
