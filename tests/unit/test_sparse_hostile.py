"""Hostile and damaged GNU sparse entries: one clear BadImage from applying and from indexing.

Each layer but the truncated ones puts its bad sparse entry right before a
private ``etc/shadow``, whose bytes a reader that trusted the map would
serve as the sparse file's.  The archives are written block by block here,
since no tool writes them.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from backends.apply import apply_layer
from lazyfs.index.formats import build_index
from providers.digest import digest_bytes
from providers.errors import BadImage
from providers.tar_sparse import MAX_EXTENTS
from providers.tar_stream import MAX_ENTRY_SIZE
from tests.support.sparse import SECRET

BLOCK = tarfile.BLOCKSIZE
END = bytes(2 * BLOCK)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, size, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def record(key: str, value: str) -> bytes:
    """One pax record, its length prefix counting itself."""
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax(records: list[tuple[str, str]], kind: bytes = tarfile.XHDTYPE) -> bytes:
    body = b"".join(record(key, value) for key, value in records)
    return header("PaxHeaders/x", len(body), kind) + padded(body)


def entry(name: str, data: bytes, size: int | None = None, kind: bytes = tarfile.REGTYPE) -> bytes:
    return header(name, len(data) if size is None else size, kind) + padded(data)


SHADOW = entry("etc/shadow", SECRET)


def then_shadow(data: bytes) -> bytes:
    return data + SHADOW + END


def old_gnu(name: str, stored: bytes, realsize: int, slots: list[tuple[int, int]]) -> bytes:
    """An old GNU 'S' header (4 slots at most here, isextended as asked) and its data."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = tarfile.GNUTYPE_SPARSE, len(stored), 0o644
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    for i, (offset, length) in enumerate(slots[:4]):
        buf[386 + 24 * i : 386 + 24 * i + 24] = b"%011o\0%011o\0" % (offset, length)
    buf[482] = 1 if len(slots) > 4 else 0
    buf[483:495] = b"%011o\0" % realsize
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf) + padded(stored)


def map_10(numbers: list[int]) -> bytes:
    return padded(b"".join(b"%d\n" % n for n in numbers))


def v10(name: str, realsize: int, sparse_map: bytes, stored: bytes) -> bytes:
    records = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]
    records += [("GNU.sparse.realsize", str(realsize))]
    return pax(records) + entry(name, sparse_map + stored)


def v01(sparse_map: str, realsize: int, stored: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    records = [("GNU.sparse.size", str(realsize)), ("GNU.sparse.map", sparse_map)]
    return pax(records) + entry("etc/public", stored, kind=kind)


BAD: dict[str, bytes] = {
    # The map promises more than is stored: the reader would go on into etc/shadow.
    "more-than-stored-0.1": v01("0,4096", 4096, b"x" * 10),
    "more-than-stored-1.0": v10("etc/public", 4096, map_10([1, 0, 4096]), b"x" * 10),
    "more-than-stored-old-gnu": old_gnu("etc/public", b"x" * 10, 4096, [(0, 4096)]),
    "less-than-stored": v01("0,10", 100, b"x" * 2000),
    "overlapping": v01("0,10,5,10", 100, b"x" * 20),
    "backwards": v01("50,10,0,10", 100, b"x" * 20),
    "past-its-size": v01("0,10,95,10", 100, b"x" * 20),
    "not-a-number": v01("0,x", 100, b""),
    "negative": v01("-5,10", 100, b"x" * 10),
    "odd-map": v01("0,10,20", 100, b"x" * 10),
    "no-size": pax([("GNU.sparse.map", "0,10")]) + entry("etc/public", b"x" * 10),
    "a-tebibyte-of-holes": v01("0,10", 2 * MAX_ENTRY_SIZE, b"x" * 10),
    "0.0-out-of-order": pax(
        [("GNU.sparse.size", "100"), ("GNU.sparse.numbytes", "10"), ("GNU.sparse.offset", "0")]
    )
    + entry("etc/public", b"x" * 10),
    "0.0-unpaired": pax(
        [
            *(("GNU.sparse.size", "100"), ("GNU.sparse.offset", "0")),
            *(("GNU.sparse.numbytes", "10"), ("GNU.sparse.offset", "50")),
        ]
    )
    + entry("etc/public", b"x" * 10),
    "1.0-endless-map": v10("etc/public", 100, map_10([MAX_EXTENTS + 1]), b""),
    "1.0-map-past-its-entry": v10("etc/public", 100, map_10([3, 0, 10]), b""),
    "1.0-map-garbage": v10("etc/public", 100, padded(b"1\n0\nten\n"), b"x" * 10),
    "old-gnu-extension-garbage": old_gnu(
        "etc/public", b"x" * 50, 100, [(0, 10), (20, 10), (40, 10), (60, 10), (80, 10)]
    ),
    "sparse-directory": v01("0,10", 100, b"", kind=tarfile.DIRTYPE),
    "global-sparse-map": pax([("GNU.sparse.size", "4096"), ("GNU.sparse.map", "0,4096")], b"g")
    + entry("etc/public", b"x" * 10),
    # Not sparse at all: a global size makes every later file claim it.
    "global-size": pax([("size", "4096")], b"g") + entry("etc/public", b"x" * 10),
}
CASES = {name: then_shadow(data) for name, data in BAD.items()}
CASES["1.0-map-truncated"] = (
    pax([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "100")])
    + header("etc/public", 4 * BLOCK)
    + b"1\n"
)
CASES["old-gnu-extension-truncated"] = old_gnu(
    "etc/public", b"", 100, [(0, 0), (20, 0), (40, 0), (60, 0), (80, 0)]
)[:BLOCK]


@pytest.mark.parametrize("case", list(CASES))
def test_apply_refuses_with_one_line(case: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = CASES[case]
    with pytest.raises(BadImage) as caught:
        apply_layer(root, io.BytesIO(data), layer="sha256:l")
    message = str(caught.value)
    assert message.startswith("bad layer sha256:l: ") and "\n" not in message


@pytest.mark.parametrize("case", list(CASES))
def test_the_index_refuses_with_one_line(case: str, tmp_path: Path) -> None:
    data = CASES[case]
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    digest = digest_bytes(data)
    with pytest.raises(BadImage) as caught:
        build_index(digest, blob, scratch)
    message = str(caught.value)
    assert message.startswith(f"bad layer {digest}: ") and "\n" not in message


def test_the_handmade_forms_are_read_when_sound(tmp_path: Path) -> None:
    """The builders above make sound sparse entries: the cases fail on their flaw alone."""
    sound = {
        "0.1": v01("0,10,50,10,100,0", 100, b"a" * 10 + b"b" * 10),
        "1.0": v10("etc/public", 100, map_10([2, 0, 10, 50, 10]), b"a" * 10 + b"b" * 10),
        "old-gnu": old_gnu("etc/public", b"a" * 10 + b"b" * 10, 100, [(0, 10), (50, 10)]),
    }
    want = b"a" * 10 + bytes(40) + b"b" * 10 + bytes(40)
    for form, data in sound.items():
        root = tmp_path / form
        root.mkdir()
        apply_layer(root, io.BytesIO(then_shadow(data)), layer="sha256:l")
        assert (root / "etc/public").read_bytes() == want, form
        assert (root / "etc/shadow").read_bytes() == SECRET
