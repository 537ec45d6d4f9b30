"""A local eStargz layer's TOC index held to its blob's tar (``lazyfs.index.estargz_agree``).

The process that adopts a layer read remotely takes the index its own TOC
gave (``ensure_index(own_toc=True)``) only once that TOC is held to the tar
stream the other backends apply: an honest blob keeps it (the fast path),
one whose TOC lies is indexed from its tar, and a merged tree kept with the
TOC's index is merged again.  A start keeps a TOC index only with a verdict
that it agrees: none (an older store's, or a check that never finished) is
the tar's index."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from lazyfs.blobs.ranges import open_layers
from lazyfs.index.estargz_agree import VERDICT_NAME, Verdict, differences, recorded
from lazyfs.index.estargz_chunks import loads as load_chunks
from lazyfs.index.model import CHUNKS_NAME, LayerIndex
from lazyfs.index.stored import check_data_present, ensure_index, index_path, load_index
from lazyfs.index.stored_remote import ensure_remote_index
from lazyfs.tree import kept
from lazyfs.tree.merge import merge
from providers.digest import digest_bytes
from providers.manifest import OCI_LAYER_GZIP, TOC_DIGEST_ANNOTATION, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.layer_trees import copy_tree, merged_tree_nodes

# The writer's tar headers carry the TOC's modtime, or 0 without one.
TOOL = b"#!/bin/sh\necho hi\n"
MOTD = b"Hello, honest tar\n"  # as long as TOOL: a chunk of one fits the other
FILES = [
    File("bin/", type="dir", mode=0o755, modtime=""),
    File("bin/tool", TOOL, mode=0o755, uid=1000, modtime=""),
    File("bin/sh", type="symlink", link="tool", modtime=""),
    File("bin/hard", type="hardlink", link="bin/tool", modtime=""),
    File("etc/", type="dir", modtime=""),
    File("etc/motd", MOTD, modtime="", xattrs={"user.a": b"1", "user.b": b"2"}),
    File("etc/.wh.gone", modtime=""),
    File("dev/null", type="char", mode=0o666, dev=(1, 3), modtime=""),
    File("big", bytes(range(256)) * 300, modtime=""),
    File("empty", modtime=""),
]  # fmt: skip


def layer_of(blob: Blob) -> Layer:
    annotations = ((TOC_DIGEST_ANNOTATION, blob.toc_digest),)
    return Layer(digest_bytes(blob.data), OCI_LAYER_GZIP, len(blob.data), None, annotations)


@dataclasses.dataclass
class Remote:
    """A layer read remotely, whose verified blob then came into the store."""

    layers: Path
    tmp: Path
    blob: Path
    layer: Layer
    toc_index: LayerIndex  # what its TOC gave while it was remote

    def adopt(self) -> LayerIndex:
        """What the adopting process makes the layer's index."""
        return ensure_index(self.layers, self.tmp, self.layer.digest, self.blob, own_toc=True)

    def index(self) -> LayerIndex:
        """What a later start finds."""
        return ensure_index(self.layers, self.tmp, self.layer.digest, self.blob)

    @property
    def home(self) -> Path:
        return index_path(self.layers, self.layer.digest).parent


def remote(blob: Blob, work: Path) -> Remote:
    layers, tmp = work / "layers", work / "tmp"
    layers.mkdir(parents=True)
    tmp.mkdir()
    layer = layer_of(blob)
    toc_index = ensure_remote_index(layers, tmp, layer, MemoryBlobs({layer.digest: blob.data}))
    assert toc_index is not None
    path = work / "blob.gz"
    path.write_bytes(blob.data)
    return Remote(layers, tmp, path, layer, toc_index)


def tar_index(blob: Blob, work: Path) -> LayerIndex:
    """The index the blob's tar gives, in a store that never read its TOC."""
    layers, tmp = work / "tar-layers", work / "tar-tmp"
    layers.mkdir()
    tmp.mkdir()
    path = work / "tar-blob.gz"
    path.write_bytes(blob.data)
    return ensure_index(layers, tmp, digest_bytes(blob.data), path)


def the(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in doc["entries"] if e["name"] == name)


def setuid_root(doc: dict[str, Any]) -> None:
    the(doc, "bin/tool").update(mode=0o4755, uid=0)


def motd_is_the_tool(doc: dict[str, Any]) -> None:
    # The same size, digests that check out: only where their bytes are lies.
    motd, tool = the(doc, "etc/motd"), the(doc, "bin/tool")
    for key in ("offset", "chunkDigest", "digest"):
        motd[key], tool[key] = tool[key], motd[key]


