"""The prefetch trace a first start records beside its read-ahead (``lazyfs.blobs.trace_run``,
``lazyfs.blobs.estargz_reader``): what the read-ahead fetched is kept as the program reads it,
in the program's order, also when the eStargz reader serves it from what it kept."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from lazyfs.blobs.estargz_reader import EstargzChunks
from lazyfs.blobs.trace_run import Recorder, unrecorded
from lazyfs.index.estargz_store import remote_layers_dir
from lazyfs.index.model import Kind
from lazyfs.index.stored import check_data_present
from lazyfs.index.stored_remote import ensure_remote_index
from lazyfs.index.trace import load_trace
from providers.digest import Digest, digest_bytes
from providers.manifest import OCI_LAYER_GZIP, TOC_DIGEST_ANNOTATION, Layer
from tests.support.blob_sources import MemoryBlobs, Watched
from tests.support.estargz_writer import File, write_estargz

KEY = f"{Digest('sha256:' + 'ab' * 32)}@{'c' * 32}"


def test_chunks_read_ahead_are_recorded_when_and_as_the_program_reads_them(
    tmp_path: Path,
) -> None:
    # Random bytes: each file's compressed chunks span 64 KiB units of their own.
    names = ("ahead", "asked", "never")
    blob = write_estargz([File(name, os.urandom(200_000)) for name in names])
    layer = Layer(
        digest_bytes(blob.data), OCI_LAYER_GZIP, len(blob.data), None,
        ((TOC_DIGEST_ANNOTATION, blob.toc_digest),),
    )  # fmt: skip
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    index = ensure_remote_index(layers, tmp, layer, MemoryBlobs({layer.digest: blob.data}))
    assert index is not None
    home = remote_layers_dir(layers, layer)
    assert home is not None
    blobs = Watched({layer.digest: blob.data})
    chunks = EstargzChunks({layer.digest: check_data_present(home, Path(), index).path}, blobs)
    files = {e.path[0]: e for e in index.entries if e.kind is Kind.FILE}
    recorder = blobs.watcher = Recorder(tmp_path / "first", KEY, settle=3600.0, limit=3600.0)

    def read(name: str) -> list[tuple[int, int]]:
        """Read file ``name`` whole; the blob ranges that fetched."""
        blobs.fetched.clear()
        assert chunks.read_range(layer.digest, files[name].offset, files[name].size)
        return [(offset, length) for _, offset, length in blobs.fetched]

    ahead: list[list[tuple[int, int]]] = []

    def read_ahead() -> None:  # a thread of its own, as the predictor's
        unrecorded()
        ahead.extend(read(name) for name in ("ahead", "never"))

    thread = threading.Thread(target=read_ahead)
    thread.start()
    thread.join()
    assert len(ahead) == 2 and all(ahead)
    # The program: a file nothing read ahead, then one read ahead (kept: not fetched), twice.
    asked = read("asked")
    assert asked and read("ahead") == [] and read("ahead") == []
    recorder.serving()
    assert recorder.finish() is not None
    # What a trace of the program's reads alone keeps: "asked", then "ahead"; not "never".
    alone = Recorder(tmp_path / "alone", KEY)
    for offset, length in [*asked, *ahead[0]]:
        alone.read(layer.digest, offset, length)
    alone.serving()
    assert alone.finish() is not None
    trace, want = load_trace(tmp_path / "first", KEY), load_trace(tmp_path / "alone", KEY)
    assert trace is not None and want is not None
    assert trace.reads == want.reads
