"""eStargz layers indexed by range reads and read chunk by chunk (``ensure_remote_index``,
``EstargzChunks``), on blobs from the test writer: what the TOC gives is classified as
the same layer's tar is, only the footer and TOC are read, and nothing unverified is
served."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest

from lazyfs.blobs.estargz_reader import EstargzChunks
from lazyfs.blobs.ranges import ChunkCache, open_layers
from lazyfs.fs.read_only import ReadOnlyOperations
from lazyfs.index.estargz import is_stargz_own
from lazyfs.index.estargz_chunks import dumps as dump_chunks
from lazyfs.index.estargz_chunks import loads as load_chunks
from lazyfs.index.estargz_store import remote_layers_dir
from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from lazyfs.index.stored import (
    check_data_present,
    ensure_index,
    index_path,
    load_chunk_table,
    load_index,
)
from lazyfs.index.stored_remote import ensure_remote_index
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage, DigestMismatch, LazyfsError
from providers.manifest import OCI_LAYER_GZIP, TOC_DIGEST_ANNOTATION, Layer
from tests.support.blob_sources import CountingBlobs, MemoryBlobs
from tests.support.estargz_writer import Blob, File, write_estargz

CTX = cast(pyfuse3.RequestContext, None)
BIG = random.Random(7).randbytes(70_000)
# security.capability version 3 of root: kept as the version 2 the kernel shows.
CAP_V3_ROOT = bytes.fromhex("010000030004000000000000000000000000000000000000")
# Tar headers of the writer carry mtime 0: a TOC without modtime says the same.
FILES = [
    File("etc/", type="dir", mode=0o755, modtime=""),
    File("etc/passwd", b"root\n", mode=0o640, gid=42, modtime=""),
    File("etc/.wh.gone", modtime=""),
    File("opaque/", type="dir", modtime=""),
    File("opaque/.wh..wh..opq", modtime=""),
    File(".wh..wh.plnk/", type="dir", modtime=""),
    File("bin/", type="dir", modtime=""),
    File("bin/tool", b"#!/bin/sh\n", mode=0o4755, modtime="",
         xattrs={"security.capability": CAP_V3_ROOT, "user.a": b"\x00\xff",
                 "trusted.overlay.opaque": b"y"}),
    File("bin/sh", type="symlink", link="tool", modtime=""),
    File("bin/hard", type="hardlink", link="bin/tool", modtime=""),
    File("dev/null", type="char", mode=0o666, dev=(1, 3), modtime=""),
    File("dev/sda", type="block", mode=0o660, dev=(8, 0), modtime=""),
    File("dev/fifo", type="fifo", mode=0o600, modtime=""),
    File("empty", modtime=""),
    File("big", BIG, uid=1000, gid=1000, modtime=""),
    File("small", b"small\n" * 10, modtime=""),
]  # fmt: skip


@dataclasses.dataclass
class Store:
    layers: Path
    tmp: Path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    found = Store(tmp_path / "layers", tmp_path / "tmp")
    found.layers.mkdir()
    found.tmp.mkdir()
    return found


def layer_of(blob: Blob, toc_digest: str | None = None) -> Layer:
    annotations = ((TOC_DIGEST_ANNOTATION, toc_digest or blob.toc_digest),)
    return Layer(digest_bytes(blob.data), OCI_LAYER_GZIP, len(blob.data), None, annotations)


def home(store: Store, blob: Blob, toc_digest: str | None = None) -> Path:
    """The layers dir where the remote index of ``blob`` under that TOC digest is kept."""
    found = remote_layers_dir(store.layers, layer_of(blob, toc_digest))
    assert found is not None
    return found


def remote(store: Store, blob: Blob, **kwargs: Any) -> tuple[LayerIndex, CountingBlobs]:
    layer = layer_of(blob)
    blobs = CountingBlobs(MemoryBlobs({layer.digest: blob.data}))
    index = ensure_remote_index(store.layers, store.tmp, layer, blobs, **kwargs)
    assert index is not None
    return index, blobs


def local(store: Store, blob: Blob, tmp_path: Path, *, adopted: bool = True) -> LayerIndex:
    """The same blob, local: adopted after remote reads, or come another way (a pull)."""
    path = tmp_path / "blob.gz"
    path.write_bytes(blob.data)
    return ensure_index(store.layers, store.tmp, digest_bytes(blob.data), path, own_toc=adopted)


def without_offset(entry: IndexEntry) -> IndexEntry:
    return dataclasses.replace(entry, offset=0)


def test_toc_entries_are_classified_as_the_layers_tar_entries(store: Store, tmp_path: Path) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    scanned = local(Store(tmp_path / "l2", store.tmp), blob, tmp_path)
    # The tar holds the landmark and the TOC, which the remote index leaves out.
    tar_entries = [e for e in scanned.entries if not is_stargz_own(e.path)]
    assert len(tar_entries) == len(scanned.entries) - 2
    assert [without_offset(e) for e in index.entries] == [without_offset(e) for e in tar_entries]
    tool = next(e for e in index.entries if e.path == ("bin", "tool"))
    as_v2 = bytes.fromhex("01000002") + CAP_V3_ROOT[4:20]
    assert dict(tool.xattrs) == {"security.capability": as_v2, "user.a": b"\x00\xff"}
    assert {e.kind for e in index.entries} >= {Kind.WHITEOUT, Kind.OPAQUE, Kind.CHAR, Kind.FIFO}
    assert index.compression == "estargz"


@pytest.mark.parametrize(
    "hostile",
    [
        File("../escape", b"x"),
        File("etc/link", type="hardlink", link="../../etc/shadow"),
        File("dev/whiteout", type="char", dev=(0, 0)),
        File("f", b"x", xattrs={"nonamespace": b"1"}),
        File("dev/huge", type="char", dev=(5000, 1)),
    ],
)
def test_a_hostile_entry_is_refused_as_in_the_tar(
    store: Store, tmp_path: Path, hostile: File
) -> None:
    blob = write_estargz([dataclasses.replace(hostile, modtime="")])
    with pytest.raises(LazyfsError) as as_tar:
        local(Store(tmp_path / "l2", store.tmp), blob, tmp_path)
    with pytest.raises(LazyfsError) as as_toc:
        remote(store, blob)
    assert type(as_toc.value) is type(as_tar.value)
    assert isinstance(as_toc.value, BadImage)
    assert not list(store.layers.rglob("index.json"))


def test_only_the_tail_is_read_when_it_holds_the_toc(store: Store) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    size = len(blob.data)
    index, blobs = remote(store, blob, tail=2 * size)
    assert blobs.reads == [(index.digest, 0, size)]  # the blob is smaller than the tail
    tail = size - blob.toc_offset + 100
    _, blobs = remote(Store(store.layers.parent / "s2", store.tmp), blob, tail=tail)
    assert blobs.reads == [(index.digest, size - tail, tail)]


def test_a_toc_before_the_tail_takes_one_more_read_of_what_is_missing(store: Store) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    size = len(blob.data)
    index, blobs = remote(store, blob, tail=64)
    assert blobs.reads == [
        (index.digest, size - 64, 64),
        (index.digest, blob.toc_offset, size - 64 - blob.toc_offset),
    ]
    assert blobs.bytes_read == size - blob.toc_offset  # the TOC member and the footer


def test_the_index_is_stored_and_read_back_without_a_read(store: Store) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    assert load_index(home(store, blob), index.digest) == index
    assert load_index(store.layers, index.digest) is None  # kept by TOC too
    again, blobs = remote(store, blob)
    assert again == index and blobs.reads == []
    header, blobs = remote(store, blob, entries=False)
    assert header == dataclasses.replace(index, entries=()) and blobs.reads == []
    table = load_chunk_table(home(store, blob), index)
    assert table.toc_digest == blob.toc_digest and table.prefetch is None
    assert load_chunks(dump_chunks(table)) == table


def test_a_toc_not_the_annotations_is_refused_and_nothing_stored(store: Store) -> None:
    blob = write_estargz(FILES)
    layer = layer_of(blob, digest_bytes(b"another TOC"))
    with pytest.raises(DigestMismatch, match="TOC of layer"):
        ensure_remote_index(store.layers, store.tmp, layer, MemoryBlobs({layer.digest: blob.data}))
    assert load_index(store.layers, layer.digest) is None
    assert load_index(home(store, blob, digest_bytes(b"another TOC")), layer.digest) is None


def test_a_hostile_toc_for_a_layer_digest_leaves_the_layers_own_index_alone(
    store: Store,
) -> None:
    # A hostile image, read first, names this layer's digest with its own TOC
    # and serves its own eStargz bytes for it from its registry: they check out
    # against its annotation, and nothing ties them to the digest before the
    # whole blob is here.  The honest image still mounts, with its own files.
    blob = write_estargz(FILES)
    digest = digest_bytes(blob.data)
    evil = write_estargz(
        [File("bin/", type="dir", modtime=""), File("bin/su", b"x", mode=0o4755, modtime="")]
    )
    lie = Layer(digest, OCI_LAYER_GZIP, len(evil.data), None, layer_of(evil).annotations)
    poisoned = ensure_remote_index(store.layers, store.tmp, lie, MemoryBlobs({digest: evil.data}))
    assert poisoned is not None and ("bin", "su") in {e.path for e in poisoned.entries}
    index, _ = remote(store, blob)
    paths = {e.path for e in index.entries}
    assert ("bin", "su") not in paths and ("etc", "passwd") in paths
    # Each reads back its own, with no read, whichever comes first.
    nothing = CountingBlobs(MemoryBlobs({}))
    assert ensure_remote_index(store.layers, store.tmp, lie, nothing) == poisoned
    assert ensure_remote_index(store.layers, store.tmp, layer_of(blob), nothing) == index
    assert nothing.reads == []
    assert load_chunk_table(home(store, blob), index).toc_digest == blob.toc_digest


def test_without_a_toc_digest_the_layer_is_not_lazy(store: Store) -> None:
    blob = write_estargz(FILES)
    layer = dataclasses.replace(layer_of(blob), annotations=())
    blobs = CountingBlobs(MemoryBlobs({layer.digest: blob.data}))
    assert ensure_remote_index(store.layers, store.tmp, layer, blobs) is None
    assert blobs.reads == []


def test_a_layer_indexed_whole_stays_so(store: Store, tmp_path: Path) -> None:
    blob = write_estargz(FILES)
    whole = local(store, blob, tmp_path)
    blobs = CountingBlobs(MemoryBlobs({whole.digest: blob.data}))
    assert ensure_remote_index(store.layers, store.tmp, layer_of(blob), blobs) is None
    assert load_index(store.layers, whole.digest) == whole and blobs.reads == []


def test_a_blob_that_becomes_local_takes_the_remote_index_of_its_own_toc(
    store: Store, tmp_path: Path
) -> None:
    # Background fetch brought the blob whole after the layer was read
    # remotely: the index its own TOC gave is its index now, copied (no
    # inflate of the blob, the offsets kept trees hold), and the remote one
    # stays for mounts that read the layer remotely.
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    whole = local(store, blob, tmp_path)
    assert whole == index and whole.compression == "estargz"
    assert load_index(store.layers, index.digest) == index
    kept = index_path(store.layers, index.digest).parent
    assert sorted(p.name for p in kept.iterdir() if p.is_file()) == [
        "estargz-chunks", "estargz-own-toc", "estargz-toc-verdict", "index.json", "lock"
    ]  # fmt: skip
    assert load_index(home(store, blob), index.digest) == index
    # Read through it from the local blob: the files, every chunk checked.
    data = {index.digest: check_data_present(store.layers, tmp_path / "blob.gz", index)}
    source = open_layers(data, MemoryBlobs({index.digest: blob.data}))
    for entry in (e for e in index.entries if e.kind is Kind.FILE):
        assert (
            source.read_range(index.digest, entry.offset, entry.size) == contents(FILES)[entry.path]
        )


def test_a_blob_that_comes_whole_another_way_is_indexed_from_its_tar(
    store: Store, tmp_path: Path
) -> None:
    # Read remotely, then pulled whole (another backend, `lazyfs pull`): no
    # adopting process holds its TOC to its tar, so the TOC index is not taken.
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    whole = local(store, blob, tmp_path, adopted=False)
    assert whole.compression == "gzip" and whole != index
    assert {e.path for e in whole.entries} >= {e.path for e in index.entries}


def test_a_kept_index_checked_to_be_the_blob_s_own_is_not_checked_at_every_start(
    store: Store, tmp_path: Path
) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    assert local(store, blob, tmp_path) == index  # checked against the blob, and stamped
    # The blob's TOC is not read again: not even an empty blob is looked at.
    gone = tmp_path / "empty.gz"
    gone.write_bytes(b"")
    assert ensure_index(
        store.layers, store.tmp, index.digest, gone, entries=False
    ) == dataclasses.replace(index, entries=())
    # A stamp that is not this table's proves nothing: the check is made, and fails here.
    stamp = index_path(store.layers, index.digest).parent / "estargz-own-toc"
    stamp.write_text("another table\n")
    with pytest.raises(BadImage, match="empty"):  # built again from the empty blob
        ensure_index(store.layers, store.tmp, index.digest, gone)


def test_an_estargz_index_of_another_blob_is_built_again_from_the_verified_one(
    store: Store, tmp_path: Path
) -> None:
    # A hostile image names this layer's digest with its own TOC digest and serves
    # its own eStargz bytes: that TOC checks out against its annotation and is stored.
    blob = write_estargz(FILES)
    digest = digest_bytes(blob.data)
    evil = write_estargz(
        [File("bin/", type="dir", modtime=""), File("bin/su", b"x", mode=0o4755, modtime="")]
    )
    lie = Layer(digest, OCI_LAYER_GZIP, len(evil.data), None, layer_of(evil).annotations)
    poisoned = ensure_remote_index(store.layers, store.tmp, lie, MemoryBlobs({digest: evil.data}))
    assert poisoned is not None and ("bin", "su") in {e.path for e in poisoned.entries}
    # Once the verified blob is here, its index is its own, in its own format.
    index = local(store, blob, tmp_path)
    assert index.compression == "gzip" and index != poisoned
    paths = {e.path for e in index.entries}
    assert ("bin", "su") not in paths and ("etc", "passwd") in paths
    assert load_index(store.layers, digest) == index
    honest = Store(tmp_path / "honest", tmp_path / "honest-tmp")
    honest.layers.mkdir()
    honest.tmp.mkdir()
    assert local(honest, blob, tmp_path) == index


def test_a_blob_without_a_footer_or_shorter_than_its_descriptor_is_refused(store: Store) -> None:
    blob = write_estargz(FILES)
    layer = layer_of(blob)
    cut = MemoryBlobs({layer.digest: blob.data[:-10]})
    with pytest.raises(DigestMismatch, match="size of layer"):
        ensure_remote_index(store.layers, store.tmp, layer, cut)
    plain = dataclasses.replace(layer, size=len(blob.data) - 10)
    with pytest.raises(BadImage, match="no eStargz footer"):
        ensure_remote_index(store.layers, store.tmp, plain, cut)


def reader(store: Store, blob: Blob, data: bytes | None = None) -> tuple[LayerIndex, EstargzChunks]:
    index, _ = remote(store, blob)
    table = check_data_present(home(store, blob), Path(), index).path
    served = MemoryBlobs({index.digest: blob.data if data is None else data})
    return index, EstargzChunks({index.digest: table}, served)


def contents(files: list[File]) -> dict[tuple[str, ...], bytes]:
    return {tuple(f.name.split("/")): f.data for f in files if f.type == "reg"}


@pytest.mark.parametrize("pack", [0, 3000], ids=["member per chunk", "innerOffset"])
def test_every_file_reads_back_whole_and_in_pieces(store: Store, pack: int) -> None:
    blob = write_estargz(FILES, chunk_size=20_000, pack=pack)
    index, chunks = reader(store, blob)
    wanted = contents(FILES)
    files = [e for e in index.entries if e.kind is Kind.FILE]
    assert {e.path for e in files} == set(wanted) - {
        ("etc", ".wh.gone"),
        ("opaque", ".wh..wh..opq"),
    }
    for entry in files:
        data = wanted[entry.path]
        assert entry.size == len(data)
        assert chunks.read_range(index.digest, entry.offset, entry.size) == data
        starts = range(entry.offset, entry.offset + entry.size, 777)
        pieces = [chunks.read_range(index.digest, start, 777) for start in starts]
        assert b"".join(pieces)[: entry.size] == data
    # "small" is the last file: the space ends with it.
    assert chunks.read_range(index.digest, index.tar_size - 3, 10) == b"ll\n"
    assert chunks.read_range(index.digest, index.tar_size, 10) == b""


def test_a_chunk_is_fetched_once_for_many_small_reads(store: Store) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, chunks = reader(store, blob)
    big = next(e for e in index.entries if e.path == ("big",))
    for at in range(0, big.size, 4096):
        chunks.read_range(index.digest, big.offset + at, 4096)
    assert chunks.fetches == 4  # 70000 bytes in chunks of 20000


def test_a_corrupted_chunk_is_eio_and_the_others_read(store: Store) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    table = load_chunk_table(home(store, blob), index)
    big = next(e for e in index.entries if e.path == ("big",))
    second = next(r for r in table.rows if r.name == "big" and r.chunk_offset == 20_000)
    damaged = bytearray(blob.data)
    damaged[(second.offset + second.end) // 2] ^= 0x55
    _, chunks = reader(store, blob, bytes(damaged))
    assert chunks.read_range(index.digest, big.offset, 20_000) == BIG[:20_000]
    assert chunks.read_range(index.digest, big.offset + 40_000, 30_000) == BIG[40_000:]
    for at, length in ((20_000, 1), (19_999, 2), (39_999, 1), (0, 70_000)):
        with pytest.raises(OSError) as caught:
            chunks.read_range(index.digest, big.offset + at, length)
        assert caught.value.errno == errno.EIO
        assert "chunk 20000+20000 of 'big'" in str(caught.value)


class Poisoned(MemoryBlobs):
    """A cache every origin's fetches land in: ``bad`` bytes, however often evicted (another
    repository's fetches land them again); read again through the mount's own origin, the
    blob's bytes, or ``bad`` too when ``own_bad``."""

    def __init__(self, blobs: dict[Digest, bytes], bad: bytes, own_bad: bool) -> None:
        super().__init__(blobs)
        self.bad, self.own_bad = bad, own_bad
        self.evicted: list[tuple[int, int]] = []
        self.again: list[tuple[int, int]] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return self.bad[offset : offset + length]

    def evict(self, digest: Digest, offset: int, length: int, reason: str) -> int:
        self.evicted.append((offset, length))
        return 1

    def read_again(self, digest: Digest, offset: int, length: int) -> bytes:
        self.again.append((offset, length))
        return (self.bad if self.own_bad else self.blobs[digest])[offset : offset + length]


