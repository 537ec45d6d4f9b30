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
(``STARTUP_FILES``), and has the daemon fetch what inflating each reads
(its spans, and the windows below). The mount process finds them cached
or in flight. Then a thread reads the program's ELF headers through
the daemon as they arrive (each span checked against its digest, as the
mount checks it) and asks for its interpreter and libraries
(``lazyfs.fs.predict_libs.ask_loaded``), as an eStargz mount does while it
indexes: before the mount serves, not after.

The window asked for is that of the first interval, and of the one where
the file's data begins: the mount's reader asks its first read's
intervals together, and inflates each from the tail of the one before
(``lazyfs.blobs.published_asks``). A later read that finds an interval's
predecessor gone asks for that window itself: some 14 KiB, against the
85 KiB of a span.

Not asked when the start replays a prefetch trace with something of
these layers' (``lazyfs.fs.mount_ahead``): the trace says better what the
command reads, and these asks, a read's, would take the link from it.

A hint and no more, as ``predict_toc``'s: nothing is served from it
unverified (the mount checks each span and window), a wrong guess costs at
most ``MAX_FILE_BYTES`` of one file, and a failure is logged, never the
start's. Made only when every layer of the mount is read through a
published index: a layer whose entries are not known here could hide the
program, or hold an earlier one on the PATH. Blocking.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import (
    Need,
    interval_needs,
    intervals_to,
    merged,
    reads_windows,
)
from lazyfs.cache.remote import RemoteOrigin
from lazyfs.cache.tails import hint_client
from lazyfs.fs.predict import MAX_BYTES, MAX_FILE_BYTES
from lazyfs.fs.predict_toc import (
    STARTUP_FILES,
    Prefetcher,
    TocNode,
    TocTree,
    find_file,
    find_program,
)
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
MAX_INTERVALS = 1024  # of one file asked for: 256 MiB of stream at lazyfs's spacing
_TYPES = {
    Kind.FILE: EntryType.REG,
    Kind.DIR: EntryType.DIR,
    Kind.SYMLINK: EntryType.SYMLINK,
    Kind.HARDLINK: EntryType.HARDLINK,
    Kind.CHAR: EntryType.CHAR,
    Kind.BLOCK: EntryType.BLOCK,
    Kind.FIFO: EntryType.FIFO,
}
# A layer's regular files by path, and what reading it needs.
_Published = tuple[dict[RelPath, IndexEntry], PublishedData]


class Client(Prefetcher, Protocol):
    """The cache daemon's client (``lazyfs.cache.client.CacheClient``), as used here."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Plan:
    """What a start from published indexes asks for first.

    ``needs``: the ranges (of the layers and of their windows blobs, merged)
    that inflating the program and ``STARTUP_FILES`` reads; ``data``: each
    layer's published data; ``tree`` the union of the layers' entries, and
    ``program`` in it (None when no candidate is one); ``found`` each layer's
    regular files by path, with its data.
    """

    needs: list[Need]
    tree: TocTree
    program: TocNode | None
    found: dict[Digest, _Published]

    @property
    def data(self) -> dict[Digest, PublishedData]:
        return {digest: published for digest, (_, published) in self.found.items()}

    def file_needs(self, node: TocNode) -> list[Need]:
        """What reading the file ``node`` inflates, a range per blob where they meet."""
        return merged(_needs(node, self.found))


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
    What the program loads is asked for by a thread, once its headers are in
    (``lazyfs.fs.predict_libs.ask_loaded``). This process holds no index
    ``keep_here`` held afterwards.
    """
    try:
        if any(layer.digest not in origins for layer in layers):
            return 0
        plan = program_plan(store / "layers", layers, executable)
        if plan is None or not plan.needs:
            return 0
        return _ask(cache_dir, layers, origins, plan)
    except Exception as error:  # a hint: never the start's failure
        log.info("the program was not asked for from the published indexes: %s", error)
        return 0
    finally:
        forget_kept()


