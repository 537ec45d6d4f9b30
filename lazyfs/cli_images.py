"""``lazyfs images``, ``images rm REF...`` and ``images prune``.

``images`` lists the store (and creates nothing: no store, no images):
each image's reference, platform, manifest digest, layer count, size as
stored (blob bytes) and unpacked (tar bytes, the same whichever puller
stored it; known once every layer is indexed or stored uncompressed), and
how much of it is on this machine; ``--json`` gives the same as data, and
``-q`` only the manifest digests (what ``rm`` takes).
``rm`` removes the named images (a reference as the command line names
it, every platform of it, or a manifest digest) and the layers no other
image has; an image a container (rootfs or volume) or a mount uses is
refused, with who uses it, and then nothing is removed.  ``prune`` removes
every image and layer nothing uses (nor ``--image_gc_config`` excludes)
and stale leftovers.  Both go through image GC's ``gc/`` area
(``lazyfs.gc``), so a killed one leaves no half layer behind; then the
cache daemon's chunks of the layers they removed go too (``lazyfs.cache.forget``;
without a daemon, from its directory), counted in what they freed.  Sizes in
binary units (``lazyfs.progress.human_size``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.progress import human_size
from providers.errors import NotFound

if TYPE_CHECKING:
    from lazyfs.store.disk import Store
    from providers.manifest import ImageManifest

MakeParser = Callable[..., argparse.ArgumentParser]


@dataclass(frozen=True)
class Listed:
    """One image as ``images`` lists it; sizes in bytes (``unpacked`` None: not known yet)."""

    reference: str
    platform: str
    digest: str
    layers: int
    size: int
    unpacked: int | None
    local: str


def add_images_parser(sub: argparse.ArgumentParser, command: MakeParser) -> None:
    """``images`` (``sub``) and its actions; ``command(subparsers, name, text)`` makes one."""
    actions = sub.add_subparsers(
        dest="images_action", metavar="ACTION", help="none: list the images, with their sizes"
    )
    sub.add_argument("--json", action="store_true", help="the list as JSON, sizes in bytes")
    sub.add_argument(
        "-q", "--quiet", action="store_true", help="only the manifest digests, one a line"
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
    # argparse writes the actions as ``ACTION ...``, as if one were needed:
    # none is (a plain ``images`` lists), so say so, as the README does. Set
    # last: the actions' own names (``lazyfs images rm``) come from the usage
    # as it is when they are made.
    sub.usage = "%(prog)s [-h] [--json] [-q] [rm REF... | prune]"


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
    if action is not None:
        # GC loads the index and tree code: only for the commands that remove.
        from lazyfs.cli_gc import CachedChunks, gc_config, print_removed
        from lazyfs.gc.collect import prune, remove

        chunks = CachedChunks(args)
        if action == "rm":
            report = remove(store(), work_dir, args.names, stale_tree=stale_tree, removed=chunks)
        else:
            config = gc_config(args)
            report = prune(store(), work_dir, config, stale_tree=stale_tree, removed=chunks)
        print_removed(report, chunks.forgotten)
        return 0
    # No store yet: nothing to list, and nothing to create for it.
    stored = store().images() if store_dir.is_dir() else []
    if args.quiet:
        for image in stored:
            print(image.manifest.digest)
        return 0
    listed = [
        Listed(
            image.reference,
            image.manifest.platform,
            image.manifest.digest,
            len(image.manifest.layers),
            image.size,
            unpacked_size(store(), image.manifest),
            local(image.manifest),
        )
        for image in stored
    ]
    if args.json:
        print(json.dumps([asdict(item) for item in listed], indent=2))
        return 0
    rows = [("REFERENCE", "PLATFORM", "DIGEST", "LAYERS", "SIZE", "UNPACKED", "LOCAL")]
    for item in listed:
        unpacked = "-" if item.unpacked is None else human_size(item.unpacked)
        size = human_size(item.size)
        rows.append(
            (item.reference, item.platform, item.digest[:19], str(item.layers), size, unpacked,
             item.local)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def unpacked_size(store: Store, manifest: ImageManifest) -> int | None:
    """The image's layers as tar bytes, or None while one is neither indexed nor a plain tar.

    None too for a layer indexed from its eStargz TOC, which does not say
    how long the layer's tar is. Reads only: an index's first line, or a
    blob's first bytes. Blocking.
    """
    from lazyfs.index.formats import ESTARGZ
    from lazyfs.index.stored import load_index
    from providers.compression import sniff

    total = 0
    for layer in manifest.layers:
        index = load_index(store.layers, layer.digest, entries=False)
        if index is not None and index.compression == ESTARGZ.name:
            # Built from the TOC alone: its ``tar_size`` is the end of the files
            # laid out aligned (``lazyfs.index.estargz_chunks``), not the tar's
            # length, and the store records no inflated length of the blob.
            return None
        if index is not None:
            total += index.tar_size
            continue
        try:
            with store.blob_path(layer.digest).open("rb") as blob:
                plain = sniff(blob.read(8)) == "none"
        except OSError:
            return None
        if not plain:
            return None
        total += layer.size
    return total
