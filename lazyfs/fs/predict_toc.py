"""The program asked for from its layers' TOCs, while the mount is still indexing them.

A first start's read-ahead (``lazyfs.fs.predict``) begins once the mount
has its merged tree: on an image of some thousand entries a layer, a few
tenths of a second after the TOCs arrived, with the link idle meanwhile.
The program itself, as a rule the largest file a start reads first
(python3.11: 2.9 MB), can be asked for sooner: its candidate paths are
known (``--executable``), and the TOCs say where each file's chunks lie in
its blob. ``ask_program`` reads the TOCs of the mount's unindexed eStargz
layers first, finds the first candidate that is an executable regular
file in their union, and has the cache daemon fetch that file's
compressed bytes at once. The mount then indexes from the TOCs it read,
without reading them again.

Files nearly every start reads are asked for with it (``STARTUP_FILES``),
each a round trip on its own otherwise, one after another: runc looks the
container's user up in ``/etc/passwd`` and ``/etc/group`` (for its home
and groups) whatever the user, ``ld.so`` opens ``/etc/ld.so.cache`` for
every dynamically linked program, and the C library's ``tzset`` reads
``/etc/localtime`` (CPython calls it as it starts, as most runtimes and
daemons do). A file an image lacks, or a program does not read, costs a
few KiB.

A hint and no more: nothing is served from it unverified (chunk reads
check each chunk against its digest as ever), a wrong guess costs one
file's bytes (at most ``MAX_FILE_BYTES``), and a failure of the guess is
logged, never the mount's. Only a failure to read or check a TOC is
raised, as indexing would raise it. It is made only when every layer of
the mount is such an eStargz layer: a layer whose TOC is not read here
could hide the program, or hold an earlier one on the PATH.

The union (``TocTree``) looks a path up from the top layer down: the
highest layer holding it gives it, and a layer hides what lies below it
under a whiteout, inside an opaque directory, or under a path it holds as
anything but a directory. A directory no TOC names is taken to be there
(eStargz layers need not list parents). TOC content is hostile: paths
resolve as in the tree (``lazyfs.fs.predict.resolve``), within one budget
of steps for all candidates (``MAX_STEPS``), one more for each startup
file, and ``MAX_DEPTH`` components.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lazyfs.fs.predict import MAX_FILE_BYTES, MAX_FILES, resolve
from lazyfs.index.estargz_index import fetch_toc
from lazyfs.index.estargz_toc import EntryType, Toc, TocEntry
from lazyfs.index.stored_remote import unindexed_toc
from lazyfs.tree.merge import ROOT_INO, InodeNo
from providers.digest import Digest
from providers.layer_rules import WHITEOUT_PREFIX, Action, RelPath, classify, hardlink_target
from providers.manifest import Layer
from providers.source import BlobSource

log = logging.getLogger(__name__)

_KINDS = {
    EntryType.DIR: stat.S_IFDIR,
    EntryType.REG: stat.S_IFREG,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


class Prefetcher(BlobSource, Protocol):
    """A blob source that can be asked to fetch ahead (``lazyfs.cache.client.CacheClient``)."""

    def prefetch(self, digest: Digest, offset: int, length: int) -> int: ...


MAX_STEPS = 10_000  # path components walked for all candidates together
# Read as a container starts, by runc, ld.so and tzset (see above), in that order.
STARTUP_FILES = ("/etc/passwd", "/etc/group", "/etc/ld.so.cache", "/etc/localtime")
MAX_DEPTH = 64  # components of one path: deeper ones are no program's


@dataclass(frozen=True, slots=True)
class TocNode:
    ino: InodeNo
    mode: int
    target: bytes = b""
    layer: Digest | None = None
    entry: TocEntry | None = None


@dataclass(frozen=True, slots=True)
class _Layer:
    digest: Digest
    entries: dict[RelPath, TocEntry]
    whiteouts: frozenset[RelPath]  # what a whiteout hides, with all below it
    opaque: frozenset[RelPath]  # directories whose lower contents are hidden


@dataclass(frozen=True, slots=True)
class _Place:
    path: RelPath
    hidden: tuple[bool, ...]  # by layer, top first: it hides this path from the layers below


class TocTree:
    """The union of eStargz layers' TOCs, bottom layer first, walked as ``resolve`` walks."""

    def __init__(self, layers: Sequence[tuple[Digest, Toc]]) -> None:
        self._layers = [_layer(digest, toc) for digest, toc in reversed(layers)]  # top first
        root = _Place((), tuple(False for _ in self._layers))
        self._places: list[_Place] = [root, root]  # by inode number; 1 is the root
        self._numbers: dict[RelPath, InodeNo] = {(): ROOT_INO}

    def inode(self, ino: int) -> TocNode | None:
        if not 0 < ino < len(self._places):
            return None
        found = self._find(self._places[ino])
        if found is None:
            # Named by no layer, or hidden: a directory eStargz need not list, as a guess.
            return TocNode(InodeNo(ino), stat.S_IFDIR | 0o755)
        layer, entry = found
        if entry.type is EntryType.HARDLINK:
            entry = self._hardlinked(layer, entry) or entry
        kind = _KINDS.get(entry.type, 0)
        target = os.fsencode(entry.link_name) if entry.type is EntryType.SYMLINK else b""
        return TocNode(InodeNo(ino), kind | entry.mode, target, layer.digest, entry)

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None:
        if not 0 < parent < len(self._places):
            return None
        above = self._places[parent]
        if len(above.path) >= MAX_DEPTH:
            return None
        path = (*above.path, os.fsdecode(name))
        number = self._numbers.get(path)
        if number is None:
            hidden = tuple(
                was or path in layer.whiteouts or above.path in layer.opaque
                # A file or link in a layer hides a lower directory's contents.
                or (above.path in layer.entries
                    and layer.entries[above.path].type is not EntryType.DIR)
                for was, layer in zip(above.hidden, self._layers, strict=True)
            )  # fmt: skip
            number = self._numbers[path] = InodeNo(len(self._places))
            self._places.append(_Place(path, hidden))
        return number

    def parent(self, directory: int) -> InodeNo:
        path = self._places[directory].path if 0 < directory < len(self._places) else ()
        return self._numbers.get(path[:-1], ROOT_INO)

    def _find(self, place: _Place) -> tuple[_Layer, TocEntry] | None:
        """The layer giving ``place`` and its entry there; None if none does."""
        for layer, hides_below in zip(self._layers, place.hidden, strict=True):
            entry = layer.entries.get(place.path)
            if entry is not None:
                return layer, entry
            if hides_below:
                return None
        return None

    def _hardlinked(self, layer: _Layer, entry: TocEntry) -> TocEntry | None:
        """The regular file a hardlink entry names, in its own layer."""
        name = str(layer.digest)
        target = layer.entries.get(hardlink_target(entry.link_name, layer=name, entry=entry.name))
        return target if target is not None and target.type is EntryType.REG else None