def program_plan(
    layers_dir: Path, layers: Sequence[Layer], executable: Sequence[str]
) -> Plan | None:
    """The ``Plan`` of a start of ``layers`` (the mount's, bottom first) running the first of
    ``executable`` there is. None unless each has its published index kept under ``layers_dir``
    (or held by this process: ``take_kept``)."""
    if not executable or not layers:
        return None
    found: dict[Digest, _Published] = {}
    entries: list[tuple[Digest, Sequence[IndexEntry]]] = []
    for layer in layers:
        kept = _kept(layers_dir, layer)
        if kept is None:
            return None
        index, published = kept
        files = {entry.path: entry for entry in index.entries if entry.kind is Kind.FILE}
        found[layer.digest] = (files, published)
        entries.append((layer.digest, index.entries))
    try:
        # Image content: a name the TOC rules refuse (a bare ".wh.") raises here.
        tree = TocTree([(digest, Toc(_as_toc(listed), 0)) for digest, listed in entries])
        program = find_program(tree, executable)
        nodes = [program] if program is not None else []
        nodes += [node for path in STARTUP_FILES if (node := find_file(tree, path)) is not None]
    except Exception as error:  # a hint: the mount reads what it needs all the same
        log.info("the program was not asked for from the published indexes: %s", error)
        return None
    needs: list[Need] = []
    left = MAX_BYTES  # for all the files, as the mount's read-ahead has it
    for node in nodes:
        for need in merged(_needs(node, found)):
            if need[2] > left:
                break
            needs.append(need)
            left -= need[2]
    return Plan(merged(needs), tree, program, found)


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


def _needs(node: TocNode, found: Mapping[Digest, _Published]) -> list[Need]:
    """The ranges (blob, offset, length) inflating the start of the file ``node`` reads."""
    if node.layer is None or node.entry is None:
        return []
    files, data = found[node.layer]
    entry = files.get(node.entry.path)
    if entry is None or entry.size <= 0 or entry.extents is not None:
        return []  # a sparse file's data is not where its size says
    # The mount reads the file as asked (PublishedLayers.reads_exact), its headers first.
    lo, end = entry.offset, entry.offset + min(entry.size, MAX_FILE_BYTES)
    start, end = max(0, entry.offset - HEADERS), min(end, data.tar_size)
    if data.points is None:  # a tar layer: the blob is the stream
        return [(node.layer, start, end - start)] if end > start else []
    first, last = interval(data.bounds, start), interval(data.bounds, end - 1)
    if first < 0 or last < 0:
        return []
    # An index's checkpoints are image content: at most MAX_FILE_BYTES of blob, and of
    # MAX_INTERVALS intervals, for one file.
    last = min(intervals_to(data, first, end, MAX_FILE_BYTES), first + MAX_INTERVALS - 1)
    # The reader asks for the window where its reads of the headers and of the data's
    # first piece begin; each interval after inflates from the tail of the one before.
    windows = {first, interval(data.bounds, lo)}
    return [
        need
        for n in range(first, last + 1)
        for need in interval_needs(node.layer, data, n, window=n in windows)
    ]


def _ask(
    cache_dir: Path, layers: Sequence[Layer], origins: Mapping[Digest, RemoteOrigin], plan: Plan
) -> int:
    client = hint_client(cache_dir, layers, origins)
    queued = 0
    try:
        for digest, published in plan.data.items():
            reads_windows(client, digest, published)
        for blob, offset, length in plan.needs:
            queued += client.prefetch(blob, offset, length)
        if plan.program is not None:
            # The thread reads the program's headers through the client, then closes it.
            threading.Thread(
                target=ask_program_libraries, args=(plan, client),
                name="lazyfs-ask-libraries", daemon=True,
            ).start()  # fmt: skip
            return queued
    except Exception as error:  # a hint: the mount reads what it needs all the same
        log.info("the program was not asked for from the published indexes: %s", error)
    client.close()
    return queued


def ask_program_libraries(plan: Plan, client: Client) -> None:
    """``ask_loaded`` for the plan's program, its headers read (each span checked) through
    ``client``, which is closed after. Errors are logged only."""
    # Loaded only here, off the start's path: the reader of published layers.
    from lazyfs.blobs.gzip_remote import PublishedLayers
    from lazyfs.fs.predict_libs import ask_loaded

    reader = None
    program = plan.program
    try:
        if program is None or program.layer is None or program.entry is None:
            return
        entry = plan.found[program.layer][0].get(program.entry.path)
        if entry is None or entry.extents is not None:
            return
        layer, start, size = program.layer, entry.offset, min(entry.size, MAX_FILE_BYTES)
        reader = PublishedLayers(plan.data, client)

        def read(offset: int, length: int) -> bytes:
            end = min(offset + length, size)
            return reader.read_range(layer, start + offset, end - offset) if end > offset else b""

        asked = ask_loaded(plan.tree, read, plan.file_needs, client)
        log.debug("asked for %d files the program loads", asked)
    except Exception as error:  # a hint: never the start's failure
        log.info("asking for the program's libraries early failed: %s", error)
    finally:
        if reader is not None:
            reader.close()
        client.close()
