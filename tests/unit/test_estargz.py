"""eStargz footers, TOCs and chunks, on blobs written here from the spec
(``tests.support.estargz_writer``): what a well-formed layer gives, and that every
hostile one is refused with BadImage or DigestMismatch and nothing else."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.index.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    EntryType,
    Toc,
    TocLimits,
    inflate_chunk,
    is_stargz_own,
    parse_footer,
    prefetch_span,
    read_toc,
    toc_digest,
    toc_member,
)
from lazyfs.index.estargz_toc import MAX_FILE_SIZE, parse_toc
from providers.digest import Digest
from providers.errors import BadImage, DigestMismatch, UnsafeLayer
from providers.manifest import TOC_DIGEST_ANNOTATION
from tests.support.estargz_writer import Blob, File, footer, write_estargz

LAYER = "sha256:layer"
NOISE = bytes((i * 7919) % 251 for i in range(20_000))  # compresses poorly
FILES = [
    File("./", type="dir", mode=0o755),
    File("etc/", type="dir", mode=0o755, modtime="2021-01-02T03:04:05.123456789Z"),
    File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", uid=0, gid=42, mode=0o640),
    File("etc/hostname", b"box\n", xattrs={"user.a": b"\x00\x01\xff", "security.x": b""}),
    File("bin/tool", b"#!/bin/sh\n", mode=0o4755, modtime="2020-01-01T01:00:00+01:00"),
    File("bin/sh", type="symlink", link="tool"),
    File("bin/up", type="symlink", link="../../etc/passwd"),
    File("bin/hl", type="hardlink", link="bin/tool"),
    File("dev/null", type="char", mode=0o666, dev=(1, 3)),
    File("dev/sda", type="block", dev=(8, 0)),
    File("dev/fifo", type="fifo"),
    File("empty", b""),
    File(".wh.gone", b""),
    File("big", NOISE),
    File("text", b"line\n" * 5000),
]
SHAPES = {
    "plain": {},
    "chunked": {"chunk_size": 3000},
    "packed": {"pack": 8192},
    "packed-chunked": {"pack": 50_000, "chunk_size": 4096},
    "prefetch": {"prefetch": 4},
    "legacy-footer": {"legacy": True},
}


def load(blob: Blob, *, expected: str | None = None, limits: TocLimits | None = None) -> Toc:
    found = parse_footer(blob.data, len(blob.data))
    assert found is not None
    member = toc_member(blob.data, len(blob.data), found)
    assert member is not None
    digest = Digest(expected or blob.toc_digest)
    return read_toc(
        member, toc_offset=found.toc_offset, expected=digest, layer=LAYER, limits=limits
    )


def content(toc: Toc, blob: bytes, name: str) -> bytes:
    (entry,) = (e for e in toc.entries if e.name == name)
    return b"".join(
        inflate_chunk(c, blob[c.offset : c.end], layer=LAYER, name=name) for c in entry.chunks
    )


# --- footer ---------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("offset", [0, 1, 0xABCDEF, 10**12])
def test_footer_gives_the_toc_offset(legacy: bool, offset: int) -> None:
    tail = footer(offset, legacy=legacy)
    size = offset + 1000 + len(tail)
    found = parse_footer(tail, size)
    assert found is not None
    assert (found.toc_offset, found.toc_end, found.size, found.legacy) == (
        offset,
        size - len(tail),
        47 if legacy else 51,
        legacy,
    )


def test_the_footer_is_an_empty_gzip_member() -> None:
    assert gzip.decompress(footer(12345)) == gzip.decompress(footer(1, legacy=True)) == b""
    assert len(footer(0)) == 51 and len(footer(0, legacy=True)) == 47


def _flip(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + bytes([value]) + data[at + 1 :]


NOT_FOOTERS = {
    "plain gzip": gzip.compress(b"just a layer" * 100),
    "too short": footer(5)[-40:],
    "upper-case hex": footer(0xAB).replace(b"ab", b"AB"),
    "no STARGZ": footer(5).replace(b"STARGZ", b"STARGY"),
    "other subfield id": footer(5).replace(b"SG", b"SH"),
    "wrong XLEN": _flip(footer(5), 10, 27),
    "FNAME flag too": _flip(footer(5), 3, 0x0C),
    "not deflate": _flip(footer(5), 2, 7),
    "a non-empty trailer": footer(5)[:-1] + b"\x01",
    "a non-final block": _flip(footer(5), 38, 0),
    "a space in the hex": footer(5).replace(b"0000000000000005", b"000000000000000 5"[:16]),
}


@pytest.mark.parametrize("tail", NOT_FOOTERS.values(), ids=NOT_FOOTERS.keys())
def test_not_a_footer_is_plain_gzip(tail: bytes) -> None:
    assert parse_footer(tail, len(tail) + 100) is None


@pytest.mark.parametrize("offset", [1000, 1001, 10**15])
def test_a_footer_pointing_past_itself_is_refused(offset: int) -> None:
    with pytest.raises(BadImage, match="outside"):
        parse_footer(footer(offset), 1000 + 51)


def test_toc_member_needs_a_tail_that_reaches_it() -> None:
    blob = write_estargz(FILES).data
    found = parse_footer(blob[-51:], len(blob))
    assert found is not None
    assert toc_member(blob[-51:], len(blob), found) is None
    whole = blob[found.toc_offset : found.toc_end]
    for start in (0, found.toc_offset):
        assert toc_member(blob[start:], len(blob), found) == whole
    with pytest.raises(ValueError):
        parse_footer(blob, len(blob) - 1)


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=1 << 40))
def test_any_tail_is_a_footer_plain_or_refused(tail: bytes, extra: int) -> None:
    try:
        found = parse_footer(tail, len(tail) + extra)
    except BadImage:
        return
    assert found is None or found.toc_offset < found.toc_end


# --- TOC ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_toc_matches_the_tar_and_chunks_verify(shape: dict[str, Any]) -> None:
    blob = write_estargz(FILES, **shape)
    toc = load(blob)
    # The blob is a gzip of a tar, as the spec wants: tarfile reads it whole.
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.data))) as tar:
        members = tar.getmembers()
        assert members[-1].name == "stargz.index.json"
        files = {m.name: tar.extractfile(m).read() for m in members if m.isreg()}  # type: ignore[union-attr]
    assert [e.path for e in toc.entries] == [
        tuple(part for part in m.name.split("/") if part not in ("", ".")) for m in members[:-1]
    ]
    for entry in toc.entries:
        if entry.type is EntryType.REG:
            assert content(toc, blob.data, entry.name) == files[entry.name] and entry.size == len(
                files[entry.name]
            )
            assert entry.digest == "sha256:" + hashlib.sha256(files[entry.name]).hexdigest()
            assert all(c.offset < c.end <= blob.toc_offset for c in entry.chunks)


def test_toc_entry_fields() -> None:
    toc = load(write_estargz(FILES))
    by_name = {e.name: e for e in toc.entries}
    assert by_name["./"].path == () and by_name["etc/"].path == ("etc",)
    assert by_name["etc/"].mtime_ns == 1609556645_123456789
    assert by_name["bin/tool"].mtime_ns == 1577836800_000000000  # +01:00 taken off
    assert by_name["bin/tool"].mode == 0o4755
    passwd = by_name["etc/passwd"]
    assert (passwd.type, passwd.mode, passwd.uid, passwd.gid, passwd.size) == (
        EntryType.REG,
        0o640,
        0,
        42,
        26,
    )
    assert by_name["etc/hostname"].xattrs == (("user.a", b"\x00\x01\xff"), ("security.x", b""))
    assert (by_name["bin/up"].type, by_name["bin/up"].link_name) == (
        EntryType.SYMLINK,
        "../../etc/passwd",
    )
    assert (by_name["bin/hl"].type, by_name["bin/hl"].link_name) == (EntryType.HARDLINK, "bin/tool")
    assert (by_name["dev/null"].type, by_name["dev/null"].devices) == (EntryType.CHAR, (1, 3))
    assert (by_name["dev/sda"].type, by_name["dev/sda"].devices) == (EntryType.BLOCK, (8, 0))
    assert by_name["dev/fifo"].type is EntryType.FIFO
    assert by_name["empty"].chunks == () and by_name["empty"].size == 0
    assert by_name[".wh.gone"].path == (".wh.gone",)  # whiteouts are the tree's business


def test_chunks_tile_the_file() -> None:
    toc = load(write_estargz(FILES, chunk_size=3000))
    big = next(e for e in toc.entries if e.name == "big")
    assert [(c.chunk_offset, c.chunk_size) for c in big.chunks] == [
        (i, min(3000, len(NOISE) - i)) for i in range(0, len(NOISE), 3000)
    ]


def test_packed_chunks_share_members() -> None:
    toc = load(write_estargz(FILES, pack=1 << 20))
    chunks = [c for e in toc.entries for c in e.chunks]
    assert len({c.offset for c in chunks}) == 1
    assert all(c.inner_offset > 0 for c in chunks)


def test_toc_digest_is_checked_before_parsing() -> None:
    blob = write_estargz(FILES, edit_toc=lambda doc: doc.update(version=7))
    with pytest.raises(DigestMismatch, match="TOC of layer"):
        load(blob, expected="sha256:" + "0" * 64)
    with pytest.raises(BadImage, match="version 1"):
        load(blob)


def test_annotation() -> None:
    assert toc_digest({}) is None
    assert toc_digest({TOC_DIGEST_ANNOTATION: "sha256:" + "a" * 64}) == "sha256:" + "a" * 64
    with pytest.raises(BadImage, match="annotation"):
        toc_digest({TOC_DIGEST_ANNOTATION: "sha256:xyz"})


# --- prefetch and stargz's own entries --------------------------------------------------


def test_prefetch_span_ends_where_the_landmark_starts() -> None:
    blob = write_estargz(FILES, prefetch=5)
    toc = load(blob)
    span = prefetch_span(toc)
    landmark = next(e for e in toc.entries if e.name == PREFETCH_LANDMARK)
    assert span == (0, landmark.chunks[0].offset)
    names = [e.name for e in toc.entries]
    first = names[: names.index(PREFETCH_LANDMARK)]
    assert first == [f.name for f in FILES[:5]]
    for entry in toc.entries:
        inside = all(c.end <= span[1] for c in entry.chunks)
        assert inside == (entry.name in first or not entry.chunks), entry.name


def test_no_prefetch() -> None:
    assert prefetch_span(load(write_estargz(FILES))) is None
    without = write_estargz(FILES, edit_toc=lambda doc: doc["entries"].pop(0))
    assert prefetch_span(load(without)) is None

    def both(doc: dict[str, Any]) -> None:
        doc["entries"].append({**doc["entries"][0], "name": NO_PREFETCH_LANDMARK})

    assert prefetch_span(load(write_estargz(FILES, prefetch=3, edit_toc=both))) is None


@pytest.mark.parametrize(
    ("path", "own"),
    [
        (("stargz.index.json",), True),
        ((PREFETCH_LANDMARK,), True),
        ((NO_PREFETCH_LANDMARK,), True),
        (("etc", "stargz.index.json"), False),
        (("etc", PREFETCH_LANDMARK), False),
        ((), False),
        (("etc",), False),
    ],
)
def test_stargz_own_entries(path: tuple[str, ...], own: bool) -> None:
    assert is_stargz_own(path) is own


# --- chunks -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunked() -> tuple[Blob, Toc]:
    blob = write_estargz(FILES, chunk_size=4096)
    return blob, load(blob)


def test_a_corrupt_chunk_is_never_returned(chunked: tuple[Blob, Toc]) -> None:
    blob, toc = chunked
    big = next(e for e in toc.entries if e.name == "big")
    for chunk in big.chunks:
        data = blob.data[chunk.offset : chunk.end]
        for at in (0, 12, len(data) // 2, len(data) - 9):
            bad = data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]
            try:
                got = inflate_chunk(chunk, bad, layer=LAYER, name="big")
            except DigestMismatch:
                continue
            # The flip hit bytes deflate ignores (gzip's mtime, or the trailer
            # past the chunk's end): then what comes back is right.
            assert got == NOISE[chunk.chunk_offset : chunk.chunk_offset + chunk.chunk_size]
        with pytest.raises(DigestMismatch, match="of 'big' in layer"):
            inflate_chunk(chunk, data[: len(data) // 2], layer=LAYER, name="big")


def test_a_chunk_with_another_digest_is_refused(chunked: tuple[Blob, Toc]) -> None:
    blob, toc = chunked
    big = next(e for e in toc.entries if e.name == "big")
    one, two = big.chunks[:2]
    with pytest.raises(DigestMismatch, match=str(one.chunk_digest)):
        inflate_chunk(one, blob.data[two.offset : two.end], layer=LAYER, name="big")


# --- hostile TOCs ---------------------------------------------------------------


def _set(target: str, /, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for entry in doc["entries"]:
            if entry["name"] == target:
                entry.update(fields)
                return
        raise AssertionError(target)

    return edit


def _chunk_of(target: str, index: int, /, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        [e for e in doc["entries"] if e["name"] == target][index].update(fields)

    return edit


def _insert(at: int, entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["entries"].insert(at, entry)


def _drop(name: str, key: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        next(e for e in doc["entries"] if e["name"] == name).pop(key)

    return edit


def _share_offset(doc: dict[str, Any]) -> None:
    files = [e for e in doc["entries"] if e.get("offset")]
    files[2]["offset"] = files[1]["offset"]


HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "dot-dot": (_set("etc/passwd", name="../etc/passwd"), "'..'"),
    "absolute": (_set("etc/passwd", name="/etc/passwd"), "absolute"),
    "empty name": (_set("etc/passwd", name=""), "empty"),
    "name not a string": (_set("etc/passwd", name=7), "no named object"),
    "entry not an object": (lambda doc: doc["entries"].append([1]), "no named object"),
    "unknown type": (_set("etc/passwd", type="socket"), "type 'socket'"),
    "root not a dir": (_set("etc/passwd", name="./", size=0), "root"),
    "huge size": (_set("big", size=MAX_FILE_SIZE + 1), "size"),
    "bool size": (_set("etc/passwd", size=True), "size"),
    "negative size": (_set("etc/passwd", size=-1), "size"),
    "null mode": (_set("etc/passwd", mode=None), "mode"),
    "string gid": (_set("etc/passwd", gid="0"), "gid"),
    # Wrong in three ways: refused for the first the format lists.
    "bad mode, uid and gid": (_set("etc/passwd", mode=-1, uid=-1, gid=-1), "has mode -1"),
    "chunks short of the size": (_chunk_of("text", -1, chunkSize=100), "chunks for 24676 of"),
    "negative uid": (_set("etc/passwd", uid=-1), "uid"),
    "bool gid": (_set("etc/passwd", gid=True), "gid"),
    "float mode": (_set("etc/passwd", mode=420.0), "mode"),
    "uid -1 as unsigned": (_set("etc/passwd", uid=(1 << 32) - 1), "uid"),
    "device out of range": (_set("dev/null", devMajor=4096), "devMajor"),
    "bad modtime": (_set("etc/passwd", modtime="yesterday"), "modtime"),
    "month 13": (_set("etc/passwd", modtime="2020-13-01T00:00:00Z"), "modtime"),
    "xattr not base64": (_set("etc/hostname", xattrs={"user.a": "***"}), "base64"),
    "xattrs not a map": (_set("etc/hostname", xattrs=["user.a"]), "xattrs"),
    "empty symlink": (_set("bin/sh", linkName=""), "empty target"),
    "hardlink out": (_set("bin/hl", linkName="../x"), "'..'"),
    "no chunkDigest": (_set("etc/passwd", chunkDigest=""), "chunkDigest"),
    "bad chunkDigest": (_set("etc/passwd", chunkDigest="md5:00"), "not a digest"),
    "no offset": (_drop("etc/passwd", "offset"), "no offset"),
    "offset in the TOC": (_set("etc/passwd", offset=10**9), "offset"),
    "shared member": (_share_offset, "shares bytes"),
    "chunk gap": (_chunk_of("big", 1, chunkOffset=4097), "does not start"),
    "orphan chunk": (_insert(0, {"name": "x", "type": "chunk", "offset": 0}), "follows no"),
    "chunk of another name": (_chunk_of("big", 1, name="text"), "follows no"),
    "chunk past the end": (
        lambda doc: doc["entries"].insert(
            max(i for i, e in enumerate(doc["entries"]) if e["name"] == "text") + 1,
            {
                "name": "text",
                "type": "chunk",
                "offset": 1,
                "chunkOffset": 25_000,
                "chunkDigest": "sha256:" + "0" * 64,
            },
        ),
        "past the end",
    ),
    "chunkSize beyond the file": (_set("etc/passwd", chunkSize=1000), "chunkSize"),
    "more than deflate makes": (
        _set("empty", size=1 << 30, offset=1, chunkDigest="sha256:" + "0" * 64),
        "needs",
    ),
    "version 2": (lambda doc: doc.update(version=2), "version 1"),
    "version true": (lambda doc: doc.update(version=True), "version 1"),
    "no entries": (lambda doc: doc.pop("entries"), "no list"),
}


@pytest.mark.parametrize(("edit", "match"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_toc_is_refused(edit: Callable[[dict[str, Any]], object], match: str) -> None:
    blob = write_estargz(FILES, chunk_size=4096, edit_toc=edit)
    with pytest.raises(BadImage, match=match) as caught:
        load(blob)
    assert f"layer {LAYER}" in str(caught.value)


def test_packed_chunks_must_not_overlap() -> None:
    def overlap(doc: dict[str, Any]) -> None:
        packed = [e for e in doc["entries"] if "innerOffset" in e]
        packed[2]["innerOffset"] = packed[1]["innerOffset"] + 1

    load(write_estargz(FILES, pack=1 << 20))
    with pytest.raises(BadImage, match="shares bytes with another at 0"):
        load(write_estargz(FILES, pack=1 << 20, edit_toc=overlap))


def test_unsafe_names_are_unsafe_layers() -> None:
    with pytest.raises(UnsafeLayer):
        load(write_estargz(FILES, edit_toc=_set("etc/passwd", name="a/../../b")))


def _raw_toc(doc: object) -> bytes:
    return json.dumps(doc).encode()


JSON_BOMBS = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep in an entry": b'{"version":1,"entries":[' + b"[" * 50_000 + b"]" * 50_000 + b"]}",
    "a huge integer": b'{"version":1,"entries":[{"name":"a","type":"reg","size":1'
    + b"0" * 5000
    + b"}]}",
    "not UTF-8": b'{"version":1,"entries":[{"name":"\xff"}]}',
    "not JSON": b"\x00\x01",
}


@pytest.mark.parametrize("data", JSON_BOMBS.values(), ids=JSON_BOMBS.keys())
def test_json_bombs_are_refused(data: bytes) -> None:
    with pytest.raises(BadImage):
        parse_toc(data, toc_offset=1000, layer=LAYER)


def test_toc_limits() -> None:
    blob = write_estargz(FILES)
    with pytest.raises(BadImage, match="over 10 entries"):
        load(blob, limits=TocLimits(max_entries=10))
    with pytest.raises(BadImage, match="inflates to more than"):
        load(blob, limits=TocLimits(max_json_bytes=100))
    with pytest.raises(BadImage, match="needs"):
        load(write_estargz(FILES), limits=TocLimits(max_chunk_bytes=1000))


def _member(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


def _tar_of(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512 + 1024)


TOC_MEMBERS = {
    "a gzip bomb": (_member(bytes(200 << 20)), "inflates to more than"),
    "not gzip": (b"PK\x03\x04" + bytes(100), "not a valid gzip"),
    "cut short": (_member(_tar_of("stargz.index.json", b"{}"))[:-20], "cut short"),
    "no tar": (_member(b"{}"), "no tar header"),
    "another file": (_member(_tar_of("etc/passwd", b"{}")), "not the file"),
    "a directory": (
        _member(
            _tar_of("stargz.index.json", b"")[:156] + b"5" + _tar_of("stargz.index.json", b"")[157:]
        ),
        "valid tar header",
    ),
    "bad checksum": (_member(b"x" + _tar_of("stargz.index.json", b"{}")[1:]), "valid tar header"),
    "json cut short": (_member(_tar_of("stargz.index.json", b"{}" * 300)[:600]), "cut short"),
}


@pytest.mark.parametrize(("member", "match"), TOC_MEMBERS.values(), ids=TOC_MEMBERS.keys())
def test_hostile_toc_members(member: bytes, match: str) -> None:
    with pytest.raises(BadImage, match=match):
        read_toc(
            member,
            toc_offset=100,
            expected=Digest("sha256:" + "0" * 64),
            layer=LAYER,
            limits=TocLimits(max_json_bytes=1 << 20),
        )


# --- Hypothesis -----------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)
entries = st.fixed_dictionaries(
    {"name": st.one_of(names, st.sampled_from(["a", "a/", "./", "../x", "/x"]))},
    optional={
        "type": st.sampled_from(
            ["dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk", "sock"]
        ),
        **{
            k: values
            for k in (
                "size",
                "mode",
                "uid",
                "gid",
                "offset",
                "chunkOffset",
                "chunkSize",
                "innerOffset",
                "devMajor",
                "devMinor",
            )
        },
        "modtime": st.one_of(values, st.just("2020-01-01T00:00:00Z")),
        "linkName": st.one_of(values, names),
        "chunkDigest": st.one_of(values, st.just("sha256:" + "1" * 64)),
        "xattrs": st.one_of(values, st.dictionaries(names, st.sampled_from(["", "AA==", "*"]))),
    },
)


@given(st.lists(entries, max_size=8), st.integers(min_value=0, max_value=1 << 20))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_toc_json_parses_or_is_refused(raw: list[dict[str, Any]], toc_offset: int) -> None:
    data = _raw_toc({"version": 1, "entries": raw})
    try:
        toc = parse_toc(data, toc_offset=toc_offset, layer=LAYER)
    except BadImage:
        return
    for entry in toc.entries:
        assert ".." not in entry.path
        covered = sum(c.chunk_size for c in entry.chunks)
        assert covered == entry.size
        assert all(0 <= c.offset < c.end <= toc_offset for c in entry.chunks)


@pytest.fixture(scope="module")
def sample() -> Blob:
    return write_estargz(FILES[:6], chunk_size=64)


@given(st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_blobs_are_read_right_or_refused(sample: Blob, data: st.DataObject) -> None:
    """Flip bytes anywhere in the TOC member or footer: a TOC either still
    matches its digest or is refused, never a crash."""
    blob = bytearray(sample.data)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(sample.toc_offset, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    try:
        found = parse_footer(bytes(blob), len(blob))
        if found is None:
            return
        member = blob[found.toc_offset : found.toc_end]
        toc = read_toc(
            bytes(member),
            toc_offset=found.toc_offset,
            expected=Digest(sample.toc_digest),
            layer=LAYER,
        )
    except (BadImage, DigestMismatch):
        return
    assert [e.name for e in toc.entries] == [e.name for e in load(sample).entries]


def test_inflate_rejects_garbage_without_crashing() -> None:
    toc = load(write_estargz(FILES))
    chunk = next(e for e in toc.entries if e.name == "big").chunks[0]
    for garbage in (b"", b"\x1f\x8b", b"\x00" * 100, zlib.compress(NOISE)):
        with pytest.raises(DigestMismatch):
            inflate_chunk(chunk, garbage, layer=LAYER, name="big")


def test_base64_xattrs_roundtrip() -> None:
    value = bytes(range(256))
    blob = write_estargz([File("f", b"x", xattrs={"user.all": value})])
    (entry,) = (e for e in load(blob).entries if e.name == "f")
    assert entry.xattrs == (("user.all", value),)
    assert base64.b64encode(value).decode() in blob.toc_json.decode()
