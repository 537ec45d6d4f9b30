"""LayerFormat: one per kind of layer blob, found by its bytes or by the name an index records."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from lazyfs.index.formats import (
    FORMATS,
    GZIP,
    PLAIN_TAR,
    ZSTD,
    LayerFormat,
    build_index,
    format_named,
    format_of,
)
from lazyfs.index.model import dumps
from lazyfs.index.stored import check_data_present, ensure_index, index_path, load_index
from providers.compression import sniff
from providers.digest import digest_bytes
from providers.errors import BadImage
from tests.support.images import Entry, write_layer

LAYER = [Entry("etc", "dir"), Entry("etc/passwd", data=b"root\n")]
DIGEST = digest_bytes(b"layer")


@pytest.mark.parametrize(
    ("compress", "kind"),
    [
        (lambda data: data, PLAIN_TAR),
        (gzip.compress, GZIP),
        (zstandard.ZstdCompressor().compress, ZSTD),
    ],
)
def test_the_bytes_name_the_format(
    tmp_path: Path, compress: Callable[[bytes], bytes], kind: LayerFormat
) -> None:
    tar = write_layer(LAYER, tmp_path / "layer.tar").read_bytes()
    head = compress(tar)[:8]
    assert format_of(head) is kind
    assert sniff(head) == kind.name  # the signatures apply and diff_id go by


@pytest.mark.parametrize(("compress", "name"), [(bz2.compress, "bzip2"), (lzma.compress, "xz")])
def test_compressions_that_cannot_be_indexed_are_refused(
    tmp_path: Path, compress: Callable[[bytes], bytes], name: str
) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(compress(write_layer(LAYER, tmp_path / "layer.tar").read_bytes()))
    with pytest.raises(BadImage, match=f"bad layer {DIGEST}: unsupported compression {name}"):
        build_index(DIGEST, blob, tmp_path)


def test_every_format_is_found_by_the_name_its_indexes_record() -> None:
    assert sorted(FORMATS) == ["estargz", "gzip", "none", "zstd"]
    for name, kind in FORMATS.items():
        assert format_named(name) is kind and kind.name == name
    with pytest.raises(BadImage, match="'lz4' is not one of estargz, gzip, none, zstd"):
        format_named("lz4")


def test_an_index_of_a_format_not_known_here_is_built_again_not_misread(tmp_path: Path) -> None:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    data = gzip.compress(write_layer(LAYER, tmp_path / "layer.tar").read_bytes())
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    digest = digest_bytes(data)
    index = ensure_index(layers, tmp, digest, blob)
    # What a newer lazyfs might leave: a format this one does not know.
    unknown = dataclasses.replace(index, compression="lz4")
    index_path(layers, digest).write_text(dumps(unknown), encoding="utf-8")
    assert load_index(layers, digest) == unknown
    with pytest.raises(BadImage, match="'lz4' is not one of"):
        check_data_present(layers, blob, unknown)
    assert ensure_index(layers, tmp, digest, blob) == index
    assert load_index(layers, digest) == index
