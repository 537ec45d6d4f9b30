"""A local eStargz layer's TOC index held to its blob's tar (``lazyfs.index.estargz_agree``).

A TOC index taken as the layer's own once its blob is in the store is
checked once against the tar stream the other backends apply: an honest
blob keeps it (the fast path), one whose TOC lies is indexed from its tar
at the next ``ensure_index``, and a merged tree kept with the TOC's index
is merged again."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from lazyfs.blobs.ranges import open_layers
from lazyfs.index.estargz_agree import VERDICT_NAME, Verdict, settle
from lazyfs.index.model import LayerIndex
from lazyfs.index.stored import check_data_present, ensure_index, index_path, load_index
from lazyfs.index.stored_remote import ensure_remote_index
from lazyfs.tree import kept
from lazyfs.tree.merge import merge
from providers.digest import digest_bytes
from providers.manifest import OCI_LAYER_GZIP, TOC_DIGEST_ANNOTATION, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.layer_trees import copy_tree, merged_tree_nodes

# The writer's tar headers carry mtime 0: a TOC without modtime says the same.
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
class Adopted:
    """A layer read remotely first, whose verified blob then came into the store."""

    layers: Path
    tmp: Path
    blob: Path
    layer: Layer
    toc_index: LayerIndex  # what ensure_index gave once the blob was local, before the check

    def index(self) -> LayerIndex:
        return ensure_index(self.layers, self.tmp, self.layer.digest, self.blob)


def adopt(blob: Blob, work: Path) -> Adopted:
    layers, tmp = work / "layers", work / "tmp"
    layers.mkdir(parents=True)
    tmp.mkdir()
    layer = layer_of(blob)
    assert ensure_remote_index(layers, tmp, layer, MemoryBlobs({layer.digest: blob.data}))
    path = work / "blob.gz"
    path.write_bytes(blob.data)
    index = ensure_index(layers, tmp, layer.digest, path, own_toc=True)  # as adopt takes it
    # No verdict yet: the TOC index is taken as the blob's own, as it was read remotely.
    assert index.compression == "estargz"
    return Adopted(layers, tmp, path, layer, index)


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
    adopted = adopt(blob, tmp_path)
    verdict = settle(adopted.layers, adopted.layer.digest, adopted.blob)
    assert verdict is not None and not verdict.agrees and verdict.why.startswith(why)
    with caplog.at_level(logging.ERROR, logger="lazyfs.index.stored"):
        index = adopted.index()
    assert index.compression == "gzip"
    assert index == tar_index(blob, tmp_path)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert str(adopted.layer.digest) in errors[0] and why in errors[0]
    # Kept so: stored, and the TOC is not taken again at later starts.
    assert load_index(adopted.layers, adopted.layer.digest) == index
    assert adopted.index() == index
    # Every backend gives one tree: the tar's, the copy backend's.
    data = {index.digest: check_data_present(adopted.layers, adopted.blob, index)}
    source = open_layers(data, MemoryBlobs({index.digest: blob.data}))
    served = merged_tree_nodes(
        merge([index]), lambda ref: source.read_range(ref.digest, ref.offset, ref.size)
    )
    assert served == copy_tree([blob.data], tmp_path / "copy")


def test_a_toc_whose_mtimes_are_not_the_tar_s_gives_way_to_the_tar(tmp_path: Path) -> None:
    # The writer's TOC gives a modtime of 2020 by default, its tar headers 1970.
    blob = write_estargz([File("a", b"a\n")])
    adopted = adopt(blob, tmp_path)
    verdict = settle(adopted.layers, adopted.layer.digest, adopted.blob)
    assert verdict == Verdict(False, "'a': its tar header says mtime_ns 0, not 1600000000000000000")
    assert adopted.index() == tar_index(blob, tmp_path)


@pytest.mark.parametrize(
    "options",
    [{}, {"chunk_size": 5000}, {"chunk_size": 5000, "pack": 3000}, {"prefetch": 2}],
    ids=["member per file", "chunked", "innerOffset", "prefetch landmark"],
)
def test_an_honest_toc_keeps_its_index_and_its_kept_tree(
    options: dict[str, Any], tmp_path: Path
) -> None:
    blob = write_estargz(FILES, **options)
    adopted = adopt(blob, tmp_path)
    digests = [adopted.layer.digest]
    tree = kept.merged_tree(adopted.layers, digests, lambda: [adopted.toc_index])
    assert settle(adopted.layers, adopted.layer.digest, adopted.blob) == Verdict(True)
    assert adopted.index() == adopted.toc_index
    # Checked once: the verdict kept is read back, the blob not inflated again.
    adopted.blob.write_bytes(b"")
    assert settle(adopted.layers, adopted.layer.digest, adopted.blob) == Verdict(True)
    merged_again = kept.merged_tree(adopted.layers, digests, fail_if_called)
    assert merged_again.inodes == tree.inodes


def fail_if_called() -> Sequence[LayerIndex]:
    raise AssertionError("merged again")


def test_a_tree_kept_with_a_toc_index_is_merged_again_once_the_tar_replaces_it(
    tmp_path: Path,
) -> None:
    blob = write_estargz(FILES, chunk_size=5000, edit_toc=motd_is_the_tool)
    adopted = adopt(blob, tmp_path)
    digests = [adopted.layer.digest]
    lying = kept.merged_tree(adopted.layers, digests, lambda: [adopted.toc_index])
    assert kept.merged_tree(adopted.layers, digests, fail_if_called).inodes == lying.inodes
    assert settle(adopted.layers, adopted.layer.digest, adopted.blob) is not None
    index = adopted.index()
    assert index.compression == "gzip"
    merged: list[LayerIndex] = []

    def indexes() -> Sequence[LayerIndex]:
        merged.append(index)
        return [index]

    tree = kept.merged_tree(adopted.layers, digests, indexes)
    assert merged == [index] and tree.inodes == merge([index]).inodes
    assert tree.inodes != lying.inodes  # tar offsets, not the TOC's data space


def test_a_verdict_about_another_toc_s_table_proves_nothing(tmp_path: Path) -> None:
    blob = write_estargz(FILES, edit_toc=setuid_root)
    adopted = adopt(blob, tmp_path)
    verdict = index_path(adopted.layers, adopted.layer.digest).parent / VERDICT_NAME
    verdict.write_text(json.dumps({"table": "another table", "agrees": False, "why": "lies"}))
    assert adopted.index() == adopted.toc_index  # no verdict on this TOC yet: kept
    found = settle(adopted.layers, adopted.layer.digest, adopted.blob)
    assert found is not None and not found.agrees and "uid 1000, not 0" in found.why
    assert adopted.index().compression == "gzip"


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
    adopted = adopt(blob, tmp_path)
    assert settle(adopted.layers, adopted.layer.digest, adopted.blob) == Verdict(True)
    assert adopted.index() == adopted.toc_index
