"""``lazyfs mount`` and ``lazyfs umount``: an image's merged tree at a directory, to look inside.

``mount`` prints the mount as JSON once it is up (with ``--json``, as the
listing below gives it: one object of the same fields); with ``--foreground`` it
then copies the mount process's log to stderr until the mount goes away,
and unmounts on Ctrl-C or SIGTERM (exit 0).  The mounting itself is
``lazyfs.provision.devmount``'s.

``mount`` with neither IMAGE nor MOUNTPOINT lists this work dir's mounts
(``lazyfs.provision.devmount_list``), as a table or with ``--json`` as JSON,
as ``podman image mount`` does; like ``ps``, it creates nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from lazyfs.cli_run import run_handed_over, run_trio
from lazyfs.fs import mount as lazy_mount
from lazyfs.progress import Progress
from lazyfs.provision import devmount, devmount_list
from lazyfs.store.usage_lock import in_use
from providers.errors import Conflict, NotFound

if TYPE_CHECKING:
    from lazyfs.provision.provisioner import Provisioner
    from lazyfs.store.disk import Store
    from providers.image_pb2 import Image

_HEADER = ("IMAGE", "MOUNTPOINT", "MODE", "STATE")  # the listing's, as `podman image mount`


def run_mount(
    args: argparse.Namespace,
    image: Image,
    store: Callable[[], Store],
    provisioner: Callable[[], Provisioner],
    work_dir: Path,
) -> int:
    """``lazyfs mount IMAGE MOUNTPOINT``: exit status 0, or raises what the CLI words."""
    # Held shared until the mount process serves the layers (GC then sees them).
    # Once it is up, a Ctrl-C ends nothing but a --foreground mount (unmounted then).
    run = run_trio if args.foreground else run_handed_over
    with in_use(store().root):
        mounted = run(
            lambda: devmount.mount_image(
                provisioner(),
                work_dir,
                image,
                args.mountpoint,
                writable=args.writable,
                debug=args.debug,
                suid=args.suid,
                dev=args.dev,
                progress=Progress(),
            )
        )
    summary = {
        "mountpoint": str(mounted.mountpoint),
        "pid": mounted.pid,
        "writable": mounted.writable,
        "image": {
            "reference": mounted.image.reference,
            "digest": mounted.image.digest,
            "layers": [layer.digest for layer in mounted.image.layers],
        },
    }
    if args.json:
        # Read back from its record, as ``lazyfs mount --json`` lists it: a script reads
        # one shape, whichever it asked.
        summary = devmount_list.described(mounted.record)
    print(json.dumps(summary, indent=1), flush=True)
    if not args.foreground:
        return 0
    # SIGTERM takes Ctrl-C's path: unmount, then exit 0.
    signal.signal(signal.SIGTERM, _interrupt)
    with open(mounted.record / "mount.log", encoding="utf-8", errors="replace") as log:
        try:
            _follow_log(log, mounted.mountpoint)
        except KeyboardInterrupt:
            pass
        finally:
            try:
                devmount.unmount_image(work_dir, mounted.mountpoint)
            except (NotFound, Conflict):
                # Another `lazyfs umount` took it down, or is taking it down.
                if lazy_mount.is_mounted(mounted.mountpoint):
                    raise
            finally:
                # What it logged since the last look, and as it went: the mount process is gone.
                _copy(log)
    return 0


def list_mounts(work_dir: Path, *, as_json: bool) -> int:
    """``lazyfs mount [--json]``: print the mounts recorded under ``work_dir``; 0."""
    items = devmount_list.mounts(work_dir)
    if as_json:
        print(json.dumps(items, indent=1))
        return 0
    rows: list[tuple[str, ...]] = [_HEADER]
    for item in items:
        cells = (item.get("image"), item["mountpoint"], item.get("mode"), item["mount"])
        rows.append(tuple("-" if cell is None else cell for cell in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def run_umount(args: argparse.Namespace, work_dir: Path) -> int:
    """``lazyfs umount MOUNTPOINT``."""
    devmount.unmount_image(work_dir, args.mountpoint)
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _follow_log(log: TextIO, mountpoint: Path) -> None:
    """Copy the mount process's ``log`` to stderr until the mount goes away."""
    while lazy_mount.is_mounted(mountpoint):
        if not _copy(log):
            time.sleep(0.2)


def _copy(log: TextIO) -> bool:
    """Copy what ``log`` has now to stderr; whether there was any."""
    text = log.read()
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()
    return bool(text)