def _layer(digest: Digest, toc: Toc) -> _Layer:
    entries = {entry.path: entry for entry in toc.entries}
    whiteouts, opaque = set(), set()
    for path in entries:
        # The cheap test first: few names are whiteouts, and classifying all is not free.
        if path and path[-1].startswith(WHITEOUT_PREFIX):
            rule = classify(path, layer=str(digest), entry="/".join(path))
            if rule.action is Action.WHITEOUT:
                whiteouts.add(rule.path)
            elif rule.action is Action.OPAQUE:
                opaque.add(rule.path)
    return _Layer(digest, entries, frozenset(whiteouts), frozenset(opaque))


def find_program(tree: TocTree, candidates: Sequence[str]) -> TocNode | None:
    """The first of ``candidates`` that is an executable regular file of ``tree``."""
    steps = itertools.count()
    for path in candidates[:MAX_FILES]:
        node = _regular(tree, path, lambda: next(steps) < MAX_STEPS)
        if node is not None and node.mode & 0o111:  # runc execs only a file with an exec bit
            return node
    return None


def find_file(tree: TocTree, path: str) -> TocNode | None:
    """The regular file ``path`` gives in ``tree``, links followed; None if none."""
    steps = itertools.count()
    return _regular(tree, path, lambda: next(steps) < MAX_STEPS)


def _regular(tree: TocTree, path: str, spend: Callable[[], bool]) -> TocNode | None:
    found = resolve(tree, os.fsencode(path), spend)
    node = None if found is None else tree.inode(found)
    if node is None or not stat.S_ISREG(node.mode) or node.entry is None:
        return None
    return node


def file_span(node: TocNode) -> tuple[Digest, int, int] | None:
    """Where the file ``node`` lies in its layer's blob: the layer's digest, and the
    offset and length of its compressed bytes (at most ``MAX_FILE_BYTES``)."""
    if node.entry is None or not node.entry.chunks or node.layer is None:
        return None  # empty: nothing to ask for
    chunks = node.entry.chunks
    start = chunks[0].offset
    end = min(chunks[-1].end, start + MAX_FILE_BYTES)
    return (node.layer, start, end - start) if end > start else None


def program_span(
    layers: Sequence[tuple[Digest, Toc]], candidates: Sequence[str]
) -> tuple[Digest, int, int] | None:
    """``file_span`` of ``find_program`` in the union of ``layers``' TOCs."""
    node = find_program(TocTree(layers), candidates)
    return None if node is None else file_span(node)


def ask_program(
    layers_dir: Path,
    layers: Sequence[Layer],
    blobs: Prefetcher,
    executable: Sequence[str],
    *,
    found: Callable[[TocTree, TocNode, Prefetcher], None] | None = None,
) -> dict[Layer, Toc]:
    """The TOCs of ``layers`` (the mount's, bottom first), read and checked, by layer; the
    program among ``executable`` found in them, and ``STARTUP_FILES``, asked of ``blobs``
    meanwhile.

    ``found`` is told the union of the TOCs and the program once it is
    asked for: to ask for what it loads (``lazyfs.fs.predict_libs``).

    Nothing is read, and {} given, unless every layer is an eStargz layer
    with no index stored yet. Raises what ``fetch_toc`` raises for a TOC
    that cannot be read or is not the one its descriptor names; nothing
    for the guess.
    """
    expected = [unindexed_toc(layers_dir, layer) for layer in layers]
    if not executable or not layers or any(digest is None for digest in expected):
        return {}
    tocs: dict[Layer, Toc] = {}
    for layer, digest in zip(layers, expected, strict=True):
        if digest is not None:
            tocs[layer] = fetch_toc(layer, blobs, digest)
    try:
        tree = TocTree([(layer.digest, toc) for layer, toc in tocs.items()])
        program = find_program(tree, executable)
        span = None if program is None else file_span(program)
        if program is not None and span is not None:
            log.debug(
                "asking for the program early: %d bytes at %d of %s", span[2], span[1], span[0]
            )
            blobs.prefetch(*span)
        try:
            for path in STARTUP_FILES:
                node = find_file(tree, path)
                file = None if node is None else file_span(node)
                if file is not None:
                    blobs.prefetch(*file)
        except Exception as error:  # a hint: the libraries are asked for all the same
            log.info("asking for the startup files early failed: %s", error)
        # Last: ``found`` may hand the tree to a thread, and its lookups are not thread-safe.
        if program is not None and span is not None and found is not None:
            found(tree, program, blobs)
    except Exception as error:  # a hint: never the mount's failure
        log.info("asking for the program early failed: %s", error)
    return tocs
