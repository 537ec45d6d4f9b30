"""The index artifact format: round trips, and hostile blobs refused in one line."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.index.artifact import (
    MAX_SPAN,
    LayerArtifact,
    build_artifact,
    decode,
    encode,
    parse_checkpoints,
)
from lazyfs.index.formats import build_index
from lazyfs.index.model import CHECKPOINTS_NAME, Kind
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from tests.support.images import Entry, write_layer

SPACING = 1 << 16
_random = random.Random(13)
FILES = [
    Entry("small", data=b"hello\n"),
    Entry("noise", data=_random.randbytes(300_000)),
    Entry("text", data=b"".join(b"line %d\n" % i for i in range(30_000))),
]


def _layer(tmp: Path, compress: bool) -> tuple[Path, LayerArtifact]:
    tar = write_layer(FILES, tmp / "layer.tar").read_bytes()
    blob = tmp / "blob"
    blob.write_bytes(gzip.compress(tar) if compress else tar)
    digest = digest_bytes(blob.read_bytes())
    scratch = tmp / "scratch"
    scratch.mkdir()
    index = build_index(digest, blob, scratch, spacing=SPACING)
    points = scratch / CHECKPOINTS_NAME
    checkpoints = points.read_bytes() if points.exists() else b""
    return blob, build_artifact(index, blob, checkpoints)


@pytest.fixture(scope="module")
def gz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LayerArtifact]:
    return _layer(tmp_path_factory.mktemp("gz"), True)


@pytest.fixture(scope="module")
def tar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LayerArtifact]:
    return _layer(tmp_path_factory.mktemp("tar"), False)


def _split(data: bytes) -> tuple[dict[str, object], bytes]:
    head, _, body = data.partition(b"\n")
    return json.loads(head), body


def _join(header: dict[str, object], body: bytes) -> bytes:
    return json.dumps(header).encode() + b"\n" + body


@pytest.mark.parametrize("kind", ["gz", "tar"])
def test_round_trip(kind: str, request: pytest.FixtureRequest) -> None:
    _blob, artifact = request.getfixturevalue(kind)
    assert decode(encode(artifact), layer=artifact.layer) == artifact


def test_spans_cover_the_blob_and_hash_it(gz: tuple[Path, LayerArtifact]) -> None:
    blob, artifact = gz
    data = blob.read_bytes()
    assert sum(span.length for span in artifact.spans) == len(data)
    for span in artifact.spans:
        piece = data[span.offset : span.offset + span.length]
        assert hashlib.sha256(piece).hexdigest() == span.sha256
    starts = {span.offset for span in artifact.spans}
    points = parse_checkpoints(artifact.checkpoints, len(data), artifact.index.tar_size)
    assert len(points) > 3  # the spacing made several checkpoints
    assert all(point.offset in starts for point in points if point.offset < len(data))


def test_another_layer_is_refused(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    other = Digest("sha256:" + "0" * 64)
    with pytest.raises(BadImage, match=r"indexes layer .*, not sha256:0000"):
        decode(encode(artifact), layer=other)


def _mutated(artifact: LayerArtifact, **changes: object) -> bytes:
    header, body = _split(encode(artifact))
    header.update(changes)
    return _join(header, body)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lazyfs_index": 2}, "unknown version 2"),
        ({"lazyfs_index": None}, "unknown version None"),
        ({"layer": "sha256:xyz"}, "layer:"),
        ({"layer_size": -1}, "layer_size -1 out of range"),
        ({"layer_size": True}, "layer_size missing"),
        ({"compression": "zstd"}, "compression 'zstd'"),
        ({"index_bytes": 10}, "header promises"),
        ({"checkpoints_bytes": 1 << 40}, "header promises"),
        ({"tar_size": 5}, "disagrees with its header"),
        ({"spans": "x"}, "spans missing"),
    ],
)
def test_bad_header_fields(
    gz: tuple[Path, LayerArtifact], changes: dict[str, object], message: str
) -> None:
    _, artifact = gz
    with pytest.raises(BadImage, match=message):
        decode(_mutated(artifact, **changes))


def test_spans_must_tile_the_blob(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    spans: list[list[Any]] = [[s.offset, s.length, s.sha256] for s in artifact.spans]
    cases = {
        "ended at": [spans[0], spans[2], *spans[3:]],  # a gap
        "runs past": [*spans[:-1], [spans[-1][0], spans[-1][1] + 1, spans[-1][2]]],
        "cover": spans[:-1],
        "not .offset, length": [[0, 1, "nothex"], *spans[1:]],
        "length": [[0, 0, spans[0][2]], *spans],
    }
    for message, value in cases.items():
        with pytest.raises(BadImage, match=message):
            decode(_mutated(artifact, spans=value))
    too_long = [[0, MAX_SPAN + 1, spans[0][2]]]
    with pytest.raises(BadImage, match="length"):
        decode(_mutated(artifact, spans=too_long, layer_size=MAX_SPAN + 1))


def test_spans_must_start_at_each_checkpoint(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    s = artifact.spans
    merged = [[s[0].offset, s[0].length + s[1].length, s[0].sha256]]
    rest = [[x.offset, x.length, x.sha256] for x in s[2:]]
    with pytest.raises(BadImage, match="not where a span starts"):
        decode(_mutated(artifact, spans=merged + rest))


def test_entries_past_the_tar_stream(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    entries = list(artifact.index.entries)
    last = next(i for i, e in enumerate(entries) if e.size)
    entries[last] = dataclasses.replace(entries[last], offset=artifact.index.tar_size)
    index = dataclasses.replace(artifact.index, entries=tuple(entries))
    with pytest.raises(BadImage, match="reaches past"):
        decode(encode(dataclasses.replace(artifact, index=index)))


def _with_checkpoints(artifact: LayerArtifact, data: bytes) -> bytes:
    index = dataclasses.replace(artifact.index, checkpoints_size=len(data))
    return encode(dataclasses.replace(artifact, index=index, checkpoints=data))


def test_hostile_checkpoints(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    data = bytearray(artifact.checkpoints)
    head = struct.Struct("<5sBBQQIII")
    point = struct.Struct("<QQBB")
    cases: dict[str, bytes] = {"truncated": bytes(data[:10])}
    wrong_magic = bytearray(data)
    wrong_magic[0:5] = b"NOPE!"
    cases["not an indexed_gzip"] = bytes(wrong_magic)
    # The second point's compressed offset past the blob.
    past = bytearray(data)
    struct.pack_into("<Q", past, head.size + point.size, artifact.layer_size + 1)
    cases["out of order or past"] = bytes(past)
    count = bytearray(data)
    struct.pack_into("<I", count, 31, 1 << 30)
    cases["do not fit"] = bytes(count)
    cases["their points need"] = bytes(data[:-1])
    for message, value in cases.items():
        with pytest.raises(BadImage, match=message):
            decode(_with_checkpoints(artifact, value))


def test_no_header_line() -> None:
    with pytest.raises(BadImage, match="no header line"):
        decode(b"{}")
    with pytest.raises(BadImage, match="not JSON"):
        decode(b"{\n")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
def test_any_flipped_byte_decodes_or_is_refused(
    gz: tuple[Path, LayerArtifact], position: int, value: int
) -> None:
    """One verdict, never another exception: decode is the registry's boundary."""
    _, artifact = gz
    data = bytearray(encode(artifact))
    data[position % len(data)] = value
    with contextlib.suppress(BadImage):
        decode(bytes(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"path": ("..", "etc", "passwd")}, "not a plain relative path"),
        ({"path": ("etc", "", "x")}, "not a plain relative path"),
        ({"path": ("a\0b",)}, "not a plain relative path"),
        ({"kind": Kind.HARDLINK, "target": "../../outside"}, "names no plain path"),
        ({"mode": 0o170000}, "bad mode or size"),
        ({"extents": ((0, 10**9, 0),)}, "extents outside it"),
    ],
)
def test_entries_a_scan_never_gives(
    gz: tuple[Path, LayerArtifact], change: dict[str, Any], message: str
) -> None:
    _, artifact = gz
    entries = list(artifact.index.entries)
    number = next(i for i, e in enumerate(entries) if e.size)
    entries[number] = dataclasses.replace(entries[number], **change)
    index = dataclasses.replace(artifact.index, entries=tuple(entries))
    with pytest.raises(BadImage, match=message):
        decode(encode(dataclasses.replace(artifact, index=index)))
