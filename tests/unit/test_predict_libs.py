"""What the program loads, asked for from the TOCs once its headers are in
(``lazyfs.fs.predict_libs``): its interpreter and needed libraries found as ld.so finds
them in the union of the TOCs, read from chunks each checked against its digest."""

from __future__ import annotations

import os
import threading

import pytest

from lazyfs.blobs.trace_run import recorded
from lazyfs.fs import predict_libs
from lazyfs.fs.predict import resolve
from lazyfs.fs.predict_libs import ask_libraries, ask_libraries_soon, file_bytes
from lazyfs.fs.predict_toc import TocTree, file_span, find_program
from lazyfs.index.estargz_toc import parse_toc
from providers.digest import Digest
from providers.errors import DigestMismatch
from tests.support.blob_sources import Prefetching
from tests.support.elf_files import elf
from tests.support.estargz_writer import Blob, File, write_estargz

LAYER = Digest("sha256:" + "a" * 64)
PROGRAM = elf(b"/lib64/ld.so", [b"libfoo.so.1", b"libc.so.6", b"libnone.so"], b"/opt/lib")
LIBS = [
    File("lib64", type="dir", mode=0o755),
    File("lib64/ld.so", os.urandom(5000), mode=0o755),
    File("opt", type="dir", mode=0o755),
    File("opt/lib", type="dir", mode=0o755),
    File("opt/lib/libfoo.so.1", os.urandom(5000)),
    File("lib", type="symlink", link="usr/lib"),
    File("usr", type="dir", mode=0o755),
    File("usr/lib", type="dir", mode=0o755),
    File("usr/lib/libc.so.6", os.urandom(5000)),
    File("usr/lib/libfoo.so.1", os.urandom(5000)),  # behind the run path's
]


def layer_of(program: bytes, chunk_size: int = 0) -> Blob:
    files = [File("bin", type="dir", mode=0o755), File("bin/prog", program, mode=0o755)]
    return write_estargz([*files, *LIBS], chunk_size=chunk_size)


def tree_of(blob: Blob) -> TocTree:
    toc = parse_toc(blob.toc_json, toc_offset=blob.toc_offset, layer=str(LAYER))
    return TocTree([(LAYER, toc)])


def span_of(tree: TocTree, path: str) -> tuple[Digest, int, int]:
    found = resolve(tree, path.encode())
    node = None if found is None else tree.inode(found)
    span = None if node is None else file_span(node)
    assert span is not None
    return span


@pytest.mark.parametrize("chunk_size", [0, 1024], ids=["one-chunk", "many-chunks"])
def test_the_interpreter_and_needed_libraries_are_asked_for(chunk_size: int) -> None:
    blob = layer_of(PROGRAM.data + os.urandom(3000), chunk_size)
    tree = tree_of(blob)
    blobs = Prefetching({LAYER: blob.data})
    program = find_program(tree, ["/bin/prog"])
    assert program is not None

    assert ask_libraries(tree, program, blobs) == 3

    asked = [(d, o, n) for kind, d, o, n in blobs.events if kind == "prefetch"]
    # The run path's libfoo, not the standard directories'; libc through the /lib link.
    want = [span_of(tree, p) for p in ("/lib64/ld.so", "/opt/lib/libfoo.so.1", "/lib/libc.so.6")]
    assert asked == want


def test_a_file_read_across_chunks_is_its_bytes() -> None:
    data = os.urandom(10_000)
    blob = layer_of(data, 1024)
    tree = tree_of(blob)
    node = find_program(tree, ["/bin/prog"])
    assert node is not None
    blobs = Prefetching({LAYER: blob.data})
    assert file_bytes(node, blobs, 1000, 3000) == data[1000:4000]
    assert file_bytes(node, blobs, 9000, 5000) == data[9000:]
    assert file_bytes(node, blobs, 20_000, 10) == b""
    # Only the chunks holding the bytes asked for were read.
    assert sum(1 for e in blobs.events if e[0] == "read") == 4 + 2


def test_a_chunk_that_is_not_what_the_toc_says_is_never_parsed() -> None:
    blob = layer_of(PROGRAM.data)
    tree = tree_of(blob)
    program = find_program(tree, ["/bin/prog"])
    assert program is not None and program.entry is not None
    at = program.entry.chunks[0].offset
    damaged = bytearray(blob.data)
    damaged[at + 20] ^= 0xFF
    blobs = Prefetching({LAYER: bytes(damaged)})
    with pytest.raises(DigestMismatch):
        ask_libraries(tree, program, blobs)
    assert [e for e in blobs.events if e[0] == "prefetch"] == []


def test_a_program_that_is_no_elf_file_asks_for_nothing() -> None:
    blob = layer_of(b"#!/bin/sh\necho hi\n")
    tree = tree_of(blob)
    program = find_program(tree, ["/bin/prog"])
    assert program is not None
    blobs = Prefetching({LAYER: blob.data})
    assert ask_libraries(tree, program, blobs) == 0
    assert [e for e in blobs.events if e[0] == "prefetch"] == []


def test_each_chunk_of_the_program_is_read_and_inflated_once() -> None:
    blob = layer_of(PROGRAM.data + os.urandom(3000))
    tree = tree_of(blob)
    program = find_program(tree, ["/bin/prog"])
    assert program is not None
    blobs = Prefetching({LAYER: blob.data})
    ask_libraries(tree, program, blobs)
    # One chunk, read by every step of the parse: the header, the phdrs, the names.
    assert sum(1 for e in blobs.events if e[0] == "read") == 1


def test_the_files_asked_for_stay_within_the_read_aheads_byte_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(predict_libs, "MAX_BYTES", 8000)
    blob = layer_of(PROGRAM.data)
    tree = tree_of(blob)
    program = find_program(tree, ["/bin/prog"])
    assert program is not None
    blobs = Prefetching({LAYER: blob.data})
    ask_libraries(tree, program, blobs)
    asked = [n for kind, _, _, n in blobs.events if kind == "prefetch"]
    assert sum(asked) == 8000  # three files of about 5000 bytes each, cut at the budget


class _Asking(Prefetching):
    """Says, of every read, whether a trace would keep it."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        super().__init__(blobs)
        self.kept: list[bool] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.kept.append(recorded())
        return super().read_range(digest, offset, length)


def test_the_thread_s_reads_are_kept_by_no_trace() -> None:
    blob = layer_of(PROGRAM.data)
    tree = tree_of(blob)
    program = find_program(tree, ["/bin/prog"])
    assert program is not None
    blobs = _Asking({LAYER: blob.data})
    before = set(threading.enumerate())
    ask_libraries_soon(tree, program, blobs)
    for thread in set(threading.enumerate()) - before:
        thread.join(30)
    assert blobs.kept == [False]
    assert len([e for e in blobs.events if e[0] == "prefetch"]) == 3
