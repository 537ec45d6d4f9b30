"""The program asked for from a mount's published indexes, by the process that starts the mount.

An eStargz start asks for its program while the mount process indexes the
TOCs (``lazyfs.fs.predict_toc``). A start from published indexes
(``lazyfs.index.published``) asked for nothing until the mount served and
its read-ahead (``lazyfs.fs.predict``) began: half a second after the
mount process was started, the link idle meanwhile. Its indexes are in the
store before the mount process starts, fetched, checked and kept by the
process that starts it, which still holds them (``take_kept``). So
``ask_published_program`` finds the program among ``executable`` in the
union of the layers' entries, with the files nearly every start reads
(``STARTUP_FILES``), and has the daemon fetch what inflating each reads:
the spans of its intervals and their windows. The mount process finds them
cached or in flight.

Every window of those intervals is asked for, not just the first: the
mount's reader inflates an interval from the one before's tail only when
it asked for the two together itself, which it has not yet. A window is
some 14 KiB against a span of some 85 KiB.

A hint and no more, as ``predict_toc``'s: nothing is served from it
unverified (the mount checks each span and window), a wrong guess costs at
most ``MAX_FILE_BYTES`` of one file, and a failure is logged, never the
start's. Made only when every layer of the mount is read through a
published index: a layer whose entries are not known here could hide the
program, or hold an earlier one on the PATH. Blocking.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import interval_needs, merged, on_grid, reads_windows
from lazyfs.blobs.ranges import CHUNK_SIZE
from lazyfs.cache.remote import RemoteOrigin
from lazyfs.fs.predict import MAX_FILE_BYTES
from lazyfs.fs.predict_toc import STARTUP_FILES, TocNode, TocTree, find_file, find_program
from lazyfs.index.estargz_toc import EntryType, Toc, TocEntry
from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from lazyfs.index.published import PublishedData, forget_kept, load_published, take_kept
from providers.digest import Digest
from providers.layer_rules import WHITEOUT_OPAQUE, WHITEOUT_PREFIX, RelPath
from providers.manifest import Layer

log = logging.getLogger(__name__)

# Bytes of tar stream before a file's data asked for with it: its tar headers, which
# the mount's reader parses before serving the file (``lazyfs.blobs.entry_check``).
HEADERS = 8 << 10
_TYPES = {
    Kind.FILE: EntryType.REG,
    Kind.DIR: EntryType.DIR,
    Kind.SYMLINK: EntryType.SYMLINK,
    Kind.HARDLINK: EntryType.HARDLINK,
    Kind.CHAR: EntryType.CHAR,
    Kind.BLOCK: EntryType.BLOCK,
    Kind.FIFO: EntryType.FIFO,
}
# A layer's entries by path, and what reading it needs.
_Published = tuple[dict[RelPath, IndexEntry], PublishedData]


def ask_published_program(
    cache_dir: Path,
    store: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    executable: Sequence[str],
) -> int:
    """Have the daemon of ``cache_dir`` fetch what the program's start reads first; chunks queued.

    ``layers`` are the mount's, bottom first; 0 and nothing asked unless
    each is remote (``origins``) with its published index kept in ``store``.
    This process holds no index ``keep_here`` held afterwards.
    """
    try:
        return _ask_program(cache_dir, store, layers, origins, executable)
    finally:
        forget_kept()


def _ask_program(
    cache_dir: Path,
    store: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    executable: Sequence[str],
) -> int:
    if any(layer.digest not in origins for layer in layers):
        return 0
    found = program_needs(store / "layers", layers, executable)
    if found is None or not found[1]:
        return 0
    return _ask(cache_dir, layers, origins, *found)


def program_needs(
    layers_dir: Path, layers: Sequence[Layer], executable: Sequence[str]
) -> tuple[dict[Digest, PublishedData], list[tuple[Digest, int, int]]] | None:
    """What inflating the program among ``executable``, and ``STARTUP_FILES``, reads first:
    each layer's published data, and ranges (blob, offset, length) of the layers and of
    their windows blobs, merged. None unless every one of ``layers`` (the mount's, bottom
    first) has its published index kept under ``layers_dir``."""
    if not executable or not layers:
        return None
    found: dict[Digest, _Published] = {}
    tocs: list[tuple[Digest, Toc]] = []
    for layer in layers:
        kept = _kept(layers_dir, layer)
        if kept is None:
            return None
        index, published = kept
        found[layer.digest] = ({entry.path: entry for entry in index.entries}, published)
        tocs.append((layer.digest, Toc(_as_toc(index.entries), 0)))
    data = {digest: published for digest, (_, published) in found.items()}
    try:
        tree = TocTree(tocs)
        program = find_program(tree, executable)
        nodes = [program] if program is not None else []
        nodes += [node for path in STARTUP_FILES if (node := find_file(tree, path)) is not None]
        return data, merged(need for node in nodes for need in _needs(node, found))
    except Exception as error:  # a hint: the mount reads what it needs all the same
        log.info("the program was not asked for from the published indexes: %s", error)
        return data, []


def _kept(layers_dir: Path, layer: Layer) -> tuple[LayerIndex, PublishedData] | None:
    """The published index of ``layer`` and its data: as this process kept it, else read."""
    kept = take_kept(layer)
    if kept is not None:
        return kept
    loaded = load_published(layers_dir, layer)
    return None if loaded is None else (loaded[0], loaded[2])


def _as_toc(entries: Sequence[IndexEntry]) -> tuple[TocEntry, ...]:
    """``entries`` as TOC entries for ``TocTree``, whiteouts named as in a tar stream again."""
    out = []
    for entry in entries:
        path, kind = entry.path, _TYPES.get(entry.kind)
        if entry.kind is Kind.WHITEOUT and path:
            path, kind = (*path[:-1], WHITEOUT_PREFIX + path[-1]), EntryType.REG
        elif entry.kind is Kind.OPAQUE:
            path, kind = (*path, WHITEOUT_OPAQUE), EntryType.REG
        if kind is not None:
            out.append(
                TocEntry("/".join(path), path, kind, mode=entry.mode, link_name=entry.target)
            )
    return tuple(out)


def _needs(node: TocNode, found: Mapping[Digest, _Published]) -> list[tuple[Digest, int, int]]:
    """The ranges (blob, offset, length) inflating the start of the file ``node`` reads."""
    if node.layer is None or node.entry is None:
        return []
    entries, data = found[node.layer]
    entry = entries.get(node.entry.path)
    if entry is None or entry.kind is not Kind.FILE or entry.size <= 0 or entry.extents:
        return []
    # The mount reads a layer's stream in CHUNK_SIZE pieces (its chunk cache): whole ones.
    start, end = on_grid(
        max(0, entry.offset - HEADERS), entry.offset + min(entry.size, MAX_FILE_BYTES), CHUNK_SIZE
    )
    end = min(end, data.tar_size)
    if data.points is None:  # a tar layer: the blob is the stream
        return [(node.layer, start, end - start)] if end > start else []
    first, last = interval(data.bounds, start), interval(data.bounds, end - 1)
    if first < 0 or last < 0:
        return []
    return [need for n in range(first, last + 1) for need in interval_needs(node.layer, data, n)]


def _ask(
    cache_dir: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    data: Mapping[Digest, PublishedData],
    needs: Sequence[tuple[Digest, int, int]],
) -> int:
    # Loaded only here: the mount API that calls this stays light otherwise.
    from lazyfs.cache.client import CacheClient, remote_blob

    blobs = {
        layer.digest: remote_blob(
            origins[layer.digest].host, origins[layer.digest].repository, layer
        )
        for layer in layers
    }
    # Not waiting for a daemon that is gone: the mount waits for it as ever.
    client = CacheClient(cache_dir, blobs, wait=0.0)
    queued = 0
    try:
        for digest, published in data.items():
            reads_windows(client, digest, published)
        for blob, offset, length in needs:
            queued += client.prefetch(blob, offset, length)
    except Exception as error:  # a hint: the mount reads what it needs all the same
        log.info("the program was not asked for from the published indexes: %s", error)
    finally:
        client.close()
    return queued
