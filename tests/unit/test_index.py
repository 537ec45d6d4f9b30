"""LayerIndex: built from plain, gzip and zstd layers; stored and read back."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.blobs.ranges import open_layers
from lazyfs.index import model as layer_index
from lazyfs.index import stored as stored_index
from lazyfs.index.formats import build_index
from lazyfs.index.model import FORMAT_VERSION, IndexEntry, Kind, LayerData, LayerIndex, dumps, loads
from lazyfs.index.stored import ensure_index
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage, UnsafeLayer
from tests.support.images import BASE_MTIME_NS, Entry, opaque, whiteout, write_layer

LAYER = [
    Entry("etc", "dir", mode=0o750, uid=1, gid=2, mtime_ns=BASE_MTIME_NS),
    Entry("etc/passwd", data=b"root\n", mode=0o600, xattrs={"user.a": b"\x00\xff"}),
    Entry("etc/link", "symlink", target="/etc/passwd"),
    Entry("etc/hard", "hardlink", target="./etc/passwd"),
    Entry("dev/null", "char", mode=0o666, rdev=(1, 3)),
    Entry("fifo", "fifo"),
    whiteout("gone"),
    opaque("etc"),
    Entry(".wh..wh.plnk/123", data=b"aufs"),
]


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def blob_of(tmp_path: Path, entries: list[Entry], kind: str = "none") -> tuple[Path, Digest]:
    tar = write_layer(entries, tmp_path / "layer.tar").read_bytes()
    data = compress(kind, tar)
    blob = tmp_path / f"blob-{kind}"
    blob.write_bytes(data)
    return blob, digest_bytes(data)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_build_reads_every_kind_and_marker(tmp_path: Path, kind: str) -> None:
    blob, digest = blob_of(tmp_path, LAYER, kind)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    index = build_index(digest, blob, scratch)
    assert index.compression == kind
    assert index.tar_size == (tmp_path / "layer.tar").stat().st_size
    # Only what the index points into is written: the zstd copy, the gzip checkpoints.
    written = {"none": [], "gzip": [layer_index.CHECKPOINTS_NAME], "zstd": [layer_index.TAR_NAME]}
    assert sorted(p.name for p in scratch.iterdir()) == written[kind]
    by_path = {(e.path, e.kind): e for e in index.entries}
    assert [(e.path, e.kind) for e in index.entries] == [
        (("etc",), Kind.DIR),
        (("etc", "passwd"), Kind.FILE),
        (("etc", "link"), Kind.SYMLINK),
        (("etc", "hard"), Kind.HARDLINK),
        (("dev", "null"), Kind.CHAR),
        (("fifo",), Kind.FIFO),
        (("gone",), Kind.WHITEOUT),
        (("etc",), Kind.OPAQUE),
    ]
    etc = by_path[("etc",), Kind.DIR]
    assert (etc.mode, etc.uid, etc.gid, etc.mtime_ns) == (0o750, 1, 2, BASE_MTIME_NS)
    passwd = by_path[("etc", "passwd"), Kind.FILE]
    assert passwd.xattrs == (("user.a", b"\x00\xff"),) and passwd.size == 5
    data = {
        "none": LayerData(blob),
        "gzip": LayerData(blob, scratch / layer_index.CHECKPOINTS_NAME),
        "zstd": LayerData(scratch / layer_index.TAR_NAME),
    }[kind]
    source = open_layers({digest: data})
    assert source.read_range(digest, passwd.offset, passwd.size) == b"root\n"
    assert by_path[("etc", "link"), Kind.SYMLINK].target == "/etc/passwd"
    assert by_path[("etc", "hard"), Kind.HARDLINK].target == "etc/passwd"
    assert by_path[("dev", "null"), Kind.CHAR].rdev == (1, 3)


@pytest.mark.parametrize(
    ("entries", "error", "match"),
    [
        ([Entry("../escape")], UnsafeLayer, "'..'"),
        ([Entry("/abs")], UnsafeLayer, "absolute"),
        ([Entry("a", "hardlink", target="../x")], UnsafeLayer, "'..'"),
        ([Entry("a", "symlink", target="")], UnsafeLayer, "empty target"),
        ([Entry(".wh.x/y")], UnsafeLayer, "whiteout"),
        ([Entry("a", uid=-1 & 0xFFFFFFFF)], BadImage, "owner"),
    ],
)
def test_hostile_entries_are_refused(
    tmp_path: Path, entries: list[Entry], error: type[Exception], match: str
) -> None:
    blob, digest = blob_of(tmp_path, entries)
    with pytest.raises(error, match=match):
        build_index(digest, blob, tmp_path)


@pytest.mark.parametrize("cut", [100, 700, 1500])
def test_truncated_layers_are_bad(tmp_path: Path, cut: int) -> None:
    tar = write_layer(LAYER, tmp_path / "layer.tar").read_bytes()
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(tar)[:cut] if cut < 200 else tar[:cut])
    with pytest.raises(BadImage):
        build_index(digest_bytes(b""), blob, tmp_path)


def test_garbage_after_the_first_header_is_damage(tmp_path: Path) -> None:
    tar = bytearray(write_layer(LAYER, tmp_path / "layer.tar").read_bytes())
    tar[1024 + 148 : 1024 + 156] = b"garbage!"  # the checksum of a later header
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(tar))
    with pytest.raises(BadImage, match="corrupt or truncated"):
        build_index(digest_bytes(b""), blob, tmp_path)


def _store(tmp_path: Path) -> tuple[Path, Path]:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    return layers, tmp


def test_ensure_index_stores_once_and_reads_back(tmp_path: Path) -> None:
    layers, tmp = _store(tmp_path)
    blob, digest = blob_of(tmp_path, LAYER, "zstd")
    first = ensure_index(layers, tmp, digest, blob)
    stored = stored_index.index_path(layers, digest)
    assert stored.is_file() and list(tmp.iterdir()) == []
    data = stored_index.check_data_present(layers, blob, first)
    assert data.checkpoints is None and data.path.stat().st_size == first.tar_size
    mtime = stored.stat().st_mtime_ns
    assert ensure_index(layers, tmp, digest, blob) == first
    assert stored.stat().st_mtime_ns == mtime
    stored.write_text('{"version": 0}')
    assert stored_index.load_index(layers, digest) is None
    assert ensure_index(layers, tmp, digest, blob) == first


def test_a_gzip_layer_stores_checkpoints_and_no_tar_copy(tmp_path: Path) -> None:
    layers, tmp = _store(tmp_path)
    blob, digest = blob_of(tmp_path, LAYER, "gzip")
    first = ensure_index(layers, tmp, digest, blob)
    home = stored_index.index_path(layers, digest).parent
    assert sorted(p.name for p in home.iterdir()) == ["gzip-index", "index.json", "lock"]
    assert list(tmp.iterdir()) == []
    data = stored_index.check_data_present(layers, blob, first)
    assert data == LayerData(blob, home / "gzip-index")
    assert first.checkpoints_size == data.checkpoints.stat().st_size > 0  # type: ignore[union-attr]
    before = (home / "index.json").stat()
    assert ensure_index(layers, tmp, digest, blob) == first
    after = (home / "index.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "a directory"])
def test_lost_or_damaged_checkpoints_are_made_again(tmp_path: Path, damage: str) -> None:
    layers, tmp = _store(tmp_path)
    blob, digest = blob_of(tmp_path, LAYER, "gzip")
    first = ensure_index(layers, tmp, digest, blob)
    home = stored_index.index_path(layers, digest).parent
    checkpoints = home / "gzip-index"
    good = checkpoints.read_bytes()
    checkpoints.unlink()
    if damage == "truncated":
        checkpoints.write_bytes(good[:100])
    elif damage == "a directory":
        checkpoints.mkdir()
    with pytest.raises(BadImage, match="checkpoints"):
        stored_index.check_data_present(layers, blob, first)
    if damage == "a directory":
        checkpoints.rmdir()  # rename cannot replace a directory by a file
    before = (home / "index.json").stat().st_ino
    assert ensure_index(layers, tmp, digest, blob) == first
    assert (home / "index.json").stat().st_ino != before  # rebuilt
    assert checkpoints.read_bytes() == good


def test_an_old_format_gzip_index_is_rebuilt_and_its_copy_removed(tmp_path: Path) -> None:
    layers, tmp = _store(tmp_path)
    blob, digest = blob_of(tmp_path, LAYER, "gzip")
    home = stored_index.index_path(layers, digest).parent
    home.mkdir()
    # What format 1 left: an uncompressed copy and an index pointing into it.
    (home / "tar").write_bytes((tmp_path / "layer.tar").read_bytes())
    header, entries, _ = dumps(build_index(digest, blob, tmp_path)).split("\n")
    old = {**json.loads(header), "version": 1, "entries": json.loads(entries)}
    del old["checkpoints_size"]
    (home / "index.json").write_text(json.dumps(old))
    assert stored_index.load_index(layers, digest) is None
    index = ensure_index(layers, tmp, digest, blob)
    assert index.compression == "gzip" and index.checkpoints_size > 0
    assert sorted(p.name for p in home.iterdir()) == ["gzip-index", "index.json", "lock"]


def test_an_old_copy_a_running_mount_names_is_kept(tmp_path: Path) -> None:
    layers, tmp = _store(tmp_path)
    blob, digest = blob_of(tmp_path, LAYER, "gzip")
    home = stored_index.index_path(layers, digest).parent
    home.mkdir()
    copy = home / "tar"
    copy.write_bytes((tmp_path / "layer.tar").read_bytes())
    # A format-1 mount process: it opens the copy on its first read of the layer. Asked
    # about once it runs with that command line (it says so): until it has exec'd, its
    # command line is still this test's.
    code = "import sys; print('up', flush=True); sys.stdin.read()"
    argv = [sys.executable, "-c", code, "--layer", f"{digest}={copy}"]
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as mount_process:
        try:
            assert mount_process.stdout is not None and mount_process.stdout.readline() == "up\n"
            assert ensure_index(layers, tmp, digest, blob).compression == "gzip"
            assert copy.is_file()
        finally:
            mount_process.communicate("")
    stored_index.index_path(layers, digest).unlink()  # the next call builds again
    ensure_index(layers, tmp, digest, blob)
    assert not copy.exists()


def test_a_corrupt_gzip_layer_stores_nothing(tmp_path: Path) -> None:
    layers, tmp = _store(tmp_path)
    tar = write_layer(LAYER, tmp_path / "layer.tar").read_bytes()
    data = gzip.compress(tar)[:-20]
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    digest = digest_bytes(data)
    with pytest.raises(BadImage, match=f"bad layer {digest}"):
        ensure_index(layers, tmp, digest, blob)
    assert list(tmp.iterdir()) == []
    home = stored_index.index_path(layers, digest).parent
    assert [p.name for p in home.iterdir()] == ["lock"]


def test_a_lost_uncompressed_copy_is_made_again(tmp_path: Path) -> None:
    layers, tmp = _store(tmp_path)
    blob, digest = blob_of(tmp_path, LAYER, "zstd")
    index = ensure_index(layers, tmp, digest, blob)
    copy = stored_index.layer_data(layers, blob, index).path
    copy.unlink()
    assert ensure_index(layers, tmp, digest, blob) == index
    assert copy.stat().st_size == index.tar_size


def test_a_refused_layer_stores_nothing(tmp_path: Path) -> None:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    blob, digest = blob_of(tmp_path, [Entry("../x")], "zstd")
    with pytest.raises(UnsafeLayer):
        ensure_index(layers, tmp, digest, blob)
    assert list(tmp.iterdir()) == []
    assert not stored_index.index_path(layers, digest).exists()


def test_tarfile_offsets_are_stream_offsets(tmp_path: Path) -> None:
    # GNU long names put extra headers before the data: offsets must count them.
    long = "d/" + "x" * 200
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(long)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    blob = tmp_path / "blob"
    blob.write_bytes(out.getvalue())
    (entry,) = build_index(digest_bytes(b""), blob, tmp_path).entries
    assert out.getvalue()[entry.offset : entry.offset + 3] == b"abc"


_names = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1).filter(
    lambda s: s not in (".", "..")
)
_entries = st.builds(
    IndexEntry,
    path=st.lists(_names, max_size=4).map(tuple),
    kind=st.sampled_from(Kind),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 2),
    gid=st.integers(0, 2**32 - 2),
    size=st.integers(0, 2**40),
    mtime_ns=st.integers(-(2**61), 2**61),
    target=st.text(),
    rdev=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    xattrs=st.lists(st.tuples(st.text(min_size=1), st.binary())).map(tuple),
    offset=st.integers(0, 2**50),
)


@given(st.lists(_entries, max_size=8), st.sampled_from(["none", "gzip", "zstd"]))
def test_serialization_round_trips(entries: list[IndexEntry], compression: str) -> None:
    index = LayerIndex(Digest("sha256:" + "ab" * 32), compression, 1024, tuple(entries), 99)
    assert loads(dumps(index)) == index
    # The header alone: everything but the entries, read from one line.
    header = dumps(index).partition("\n")[0]
    assert loads(header, entries=False) == dataclasses.replace(index, entries=())


def test_the_header_reads_without_the_entries(tmp_path: Path) -> None:
    layers, tmp = _store(tmp_path)
    blob, digest = blob_of(tmp_path, LAYER, "gzip")
    full = ensure_index(layers, tmp, digest, blob)
    stored = stored_index.index_path(layers, digest)
    header, _, _ = stored.read_text().partition("\n")
    stored.write_text(header + "\nnot json\n")  # entries a header-only reader never sees
    assert ensure_index(layers, tmp, digest, blob, entries=False) == dataclasses.replace(
        full, entries=()
    )
    assert stored_index.load_index(layers, digest) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        f'{{"version": {FORMAT_VERSION}}}',
        # A whole header, then an entry row that is no entry.
        f'{{"version": {FORMAT_VERSION}, "digest": "x", "compression": "none", "tar_size": 0,'
        ' "checkpoints_size": 0, "entries": 1}\n[[1]]',
        # A format-2 index: one line, entries inside.
        '{"version": 2, "digest": "x", "compression": "none", "tar_size": 0,'
        ' "checkpoints_size": 0, "entries": []}',
        # A header promising more entries than follow.
        f'{{"version": {FORMAT_VERSION}, "digest": "x", "compression": "none", "tar_size": 0,'
        ' "checkpoints_size": 0, "entries": 2}\n[]',
        # A format-3 index: rows without extents, which it got wrong for sparse files.
        '{"version": 3, "digest": "x", "compression": "none", "tar_size": 0,'
        ' "checkpoints_size": 0, "entries": 0}\n[]',
        # A number JSON reads as infinite, where an int is wanted (a tar size, a mode).
        f'{{"version": {FORMAT_VERSION}, "digest": "x", "compression": "none",'
        ' "tar_size": 1e999, "checkpoints_size": 0, "entries": 0}\n[]',
        f'{{"version": {FORMAT_VERSION}, "digest": "x", "compression": "none", "tar_size": 0,'
        ' "checkpoints_size": 0, "entries": 1}\n[["a","dir",1e999,0,0,0,0,"",[0,0],[],0,null]]',
        # A kind JSON cannot use as a key.
        f'{{"version": {FORMAT_VERSION}, "digest": "x", "compression": "none", "tar_size": 0,'
        ' "checkpoints_size": 0, "entries": 1}\n[["a",["dir"],0,0,0,0,0,"",[0,0],[],0,null]]',
    ],
)
def test_malformed_indexes_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)
