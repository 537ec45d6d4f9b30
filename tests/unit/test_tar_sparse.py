"""Sparse extents without archives: checked (tar_sparse), ranges cut into data and holes (extents).

A mount process reads sparse files through providers.extents alone: it
never imports tarfile, which only building an index needs.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.errors import BadImage
from providers.extents import Extent, data_extents, pieces
from providers.tar_sparse import checked_extents


@st.composite
def sparse_files(draw: st.DrawFn) -> tuple[tuple[Extent, ...], int, bytes, bytes]:
    """(extents, size, stored data, the file's bytes) of a random sparse file."""
    runs = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), max_size=8))
    extents, stored, position = [], b"", 0
    content = bytearray()
    for gap, length in runs:
        position += gap
        data = bytes((len(stored) + i) % 251 + 1 for i in range(length))
        extents.append((position, length, len(stored)))
        content += bytes(position - len(content)) + data
        stored += data
        position += length
    size = position + draw(st.integers(0, 40))
    content += bytes(size - len(content))
    return tuple(extents), size, stored, bytes(content)


def read(extents: tuple[Extent, ...] | None, size: int, stored: bytes, off: int, n: int) -> bytes:
    out = b""
    for length, where in pieces(extents, size, off, n):
        assert length > 0
        out += bytes(length) if where is None else stored[where : where + length]
    return out


@given(sparse_files(), st.integers(0, 400), st.integers(0, 400))
def test_pieces_read_any_range_of_a_sparse_file(
    found: tuple[tuple[Extent, ...], int, bytes, bytes], off: int, n: int
) -> None:
    extents, size, stored, content = found
    assert read(extents, size, stored, off, n) == content[off : off + n]
    # A file with no map is its stored bytes.
    assert read(None, len(content), content, off, n) == content[off : off + n]


@given(sparse_files())
def test_checked_extents_takes_what_the_map_says(
    found: tuple[tuple[Extent, ...], int, bytes, bytes],
) -> None:
    extents, size, _, _ = found
    pairs = [(start, length) for start, length, _ in extents]
    # GNU tar ends a map with (size, 0); old GNU headers pad with (0, 0).
    assert checked_extents([*pairs, (size, 0), (0, 0)], size, layer="l", entry="e") == extents


def test_data_extents_of_an_ordinary_file() -> None:
    assert data_extents(None, 10) == ((0, 10, 0),)
    assert data_extents(None, 0) == ()
    assert data_extents((), 10) == ()


@pytest.mark.parametrize(
    ("pairs", "size", "reason"),
    [
        ([(0, 10), (5, 10)], 100, "overlap"),
        ([(50, 10), (0, 10)], 100, "overlap or run backwards"),
        ([(95, 10)], 100, "past its 100"),
        ([(101, 0)], 100, "past its 100"),
        ([(-1, 5)], 100, "past its 100"),
        ([(0, 1)] * 70_000, 100, "70000 extents"),
    ],
)
def test_checked_extents_refuses(pairs: list[tuple[int, int]], size: int, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        checked_extents(pairs, size, layer="sha256:l", entry="etc/x")


def test_a_mount_process_does_not_import_the_tar_parsers() -> None:
    probe = "import sys, lazyfs.fs.mount_main; print(sorted(set(sys.argv[1:]) & set(sys.modules)))"
    parsers = ["tarfile", "providers.tar_sparse", "providers.tar_stream", "zstandard"]
    found = subprocess.run(
        [sys.executable, "-c", probe, *parsers], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_pax_00_maps_read_the_same_from_old_and_new_tarfile() -> None:
    """tarfile passes PAX 0.0 maps as (pax_headers, buf) before gh-121285, (raw_headers,) since."""
    import tarfile

    from providers.tar_stream import CheckedTarInfo, _pax_record

    raw = [
        (0, b"GNU.sparse.size", b"100000"),
        (0, b"size", b"1024"),
        (0, b"GNU.sparse.offset", b"0"),
        (0, b"GNU.sparse.numbytes", b"512"),
        (0, b"GNU.sparse.offset", b"99488"),
        (0, b"GNU.sparse.numbytes", b"512"),
    ]
    old = (
        {k.decode(): v.decode() for _, k, v in raw},
        b"".join(_pax_record(k, v) for _, k, v in raw),
    )
    seen = []
    for form in (old, (raw,)):
        header = CheckedTarInfo("pax")
        header.type = tarfile.XHDTYPE
        member = CheckedTarInfo("f")
        member.offset_data = 1536
        header._proc_gnusparse_00(member, *form)
        sparse: Any = member.sparse  # typeshed says bytes; lazyfs keeps (offset, size) pairs
        seen.append((sparse, member.offset_data, vars(member)["_sparse_end"]))
    assert seen[0] == seen[1] == ([(0, 512), (99488, 512)], 1536, (100000, 1536 + 1024))
