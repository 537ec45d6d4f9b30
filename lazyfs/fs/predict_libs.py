"""The program's libraries asked for from the TOCs too, as soon as its headers are in.

A first start's read-ahead (``lazyfs.fs.predict``) learns what the program
loads from its ELF headers, but only once the mount serves: a tenth of a
second and more after the program's bytes have arrived, which the mount
asked for from the TOCs before indexing them (``lazyfs.fs.predict_toc``).
``ask_libraries`` does the same from the TOCs, in a thread of the mount
process while it indexes: it reads the program's headers through the cache
daemon (each chunk checked against its digest, as every chunk read is),
finds its interpreter and its ``DT_NEEDED`` libraries in the union of the
TOCs as ``ld.so`` finds them (``lazyfs.fs.predict.find_library``), and has
the daemon fetch their compressed bytes. One level only: what those load
in turn is left to the mount's read-ahead, which finds these cached.

A hint and no more, bounded as the mount's read-ahead is: the parse
(``lazyfs.fs.elf_deps``), the path walks (one budget of ``MAX_STEPS``),
the files (``MAX_FILES``), the bytes of each (``MAX_FILE_BYTES``) and of all
(``MAX_BYTES``); each of the program's chunks is inflated once. A
failure is logged, never the mount's.
"""

from __future__ import annotations

import itertools
import logging
import stat
import threading
from collections.abc import Callable, Sequence

from lazyfs.blobs.trace_run import unrecorded
from lazyfs.fs.elf_deps import elf_deps
from lazyfs.fs.predict import MAX_BYTES, MAX_FILE_BYTES, MAX_FILES, find_library, resolve
from lazyfs.fs.predict_toc import MAX_STEPS, Prefetcher, TocNode, TocTree, file_span
from lazyfs.index.estargz import inflate_chunk, read_length
from lazyfs.tree.merge import InodeNo
from providers.digest import Digest

log = logging.getLogger(__name__)
Need = tuple[Digest, int, int]  # a range of a blob to ask for: (blob, offset, length)


def ask_libraries_soon(tree: TocTree, program: TocNode, blobs: Prefetcher) -> None:
    """``ask_libraries`` in a daemon thread: it waits for the program's bytes."""
    threading.Thread(
        target=_logged, args=(tree, program, blobs), name="lazyfs-ask-libraries", daemon=True
    ).start()


def _logged(tree: TocTree, program: TocNode, blobs: Prefetcher) -> None:
    # A trace recorded on this start keeps the program's reads in its order, not these.
    unrecorded()
    try:
        asked = ask_libraries(tree, program, blobs)
        log.debug("asked for %d files the program loads", asked)
    except Exception as error:  # a hint: never the mount's failure
        log.info("asking for the program's libraries early failed: %s", error)


def ask_libraries(tree: TocTree, program: TocNode, blobs: Prefetcher) -> int:
    """Ask ``blobs`` for the interpreter and libraries the ELF file ``program`` of ``tree``
    needs; how many files were asked for. Blocking: it reads the program's headers."""
    inflated: dict[int, bytes] = {}  # the program's chunks, each inflated once

    def read(offset: int, length: int) -> bytes:
        return file_bytes(program, blobs, offset, length, inflated)

    def needs(node: TocNode) -> list[Need]:
        span = file_span(node)
        return [] if span is None else [span]

    return ask_loaded(tree, read, needs, blobs)


def ask_loaded(
    tree: TocTree,
    read: Callable[[int, int], bytes],
    needs: Callable[[TocNode], Sequence[Need]],
    blobs: Prefetcher,
) -> int:
    """Ask ``blobs`` for what the ELF file that ``read`` reads (checked bytes at an offset)
    loads, found in ``tree``: ``needs`` of each file, the ranges reading it takes. How many
    files were asked for; bounded as ``ask_libraries`` says."""
    steps = itertools.count()
    asked: set[tuple[Digest, int]] = set()  # the files, by their first range
    ranges_asked: set[Need] = set()  # two files' ranges may meet in one interval
    left = MAX_BYTES  # for all the files asked for, as the mount's read-ahead has it

    def spend() -> bool:
        return next(steps) < MAX_STEPS

    def ask(found: InodeNo | None) -> None:
        nonlocal left
        node = None if found is None else tree.inode(found)
        if node is None or not stat.S_ISREG(node.mode) or len(asked) >= MAX_FILES:
            return
        ranges = needs(node)
        if ranges and (ranges[0][0], ranges[0][1]) not in asked and left > 0:
            asked.add((ranges[0][0], ranges[0][1]))
            for blob, offset, length in ranges:
                if left <= 0:
                    break
                if (blob, offset, length) in ranges_asked:
                    continue
                ranges_asked.add((blob, offset, length))
                length = min(length, left)
                left -= length
                blobs.prefetch(blob, offset, length)

    def interp(path: bytes) -> None:
        ask(resolve(tree, path, spend))

    deps = elf_deps(read, interp)
    if deps is not None:
        for name in deps.needed:
            ask(find_library(tree, name, deps.runpath, spend))
    return len(asked)


def file_bytes(
    node: TocNode,
    blobs: Prefetcher,
    offset: int,
    length: int,
    inflated: dict[int, bytes] | None = None,
) -> bytes:
    """Bytes ``[offset, offset + length)`` of the file ``node``, from the chunks holding
    them, each read through ``blobs`` and checked (DigestMismatch if one is not what the
    TOC says). Past its end, or its first ``MAX_FILE_BYTES``, fewer. ``inflated`` keeps
    the chunks inflated, by offset, for the next call: none is inflated twice."""
    entry = node.entry
    if entry is None or node.layer is None or offset < 0 or length <= 0:
        return b""
    end = min(offset + length, entry.size, MAX_FILE_BYTES)
    parts = []
    for chunk in entry.chunks:
        last = chunk.chunk_offset + chunk.chunk_size
        if last <= offset or chunk.chunk_offset >= end:
            continue
        if max(read_length(chunk), chunk.inner_offset + chunk.chunk_size) > MAX_FILE_BYTES:
            break  # a member no file of this size needs: hostile
        content = None if inflated is None else inflated.get(chunk.offset)
        if content is None:
            data = blobs.read_range(node.layer, chunk.offset, read_length(chunk))
            content = inflate_chunk(chunk, data, layer=str(node.layer), name=entry.name)
            if inflated is not None:
                inflated[chunk.offset] = content
        parts.append(
            content[max(offset, chunk.chunk_offset) - chunk.chunk_offset : end - chunk.chunk_offset]
        )
    return b"".join(parts)
