"""Names in an eStargz TOC are taken as the layer's tar gives them.

A TOC is JSON a hostile image writes: its strings can hold surrogates no tar
header decodes to, and it can give eStargz's own names (the TOC's, the
landmarks') to entries eStargz never writes.  Both are checked against what
the tar path (the same blob indexed whole, as a gzip layer) does with the
same layer: the same refusal, or the same entries and tree, but for the
plain files eStargz adds, which the TOC path hides.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from lazyfs.index.estargz_toc import parse_toc
from lazyfs.index.model import IndexEntry, LayerIndex
from lazyfs.index.stored import ensure_index
from lazyfs.index.stored_remote import ensure_remote_index
from lazyfs.tree.merge import merge
from providers.digest import digest_bytes
from providers.errors import BadImage, LazyfsError
from providers.manifest import OCI_LAYER_GZIP, TOC_DIGEST_ANNOTATION, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.layer_trees import merged_tree_nodes

TOC_NAME = ("stargz.index.json",)
NO_PREFETCH = (".no.prefetch.landmark",)


def toc(*entries: dict[str, Any]) -> bytes:
    # json.dumps writes a lone surrogate as its \u escape, as a hostile writer can.
    return json.dumps({"version": 1, "entries": list(entries)}).encode()


# "\udcc3\udca9" is the escaped spelling of the bytes of "é", which a tar reader
# decodes to "é": a second str for one name.  The others are no bytes at all.
NOT_FROM_A_TAR = ["\udcc3\udca9", "x\ud800", "x\udc41", "x" * 300 + "\udfff"]


@pytest.mark.parametrize(
    "text", NOT_FROM_A_TAR, ids=["escaped UTF-8", "high surrogate", "low surrogate", "long"]
)
@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (lambda t: {"name": t, "type": "reg"}, "has a name"),
        (lambda t: {"name": "l", "type": "symlink", "linkName": t}, "has a linkName"),
        (lambda t: {"name": "l", "type": "hardlink", "linkName": t}, "has a linkName"),
        (lambda t: {"name": "f", "type": "reg", "xattrs": {f"user.{t}": "MQ=="}}, "xattr name"),
    ],
    ids=["name", "symlink target", "hardlink target", "xattr name"],
)
def test_a_string_no_tar_header_gives_is_refused_naming_its_field(
    entry: Any, field: str, text: str
) -> None:
    data = toc({"name": "f", "type": "reg"}, entry(text))
    with pytest.raises(BadImage, match=field) as refused:
        parse_toc(data, toc_offset=1000, layer="l")
    assert "\n" not in str(refused.value)


def test_names_a_tar_reader_gives_are_kept() -> None:
    # Bytes that are not UTF-8 come out of tarfile as U+DC80-U+DCFF, so may come out of a TOC.
    data = toc(
        {"name": "caf\u00e9", "type": "reg", "xattrs": {"user.\udcff": "MQ=="}},
        {"name": "a\udcff", "type": "symlink", "linkName": "b\udcfe"},
    )
    entries = parse_toc(data, toc_offset=1000, layer="l").entries
    assert [(e.name, e.link_name) for e in entries] == [("caf\u00e9", ""), ("a\udcff", "b\udcfe")]
    assert entries[0].xattrs == (("user.\udcff", b"1"),)


# --- eStargz's own names, against the tar path ---------------------------------------


def layer_of(blob: Blob) -> Layer:
    annotations = ((TOC_DIGEST_ANNOTATION, blob.toc_digest),)
    return Layer(digest_bytes(blob.data), OCI_LAYER_GZIP, len(blob.data), None, annotations)


def remote(blob: Blob, work: Path) -> LayerIndex:
    """The index of ``blob`` made from its TOC, read by range."""
    layer = layer_of(blob)
    (work / "layers").mkdir(parents=True)
    (work / "tmp").mkdir()
    blobs = MemoryBlobs({layer.digest: blob.data})
    index = ensure_remote_index(work / "layers", work / "tmp", layer, blobs)
    assert index is not None
    return index


def scanned(blob: Blob, work: Path) -> LayerIndex:
    """The index of ``blob`` made from its tar, as for a layer pulled whole."""
    (work / "layers").mkdir(parents=True)
    (work / "tmp").mkdir()
    path = work / "blob.gz"
    path.write_bytes(blob.data)
    return ensure_index(work / "layers", work / "tmp", digest_bytes(blob.data), path)


def verdict(build: Any, blob: Blob, work: Path) -> tuple[str, LayerIndex | None]:
    try:
        return "accepted", build(blob, work)
    except LazyfsError as error:
        return f"{type(error).__name__}: {error}", None


def without_offset(entry: IndexEntry) -> IndexEntry:
    return dataclasses.replace(entry, offset=0)


def shape(index: LayerIndex, leave_out: set[str]) -> dict[str, Any]:
    """The merged tree of ``index`` (content not read), but for the paths ``leave_out``."""
    nodes = merged_tree_nodes(merge([index]), lambda ref: b"")
    return {path: node for path, node in nodes.items() if path not in leave_out}


def F(name: str, data: bytes = b"", **fields: Any) -> File:
    # Tar headers of the writer carry mtime 0: a TOC without modtime says the same.
    return File(name, data, modtime="", **fields)


@pytest.mark.parametrize(
    "files",
    [
        # An overlay whiteout, and an xattr name Linux refuses, under eStargz's names.
        [F("a", b"1"), F(".prefetch.landmark", type="char", dev=(0, 0))],
        [F("a", b"1"), F("stargz.index.json", b"x", xattrs={"nonamespace": b"1"})],
    ],
    ids=["landmark a 0/0 device", "TOC name with a bad xattr"],
)
def test_own_names_get_the_verdict_of_the_tar(files: list[File], tmp_path: Path) -> None:
    blob = write_estargz(files)
    as_tar, _ = verdict(scanned, blob, tmp_path / "tar")
    as_toc, _ = verdict(remote, blob, tmp_path / "toc")
    assert as_toc == as_tar


@pytest.mark.parametrize(
    ("files", "hidden"),
    [
        # The writer's own .no.prefetch.landmark, the link's source: shown, as in the tar.
        ([F("l", type="hardlink", link=".no.prefetch.landmark")], set()),
        # A directory of an own name is the image's, with its own mode and owner.
        (
            [F(".prefetch.landmark/", type="dir", mode=0o700, uid=7), F(".prefetch.landmark/x")],
            {".no.prefetch.landmark"},
        ),
    ],
    ids=["hardlink to the landmark", "landmark a directory"],
)
def test_own_names_eStargz_never_writes_are_the_images(
    files: list[File], hidden: set[str], tmp_path: Path
) -> None:
    blob = write_estargz(files)
    as_tar = scanned(blob, tmp_path / "tar")
    as_toc = remote(blob, tmp_path / "toc")
    # The tar ends with the TOC, which the TOC does not list.
    assert as_tar.entries[-1].path == TOC_NAME
    expected = [e for e in as_tar.entries[:-1] if "/".join(e.path) not in hidden]
    assert [without_offset(e) for e in as_toc.entries] == [without_offset(e) for e in expected]
    assert shape(as_toc, set()) == shape(as_tar, hidden | {"stargz.index.json"})


def test_a_hardlink_to_the_toc_s_name_resolves_as_in_the_tar(tmp_path: Path) -> None:
    blob = write_estargz(
        [F("stargz.index.json", b"fake"), F("l", type="hardlink", link="stargz.index.json")]
    )
    as_tar = scanned(blob, tmp_path / "tar")
    as_toc = remote(blob, tmp_path / "toc")
    assert [without_offset(e) for e in as_toc.entries] == [
        without_offset(e) for e in as_tar.entries[:-1] if e.path != NO_PREFETCH
    ]
    # In the tar the TOC the blob ends with replaces the name; "l" keeps the file.
    with_toc, with_tar = shape(as_toc, set())["l"], shape(as_tar, set())["l"]
    assert with_toc._replace(hardlinks=()) == with_tar._replace(hardlinks=())


def test_the_files_estargz_writes_are_hidden(tmp_path: Path) -> None:
    blob = write_estargz([F("a", b"1")], prefetch=1)
    as_toc = remote(blob, tmp_path / "toc")
    assert [e.path for e in as_toc.entries] == [("a",)]
