"""The index artifact format: round trips, and hostile blobs refused in one line."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import random
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.index import artifact as artifact_module
from lazyfs.index.artifact import (
    MAX_SPAN,
    WINDOW,
    LayerArtifact,
    decode,
    encode,
    first_byte,
)
from lazyfs.index.artifact_build import build_artifact
from lazyfs.index.formats import build_index
from lazyfs.index.model import FORMAT_VERSION, Kind, dumps, loads
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from providers.layer_limits import LayerLimits
from tests.support.images import Entry, write_layer
from tests.support.published_artifacts import artifact_of

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
    artifact, windows = artifact_of(blob, digest, tmp / "scratch", spacing=SPACING)
    (tmp / "windows").write_bytes(windows)
    return blob, artifact


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
    assert len(artifact.points) > 3  # the spacing made several checkpoints
    assert all(first_byte(point) in starts for point in artifact.points)


def test_windows_are_apart_compressed_and_hashed(gz: tuple[Path, LayerArtifact]) -> None:
    blob, artifact = gz
    windows = (blob.parent / "windows").read_bytes()
    assert artifact.windows == digest_bytes(windows) and artifact.windows_size == len(windows)
    assert artifact.points[0].window is None and artifact.points[0].position == 0
    refs = [p.window for p in artifact.points[1:]]
    assert all(ref is not None for ref in refs)
    at = 0
    for ref in refs:
        assert ref is not None and ref.offset == at
        piece = windows[at : at + ref.length]
        assert hashlib.sha256(piece).hexdigest() == ref.sha256
        assert len(zlib.decompress(piece)) == WINDOW
        at += ref.length
    assert at == len(windows)
    # The head holds no window: it is a small part of what format 1 was.
    assert len(encode(artifact)) < len(refs) * WINDOW // 4
    assert artifact.index.checkpoints_size == 0


def test_a_gzip_layer_of_several_members_is_not_published(tmp_path: Path) -> None:
    tar = write_layer(FILES, tmp_path / "layer.tar").read_bytes()
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(tar[:20480]) + gzip.compress(tar[20480:]))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    index = build_index(digest_bytes(blob.read_bytes()), blob, scratch)
    assert index.compression == "gzip"
    assert build_artifact(index, blob, spacing=SPACING) is None


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
        ({"lazyfs_index": 1}, "unknown version 1"),
        ({"lazyfs_index": None}, "unknown version None"),
        ({"layer": "sha256:xyz"}, "layer:"),
        ({"layer_size": -1}, "layer_size -1 out of range"),
        ({"layer_size": True}, "layer_size missing"),
        ({"compression": "zstd"}, "compression 'zstd'"),
        ({"index_bytes": 10}, "header promises"),
        ({"index_bytes": 1 << 51}, "out of range"),
        ({"windows": None}, "windows take"),
        ({"windows": {"digest": "sha256:x", "size": 1}}, "windows:"),
        ({"windows": {"digest": "sha256:" + "0" * 64, "size": 1 << 30}}, "not in 1.."),
        ({"points": "x"}, "points missing"),
        ({"points": [], "windows": None}, "no checkpoints"),
        # Too short a stream for the entries the index has (512 bytes each at least).
        ({"tar_size": 5}, "entries, past 0"),
        ({"spans": "x"}, "spans missing"),
    ],
)
def test_bad_header_fields(
    gz: tuple[Path, LayerArtifact], changes: dict[str, object], message: str
) -> None:
    _, artifact = gz
    with pytest.raises(BadImage, match=message):
        decode(_mutated(artifact, **changes))


def test_a_header_and_index_that_disagree_are_refused(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    with pytest.raises(BadImage, match="disagrees with its header"):
        decode(_mutated(artifact, tar_size=artifact.index.tar_size + 512))


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


def _rows(artifact: LayerArtifact) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for p in artifact.points:
        window = [] if p.window is None else [p.window.offset, p.window.length, p.window.sha256]
        rows.append([p.offset, p.position, p.bits, p.sha256, *window])
    return rows


def test_hostile_points(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    rows = _rows(artifact)
    second = rows[1]
    cases: dict[str, list[list[Any]]] = {
        "out of order or past": [rows[0], rows[1], [rows[2][0], *rows[1][1:]], *rows[3:]],
        "is not .offset, position": [rows[0], second[:2], *rows[2:]],
        "is not .offset, position, bits, sha256": [rows[0], [*second[:3], "x", *second[4:]]],
        "malformed": [rows[0], [second[0], second[1], 8, *second[3:]], *rows[2:]],
        "lacks a window": [rows[0], second[:4], *rows[2:]],
        "has a window": [[*rows[0], *second[4:]], *rows[1:]],
        "out of place or of a bad length": [
            rows[0],
            [*second[:4], second[4] + 1, *second[5:]],
            *rows[2:],
        ],
        "window .* is not": [rows[0], [*second[:6], "nothex"], *rows[2:]],
    }
    past = [*rows[:-1], [artifact.layer_size + 1, *rows[-1][1:]]]
    cases["past the layer"] = past
    for message, value in cases.items():
        with pytest.raises(BadImage, match=message):
            decode(_mutated(artifact, points=value))
    too_long = [*rows[:-1], [*rows[-1][:5], 1 << 20, rows[-1][6]]]
    with pytest.raises(BadImage, match="bad length"):
        decode(_mutated(artifact, points=too_long))


def test_intervals_longer_than_the_bound_are_refused(
    gz: tuple[Path, LayerArtifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, artifact = gz
    data = encode(artifact)
    gaps = [b.position - a.position for a, b in itertools.pairwise(artifact.points)]
    monkeypatch.setattr(artifact_module, "MAX_INTERVAL", max(gaps) - 1)
    with pytest.raises(BadImage, match="bytes past the one before"):
        decode(data)
    tail = artifact.index.tar_size - artifact.points[-1].position
    monkeypatch.setattr(artifact_module, "MAX_INTERVAL", max(*gaps, tail - 1))
    if tail - 1 >= max(gaps):
        with pytest.raises(BadImage, match="bytes before the end"):
            decode(data)


def test_an_index_text_that_inflates_past_the_bound_is_refused(
    gz: tuple[Path, LayerArtifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, artifact = gz
    data = encode(artifact)
    monkeypatch.setattr(artifact_module, "MAX_INDEX", len(dumps(artifact.index).encode()) - 1)
    with pytest.raises(BadImage, match="one zlib stream of at most"):
        decode(data)
    header, _ = _split(data)
    not_zlib = b"\x00" * 40
    header["index_bytes"] = len(not_zlib)
    with pytest.raises(BadImage, match="does not inflate"):
        decode(_join(header, not_zlib))


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
        ({"path": ("..", "etc", "passwd")}, "has '..' in its name"),
        ({"path": ("etc", "", "x")}, "is a file whose path a scan never gives"),
        ({"path": ("a\0b",)}, "a NUL byte in its name"),
        ({"kind": Kind.HARDLINK, "target": "../../outside"}, "'..' in its hardlink target"),
        ({"path": ("a" * 256,)}, "a name component longer than 255 bytes"),
        ({"path": ("a" * 255,) * 17}, "a name longer than 4096 bytes"),
        ({"path": ()}, "is the root but not a directory"),
        ({"path": (), "kind": Kind.WHITEOUT, "size": 0, "offset": 0}, "whiteout of the root"),
        ({"mode": 0o170000}, "is a file whose mode a scan never gives"),
        ({"uid": 1 << 40}, "has the owner"),
        ({"gid": -1}, "has the owner"),
        ({"mtime_ns": 1 << 80}, "has the absurd mtime"),
        ({"kind": Kind.CHAR, "rdev": (1 << 40, 0)}, "which Linux lacks"),
        ({"kind": Kind.CHAR, "size": 0, "offset": 0}, "overlayfs takes for a whiteout"),
        ({"rdev": (8, 0)}, "is a file whose device a scan never gives"),
        ({"kind": Kind.FIFO}, "is a fifo whose size, offset a scan never gives"),
        ({"kind": Kind.SYMLINK, "target": "", "size": 0, "offset": 0}, "an empty target"),
        ({"target": "elsewhere"}, "is a file whose link target a scan never gives"),
        ({"xattrs": (("user", b"x"),)}, "xattr name"),
        ({"xattrs": (("user.big", b"x" * ((1 << 16) + 1)),)}, "an xattr value of"),
        ({"size": 1 << 41}, "has the size"),
        # Lone surrogates, which no tar name decodes to: not a traceback.
        ({"path": ("a\ud800",) * 200}, "a character no filesystem stores"),
        ({"kind": Kind.SYMLINK, "target": "\ud800", "size": 0, "offset": 0}, "no filesystem"),
        ({"xattrs": (("user.\ud800", b"x"),)}, "a character no filesystem stores"),
        ({"extents": ((0, 10**9, 0),)}, "a sparse extent 0.1000000000 past its"),
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


def test_a_head_for_a_layer_of_another_size_is_refused(gz: tuple[Path, LayerArtifact]) -> None:
    _, artifact = gz
    with pytest.raises(BadImage, match="the layer has 12345"):
        decode(encode(artifact), size=12345)
    assert decode(encode(artifact), size=artifact.layer_size) == artifact


def test_a_head_claiming_a_stream_past_the_limits_is_refused(
    gz: tuple[Path, LayerArtifact],
) -> None:
    _, artifact = gz
    size, tar = artifact.layer_size, artifact.index.tar_size
    tight = LayerLimits(max_size=tar - 1)
    with pytest.raises(BadImage, match="tar stream, past the most any layer may have"):
        decode(encode(artifact), size=size, limits=tight)
    assert decode(encode(artifact), size=size, limits=LayerLimits(max_size=tar)) == artifact


def test_an_index_counting_more_entries_than_its_bound_is_refused() -> None:
    row = '["a","file",0,0,0,0,0,"",[0,0],[],0,null]'
    header = json.dumps({"version": FORMAT_VERSION, "digest": "sha256:" + "0" * 64,
                         "compression": "gzip", "tar_size": 1 << 20, "checkpoints_size": 0,
                         "entries": 1})  # fmt: skip
    with pytest.raises(ValueError, match="an index of 1 entries, past 0"):
        loads(header + "\n[" + row + "]", max_entries=0)
    assert len(loads(header + "\n[" + row + "]", max_entries=1).entries) == 1


def test_lazyfs_own_index_of_a_layer_of_many_sparse_extents_decodes(tmp_path: Path) -> None:
    # The bounds on a published index are a scan's: what a scan of a real layer gives
    # passes them, here a GNU sparse file of 2,000 extents (PAX 0.1), about 3 commas each.
    extents = 2000
    real = extents * 8192
    pax = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.name": "db",
           "GNU.sparse.realsize": str(real), "GNU.sparse.size": str(real),
           "GNU.sparse.numblocks": str(extents),
           "GNU.sparse.map": ",".join(f"{n * 8192},1" for n in range(extents))}  # fmt: skip
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo("GNUSparseFile.0/db")
        member.size, member.pax_headers = extents, pax
        tar.addfile(member, io.BytesIO(b"x" * extents))
    blob = tmp_path / "blob"
    blob.write_bytes(data.getvalue())
    digest = digest_bytes(blob.read_bytes())
    artifact, _ = artifact_of(blob, digest, tmp_path / "scratch", spacing=SPACING)
    (entry,) = artifact.index.entries
    assert entry.extents is not None and len(entry.extents) == extents
    size = blob.stat().st_size
    assert decode(encode(artifact), layer=digest, size=size, limits=LayerLimits()) == artifact