def extra_symlink(doc: dict[str, Any]) -> None:
    doc["entries"].append(
        {"name": "etc/extra", "type": "symlink", "linkName": "/proc/self/root", "mode": 0o777}
    )


def hidden_whiteout(doc: dict[str, Any]) -> None:
    doc["entries"].remove(the(doc, "etc/.wh.gone"))


def another_xattr(doc: dict[str, Any]) -> None:
    the(doc, "etc/motd")["xattrs"]["user.b"] = "Mw=="  # b"3"


LIES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (setuid_root, "'bin/tool': its tar header says mode 493, not 2541; uid 1000, not 0"),
    (motd_is_the_tool, "'bin/tool': its chunk at 0 is not the file's data in the tar"),
    (extra_symlink, "the TOC has 'etc/extra', which the tar lacks"),
    (hidden_whiteout, "the TOC has 'dev/null' where the tar has 'etc/gone (whiteout)'"),
    (another_xattr, "'etc/motd': its tar header says xattrs"),
]


@pytest.mark.parametrize(("lie", "why"), LIES, ids=[lie.__name__ for lie, _ in LIES])
def test_a_toc_that_differs_from_its_tar_gives_way_to_the_tar(
    lie: Callable[[dict[str, Any]], None],
    why: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blob = write_estargz(FILES, edit_toc=lie)
    layer = remote(blob, tmp_path)
    with caplog.at_level(logging.ERROR, logger="lazyfs.index.stored"):
        index = layer.adopt()
    assert index.compression == "gzip"
    assert index == tar_index(blob, tmp_path)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert str(layer.layer.digest) in errors[0] and why in errors[0]
    said = json.loads((layer.home / VERDICT_NAME).read_text())
    assert said["agrees"] is False and said["why"].startswith(why)
    # Kept so: stored, and the TOC is not taken again, by a start or another adoption.
    assert load_index(layer.layers, layer.layer.digest) == index
    assert layer.index() == index and layer.adopt() == index
    # Every backend gives one tree: the tar's, the copy backend's.
    data = {index.digest: check_data_present(layer.layers, layer.blob, index)}
    source = open_layers(data, MemoryBlobs({index.digest: blob.data}))
    served = merged_tree_nodes(
        merge([index]), lambda ref: source.read_range(ref.digest, ref.offset, ref.size)
    )
    assert served == copy_tree([blob.data], tmp_path / "copy")


def test_a_toc_whose_mtimes_are_not_the_tar_s_gives_way_to_the_tar(tmp_path: Path) -> None:
    # The TOC says 2020 where the tar says 1970 (the writer's tar took the TOC's before).
    blob = write_estargz(FILES, edit_toc=lambda doc: the(doc, "bin/").update(
        modtime="2020-09-13T12:26:40Z"
    ))  # fmt: skip
    layer = remote(blob, tmp_path)
    assert layer.adopt() == tar_index(blob, tmp_path)
    said = json.loads((layer.home / VERDICT_NAME).read_text())
    assert said["agrees"] is False and "mtime_ns" in said["why"]


@pytest.mark.parametrize(
    "options",
    [{}, {"chunk_size": 5000}, {"chunk_size": 5000, "pack": 3000}, {"prefetch": 2}],
    ids=["member per file", "chunked", "innerOffset", "prefetch landmark"],
)
def test_an_honest_toc_keeps_its_index_and_its_kept_tree(
    options: dict[str, Any], tmp_path: Path
) -> None:
    blob = write_estargz(FILES, **options)
    layer = remote(blob, tmp_path)
    digests = [layer.layer.digest]
    assert layer.adopt() == layer.toc_index
    assert recorded(layer.home, layer.home / CHUNKS_NAME) == Verdict(True)
    tree = kept.merged_tree(layer.layers, digests, lambda: [layer.toc_index])
    # Later starts read the verdict kept: the blob is not looked at again.
    layer.blob.write_bytes(b"")
    assert layer.index() == layer.toc_index
    merged_again = kept.merged_tree(layer.layers, digests, fail_if_called)
    assert merged_again.inodes == tree.inodes


def fail_if_called() -> Sequence[LayerIndex]:
    raise AssertionError("merged again")


def test_a_tree_kept_with_a_toc_index_is_merged_again_once_the_tar_replaces_it(
    tmp_path: Path,
) -> None:
    blob = write_estargz(FILES, chunk_size=5000, edit_toc=motd_is_the_tool)
    layer = remote(blob, tmp_path)
    digests = [layer.layer.digest]
    lying = kept.merged_tree(layer.layers, digests, lambda: [layer.toc_index])
    assert kept.merged_tree(layer.layers, digests, fail_if_called).inodes == lying.inodes
    index = layer.adopt()
    assert index.compression == "gzip"
    merged: list[LayerIndex] = []

    def indexes() -> Sequence[LayerIndex]:
        merged.append(index)
        return [index]

    tree = kept.merged_tree(layer.layers, digests, indexes)
    assert merged == [index] and tree.inodes == merge([index]).inodes
    assert tree.inodes != lying.inodes  # tar offsets, not the TOC's data space


def test_a_toc_index_with_no_verdict_that_it_agrees_is_the_tar_s_at_the_next_start(
    tmp_path: Path,
) -> None:
    # An honest TOC, taken: then its verdict lost (an older store's index had none), or
    # one about another TOC's table in its place. Neither proves this one: built from
    # the tar, as for any layer pulled whole.
    blob = write_estargz(FILES, chunk_size=5000)
    for number, verdict in enumerate([None, {"table": "another", "agrees": True, "why": ""}]):
        layer = remote(blob, tmp_path / str(number))
        assert layer.adopt().compression == "estargz"
        (layer.home / VERDICT_NAME).unlink()
        if verdict is not None:
            (layer.home / VERDICT_NAME).write_text(json.dumps(verdict))
        assert layer.index() == tar_index(blob, tmp_path / str(number))


def test_a_check_that_does_not_finish_takes_nothing(tmp_path: Path) -> None:
    # The verdict cannot be kept (here a directory where its file goes; a kill, the
    # disk full): the adoption fails, and the next start indexes the tar.
    blob = write_estargz(FILES, edit_toc=setuid_root)
    layer = remote(blob, tmp_path)
    (layer.home / VERDICT_NAME).mkdir()
    with pytest.raises(OSError):
        layer.adopt()
    assert load_index(layer.layers, layer.layer.digest) is None
    (layer.home / VERDICT_NAME).rmdir()
    assert layer.index() == tar_index(blob, tmp_path)


def test_the_check_keeps_no_more_than_the_chunk_table_of_a_blob_of_empty_members(
    tmp_path: Path,
) -> None:
    # A million empty gzip members (20 MB) before the TOC: a span each was 166 MB.
    blob = write_estargz(FILES, chunk_size=5000)
    empty = gzip.compress(b"", mtime=0)
    padded = blob.data[: blob.toc_offset] + empty * 200_000 + blob.data[blob.toc_offset :]
    path = tmp_path / "padded.gz"
    path.write_bytes(padded)
    layer = remote(blob, tmp_path / "remote")
    (chunks,) = (layer.home / "estargz-tocs").glob("*/*/" + CHUNKS_NAME)
    table = load_chunks(chunks.read_text())
    tracemalloc.start()
    try:
        why = differences(path, layer.toc_index.entries, table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert why is None
    assert peak < 8 << 20  # a span of each of 200,000 members alone is more


@pytest.mark.parametrize(
    "extra",
    [
        # A link to the landmark the writer puts first: the TOC view shows the landmark.
        [File("l", type="hardlink", link=".no.prefetch.landmark", modtime="")],
        # An own name that is no plain file is the image's: shown by both.
        [
            File(".prefetch.landmark/", type="dir", mode=0o700, uid=7, modtime=""),
            File(".prefetch.landmark/x", modtime=""),
        ],
    ],
    ids=["hardlink to the landmark", "own name as a directory"],
)
def test_own_names_the_toc_view_shows_are_held_to_the_tar_as_any_entry(
    extra: list[File], tmp_path: Path
) -> None:
    blob = write_estargz([*FILES, *extra])
    layer = remote(blob, tmp_path)
    assert layer.adopt() == layer.toc_index
    assert recorded(layer.home, layer.home / CHUNKS_NAME) == Verdict(True)


def test_a_verdict_file_that_does_not_say_true_is_no_agreement(tmp_path: Path) -> None:
    blob = write_estargz(FILES, chunk_size=5000)
    layer = remote(blob, tmp_path)
    assert layer.adopt().compression == "estargz"
    said = json.loads((layer.home / VERDICT_NAME).read_text())
    (layer.home / VERDICT_NAME).write_text(json.dumps({**said, "agrees": "false"}))
    assert recorded(layer.home, layer.home / CHUNKS_NAME) == Verdict(False)
    assert layer.index() == tar_index(blob, tmp_path)
