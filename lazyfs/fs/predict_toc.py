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

A hint and no more: nothing is served from it unverified (chunk reads
check each chunk against its digest as ever), a guess the merged tree
would not make costs one file's bytes (at most ``MAX_FILE_BYTES``), and a
failure of the guess is logged, never the mount's. Only a failure to read
or check a TOC is raised, as indexing would raise it.

The union (``TocTree``) looks a path up from the top layer down: the
highest layer holding it gives it, and a whiteout or opaque directory of a
layer (``providers.layer_rules.hides``) hides what lies below it. A
directory no TOC names is taken to be there (eStargz layers need not list
parents). Layers already indexed are not in the union: their TOCs are
not read here. Paths resolve as in the tree (``lazyfs.fs.predict.resolve``,
bounded in links and steps: TOC content is hostile).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lazyfs.fs.predict import MAX_FILE_BYTES, MAX_FILES, resolve
from lazyfs.index.estargz_index import fetch_toc
from lazyfs.index.estargz_toc import EntryType, Toc, TocEntry
from lazyfs.index.stored_remote import unindexed_toc
from lazyfs.tree.merge import ROOT_INO, InodeNo
from providers.digest import Digest
from providers.layer_rules import (
    WHITEOUT_PREFIX,
    Action,
    RelPath,
    Rule,
    classify,
    hardlink_target,
    hides,
)
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


@dataclass(frozen=True, slots=True)
class _Node:
    ino: InodeNo
    mode: int
    target: bytes = b""
    layer: Digest | None = None
    entry: TocEntry | None = None


@dataclass(frozen=True, slots=True)
class _Layer:
    digest: Digest
    entries: dict[RelPath, TocEntry]
    hiding: tuple[Rule, ...]  # its whiteouts and opaque directories


class TocTree:
    """The union of eStargz layers' TOCs, bottom layer first, walked as ``resolve`` walks."""

    def __init__(self, layers: Sequence[tuple[Digest, Toc]]) -> None:
        self._layers = [_layer(digest, toc) for digest, toc in reversed(layers)]  # top first
        self._paths: list[RelPath] = [(), ()]  # by inode number; 1 is the root
        self._numbers: dict[RelPath, InodeNo] = {(): ROOT_INO}

    def inode(self, ino: int) -> _Node | None:
        if not 0 < ino < len(self._paths):
            return None
        path = self._paths[ino]
        found = self._find(path)
        if found is None:
            # Named by no layer, or hidden: a directory eStargz need not list, as a guess.
            return _Node(InodeNo(ino), stat.S_IFDIR | 0o755)
        layer, entry = found
        if entry.type is EntryType.HARDLINK:
            entry = self._hardlinked(layer, entry) or entry
        kind = _KINDS.get(entry.type, 0)
        target = os.fsencode(entry.link_name) if entry.type is EntryType.SYMLINK else b""
        return _Node(InodeNo(ino), kind | entry.mode, target, layer.digest, entry)

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None:
        if not 0 < parent < len(self._paths):
            return None
        path = (*self._paths[parent], os.fsdecode(name))
        number = self._numbers.get(path)
        if number is None:
            number = self._numbers[path] = InodeNo(len(self._paths))
            self._paths.append(path)
        return number

    def parent(self, directory: int) -> InodeNo:
        path = self._paths[directory] if 0 < directory < len(self._paths) else ()
        return self._numbers.get(path[:-1], ROOT_INO)

    def _find(self, path: RelPath) -> tuple[_Layer, TocEntry] | None:
        """The layer giving ``path`` and its entry there; None if none does."""
        for layer in self._layers:
            entry = layer.entries.get(path)
            if entry is not None:
                return layer, entry
            if any(hides(rule, path) for rule in layer.hiding):
                return None
        return None

    def _hardlinked(self, layer: _Layer, entry: TocEntry) -> TocEntry | None:
        """The regular file a hardlink entry names, in its own layer."""
        name = str(layer.digest)
        target = layer.entries.get(hardlink_target(entry.link_name, layer=name, entry=entry.name))
        return target if target is not None and target.type is EntryType.REG else None


def _layer(digest: Digest, toc: Toc) -> _Layer:
    entries = {entry.path: entry for entry in toc.entries}
    hiding = []
    for path in entries:
        # The cheap test first: few names are whiteouts, and classifying all is not free.
        if path and path[-1].startswith(WHITEOUT_PREFIX):
            rule = classify(path, layer=str(digest), entry="/".join(path))
            if rule.action in (Action.WHITEOUT, Action.OPAQUE):
                hiding.append(rule)
    return _Layer(digest, entries, tuple(hiding))


def program_span(
    layers: Sequence[tuple[Digest, Toc]], candidates: Sequence[str]
) -> tuple[Digest, int, int] | None:
    """Where the first of ``candidates`` that is an executable regular file lies: its layer's
    digest, and the offset and length of its compressed bytes (at most ``MAX_FILE_BYTES``)."""
    tree = TocTree(layers)
    for path in candidates[:MAX_FILES]:
        found = resolve(tree, os.fsencode(path))
        node = None if found is None else tree.inode(found)
        if node is None or not stat.S_ISREG(node.mode) or node.entry is None:
            continue
        if not node.mode & 0o111:
            continue  # runc execs only a file with an exec bit
        chunks = node.entry.chunks
        if not chunks or node.layer is None:
            return None  # empty: nothing to ask for
        start = chunks[0].offset
        end = min(chunks[-1].end, start + MAX_FILE_BYTES)
        return (node.layer, start, end - start) if end > start else None
    return None


def ask_program(
    layers_dir: Path,
    layers: Sequence[Layer],
    blobs: Prefetcher,
    executable: Sequence[str],
) -> dict[Digest, Toc]:
    """The TOCs of the unindexed eStargz ``layers`` (bottom first), read and checked; the
    program among ``executable`` found in them asked of ``blobs`` meanwhile.

    Raises what ``fetch_toc`` raises for a TOC that cannot be read or is not
    the one its descriptor names; nothing for the guess.
    """
    tocs: dict[Digest, Toc] = {}
    for layer in layers:
        expected = unindexed_toc(layers_dir, layer)
        if expected is not None:
            tocs[layer.digest] = fetch_toc(layer, blobs, expected)
    if not tocs or not executable:
        return tocs
    try:
        span = program_span(list(tocs.items()), executable)
        if span is not None:
            log.debug(
                "asking for the program early: %d bytes at %d of %s", span[2], span[1], span[0]
            )
            blobs.prefetch(*span)
    except Exception as error:  # a hint: never the mount's failure
        log.info("asking for the program early failed: %s", error)
    return tocs
