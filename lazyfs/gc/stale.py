"""Leftovers of earlier lazyfs versions and of replaced files: garbage in any layer.

In a layer's store directory ``layers/<hex>/``, whether or not a container
uses the layer:

- extracted trees of earlier rules (``stale_tree``, from
  ``backends.extracted.stale_name``: ``rootfs`` and ``overlay`` before
  ``-v2``), unless a mount on this machine still names one (a container an
  older lazyfs provisioned stacks it);
- files an index of another format kept (``tar``, ``gzip-index``,
  ``estargz-chunks``) beside the index stored now, such as the chunk table
  of an eStargz index rebuilt from the whole blob in its own format, or
  beside no index at all (a build that never finished), unless a live
  process names the file (format 1's mount processes were handed their
  ``tar``); an index of a format this version does not read keeps them;
- merged trees kept (``trees/<chain>``) that no mount will take: made by
  other code or from indexes since replaced (``lazyfs.tree.kept``), or for
  a chain whose indexes are gone.  A layer's index may be the one of the
  layer's own directory, one kept by TOC for a lazily read eStargz layer
  (``lazyfs.index.estargz_store``) or one published beside an image
  (``lazyfs.index.published``): a tree made from any of those stays, until
  the layer's blob is here with an index of its own, which is then the only
  one a mount reads.  The packed trees beside them (``packed-trees/``,
  ``lazyfs.tree.mapped``) are not looked at: they go with their layer.

And image records no lookup finds (damaged, or under an old key), unless
the key is one a container's image has.  Each goes through the ``gc/``
area (``lazyfs.gc.trash``).  A layer directory whose lock is held (an
extraction or an index build under way) is left for the next pass.
Blocking.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from lazyfs.gc.trash import Trash
from lazyfs.index.estargz_store import TOCS_DIR
from lazyfs.index.model import CHECKPOINTS_NAME, CHUNKS_NAME, INDEX_NAME, TAR_NAME
from lazyfs.index.published import PUBLISHED_DIR, SET_ASIDE_NAME
from lazyfs.index.stored import index_source, layer_format, load_index
from lazyfs.store.disk import Store
from lazyfs.tree.kept import load_tree
from providers.digest import Digest
from providers.errors import BadImage
from providers.fslock import try_exclusive_lock

_INDEX_FILES = (TAR_NAME, CHECKPOINTS_NAME, CHUNKS_NAME)
_HEX = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")


def remove_stale(
    store: Store,
    trash: Trash,
    stale_tree: Callable[[str], bool],
    kept_keys: Iterable[tuple[str, str]],
) -> list[str]:
    """Remove every leftover described above; their store-relative paths.

    ``kept_keys``: (reference, platform) of images a container uses, whose
    records stay even when they do not read.
    """
    removed: list[str] = []
    keep = {store.image_record(reference, platform) for reference, platform in kept_keys}
    for path, manifest in store.records():
        if manifest is None and path not in keep:
            trash.discard(path)
            removed.append(str(path.relative_to(store.root)))
    mounts = _mount_table()
    named = _process_words()
    for home in sorted(store.layers.iterdir()):
        if not _HEX.fullmatch(home.name) or not home.is_dir():
            continue
        with try_exclusive_lock(home / "lock") as free:
            if not free:
                continue  # an extraction or index build is under way: next pass
            for path in _stale_in(store, home, stale_tree, mounts, named):
                trash.discard(path)
                removed.append(str(path.relative_to(store.root)))
    return removed


def _stale_in(
    store: Store,
    home: Path,
    stale_tree: Callable[[str], bool],
    mounts: str,
    named: bytes,
) -> list[Path]:
    layers_dir = store.layers
    found = []
    for entry in sorted(home.iterdir()):
        if stale_tree(entry.name) and not _mounted(mounts, home.name, entry.name):
            found.append(entry)
    index = load_index(layers_dir, _digest(home.name), entries=False)
    wanted = set(_INDEX_FILES)
    if index is not None:
        with contextlib.suppress(BadImage):  # a format this version does not know: keep all
            wanted = set(layer_format(index).stored_files)
    elif not (home / INDEX_NAME).exists():
        wanted = set()  # the files of an index build that never finished
    for name in _INDEX_FILES:
        path = home / name
        if name not in wanted and path.exists() and not _named(named, path):
            found.append(path)
    trees = home / "trees"
    if trees.is_dir():
        found.extend(tree for tree in sorted(trees.iterdir()) if _stale_tree_file(store, tree))
    return found


def _digest(hexdigest: str) -> Digest:
    return Digest(f"{'sha512' if len(hexdigest) == 128 else 'sha256'}:{hexdigest}")


def _stale_tree_file(store: Store, path: Path) -> bool:
    """Whether the kept merged tree at ``path`` is one no mount will load."""
    try:
        header = marshal.loads(path.read_bytes())[0]
        digests = tuple(Digest(str(d)) for d in header[3])
        sources = tuple(str(source) for source in header[4])
    except FileNotFoundError:
        return False
    except Exception:  # any shape marshal gives back, or unreadable: no mount loads it
        return True
    if not digests or hashlib.sha256("\n".join(digests).encode()).hexdigest() != path.name:
        return True
    if path.parent.parent.name != digests[-1].partition(":")[2]:
        return True
    if len(sources) != len(digests):
        return True
    # A mount labels each layer with the source of the index it reads: the
    # layer's own, one kept by TOC, or one published (lazyfs.fs.mount_main).
    # Not current when a layer has no index of that source that a mount
    # reads: made by other code, or from indexes since replaced or gone.
    for digest, source in zip(digests, sources, strict=True):
        if source == "" or source not in _index_sources(store, digest):
            return True
    return load_tree(path, digests, sources=sources) is None


def _index_sources(store: Store, digest: Digest) -> set[str]:
    """The sources (``index_source``) of the indexes of ``digest`` a mount may read.

    A layer whose blob is in the store is mounted as a local layer
    (``lazyfs.provision.lazy.remote_origins``), from the index of its own
    directory: once that is there, no other is read again.  A layer still
    in its registry is read by an index kept by TOC (eStargz), or by one
    published beside its image that no mount set aside; or, once fetched
    whole, by its own.
    """
    layers_dir = store.layers
    own = index_source(layers_dir, digest)
    if own and store.has_blob(digest):
        return {own}
    home = layers_dir / digest.partition(":")[2]
    published = [d for d in _kept_dirs(home / PUBLISHED_DIR) if not (d / SET_ASIDE_NAME).exists()]
    homes = [*_kept_dirs(home / TOCS_DIR), *published]
    return ({own} | {index_source(where, digest) for where in homes}) - {""}


def _kept_dirs(parent: Path) -> list[Path]:
    """The layers dirs under ``parent``: one per TOC, or per published index blob."""
    try:
        return sorted(entry for entry in parent.iterdir() if entry.is_dir())
    except OSError:  # none kept
        return []


def _mounted(mounts: str, home: str, name: str) -> bool:
    """Whether a mount names ``<home>/<name>`` (or below it): a root, a lowerdir, a source."""
    return re.search(rf"/{home}/{re.escape(name)}(?=[/,:\s]|$)", mounts, re.M) is not None


def _named(words: bytes, path: Path) -> bool:
    return b"\0" + os.fsencode(path) + b"\0" in words


def _mount_table() -> str:
    """This mount namespace's mountinfo: overlay lowerdirs and bind roots name trees."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            return table.read()
    except OSError:
        return ""


def _process_words() -> bytes:
    """Every live process's command line, NUL-separated words, ``=``-split too."""
    words = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        words.append(argv.replace(b"=", b"\0"))
    return b"\0" + b"\0".join(words) + b"\0"
