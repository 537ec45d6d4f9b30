"""``lazyfs images``, ``images rm REF...`` and ``images prune``.

``images`` lists the store (and creates nothing: no store, no images).
``rm`` removes the named images (a reference as the command line names
it, every platform of it, or a manifest digest) and the layers no other
image has; an image a container (rootfs or volume) or a mount uses is
refused, with who uses it, and then nothing is removed.  ``prune`` removes
every image and layer nothing uses (nor ``--image_gc_config`` excludes)
and stale leftovers.  Both go through image GC's ``gc/`` area
(``lazyfs.gc``), so a killed one leaves no half layer behind.  Sizes in
binary units (``lazyfs.progress.human_size``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.progress import human_size
from providers.errors import NotFound

if TYPE_CHECKING:
    from lazyfs.store.disk import Store
    from providers.manifest import ImageManifest

MakeParser = Callable[..., argparse.ArgumentParser]


def add_images_parser(sub: argparse.ArgumentParser, command: MakeParser) -> None:
    """``images`` (``sub``) and its actions; ``command(subparsers, name, text)`` makes one."""
    actions = sub.add_subparsers(
        dest="images_action", metavar="ACTION", help="none: list the images, with their sizes"
    )
    rm = command(actions, "rm", "remove images no container uses, and their unused layers")
    rm.add_argument(
        "names",
        nargs="+",
        metavar="REF",
        help="an image as provision names it (every platform stored), or its manifest digest",
    )
    command(
        actions,
        "prune",
        "remove every image and layer no container or mount uses (nor --image_gc_config "
        "excludes), and stale leftovers",
    )


def run_images(
    args: argparse.Namespace,
    store_dir: Path,
    store: Callable[[], Store],
    work_dir: Path,
    *,
    stale_tree: Callable[[str], bool],
    local: Callable[[ImageManifest], str],
) -> int:
    """``images`` (``local``: how much of an image is here), ``images rm``, ``images prune``."""
    action = getattr(args, "images_action", None)
    if action is not None and not store_dir.is_dir():
        # No store: nothing to remove, and no store to make for it.
        if action == "rm":
            raise NotFound(f"no image {args.names[0]} in the store (there is no store)")
        print(f"freed {human_size(0)}")
        return 0
    # GC loads the index and tree code: only for the commands that remove.
    from lazyfs.cli_gc import gc_config, print_removed
    from lazyfs.gc.collect import prune, remove

    if action == "rm":
        print_removed(remove(store(), work_dir, args.names, stale_tree=stale_tree))
        return 0
    if action == "prune":
        print_removed(prune(store(), work_dir, gc_config(args), stale_tree=stale_tree))
        return 0
    rows = [("REFERENCE", "DIGEST", "LAYERS", "SIZE", "LOCAL")]
    # No store yet: nothing to list, and nothing to create for it.
    stored = store().images() if store_dir.is_dir() else []
    for image in stored:
        layers = str(len(image.manifest.layers))
        size = human_size(image.size)
        rows.append(
            (image.reference, image.manifest.digest[:19], layers, size, local(image.manifest))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0