@pytest.mark.parametrize("own_bad", [False, True], ids=["theirs", "ours too"])
def test_a_wrong_chunk_is_read_again_through_our_origin(store: Store, own_bad: bool) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    table = load_chunk_table(home(store, blob), index)
    second = next(r for r in table.rows if r.name == "big" and r.chunk_offset == 20_000)
    damaged = bytearray(blob.data)
    damaged[(second.offset + second.end) // 2] ^= 0x55
    poisoned = Poisoned({index.digest: blob.data}, bytes(damaged), own_bad)
    table_path = check_data_present(home(store, blob), Path(), index).path
    chunks = EstargzChunks({index.digest: table_path}, poisoned)
    big = next(e for e in index.entries if e.path == ("big",))
    if own_bad:
        with pytest.raises(OSError) as caught:
            chunks.read_range(index.digest, big.offset, 70_000)
        assert caught.value.errno == errno.EIO
    else:
        assert chunks.read_range(index.digest, big.offset, 70_000) == BIG
    assert poisoned.again == [(second.offset, second.end - second.offset)]
    assert len(poisoned.evicted) == 1 + own_bad


async def test_the_fuse_read_of_a_corrupted_chunk_answers_eio(store: Store) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, _ = remote(store, blob)
    damaged = bytearray(blob.data)
    table = load_chunk_table(home(store, blob), index)
    last = table.rows[-2]  # big's last chunk; "small" follows it
    damaged[(last.offset + last.end) // 2] ^= 0x55
    data = {index.digest: check_data_present(home(store, blob), Path(), index)}
    source = open_layers(data, MemoryBlobs({index.digest: bytes(damaged)}))
    ops = ReadOnlyOperations(merge([index]), ChunkCache(source, chunk_size=4096))

    async def fh(name: str) -> pyfuse3.FileHandleT:
        entry = await ops.lookup(pyfuse3.InodeT(ROOT_INO), pyfuse3.FileNameT(name.encode()), CTX)
        return (await ops.open(entry.st_ino, os.O_RDONLY, CTX)).fh

    assert await ops.read(await fh("small"), 0, 100) == b"small\n" * 10
    big = await fh("big")
    assert await ops.read(big, 0, 4096) == BIG[:4096]
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.read(big, 65_000, 100)
    assert caught.value.errno == errno.EIO


def test_open_layers_needs_a_blob_source_for_estargz(store: Store) -> None:
    blob = write_estargz(FILES)
    index, _ = remote(store, blob)
    data = {index.digest: check_data_present(home(store, blob), Path(), index)}
    with pytest.raises(ValueError, match="need a blob source"):
        open_layers(data)


def test_a_damaged_chunk_table_is_eio_never_misread(store: Store) -> None:
    blob = write_estargz(FILES, chunk_size=20_000)
    index, chunks = reader(store, blob)
    path = index_path(home(store, blob), index.digest).parent / "estargz-chunks"
    table = load_chunks(path.read_text())
    first, second, *rest = table.rows
    overlapping = second._replace(start=first.start + first.size - 1)
    path.write_text(dump_chunks(dataclasses.replace(table, rows=(first, overlapping, *rest))))
    with pytest.raises(OSError) as caught:
        chunks.read_range(Digest(index.digest), 0, 10)
    assert caught.value.errno == errno.EIO


def test_a_built_chunk_table_is_checked_as_a_stored_one_and_nothing_is_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the stored table's checks refuse (past the blob) is refused at build too."""
    from lazyfs.index import estargz_index
    from lazyfs.index.stored_remote import ensure_remote_layer

    blob = write_estargz(FILES)
    built = estargz_index.build_remote_index

    def past_the_blob(*args: Any, **kwargs: Any) -> Any:
        index, table = built(*args, **kwargs)
        last = table.rows[-1]._replace(end=table.blob_size + 1)
        return index, dataclasses.replace(table, rows=(*table.rows[:-1], last))

    monkeypatch.setattr(estargz_index, "build_remote_index", past_the_blob)
    layer = layer_of(blob)
    with pytest.raises(BadImage, match="chunk table"):
        ensure_remote_layer(store.layers, store.tmp, layer, MemoryBlobs({layer.digest: blob.data}))
    assert load_index(home(store, blob), layer.digest) is None
