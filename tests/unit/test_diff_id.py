"""DiffIdChecker: the uncompressed digest of a layer blob, checked as it streams."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import tracemalloc

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from providers.diff_id import DiffIdChecker, diff_id_of
from providers.digest import Digest
from providers.errors import BadImage, DigestMismatch

TAR = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: several output chunks


def _digest(data: bytes) -> Digest:
    return Digest(f"sha256:{hashlib.sha256(data).hexdigest()}")


def _zstd_frames(data: bytes) -> bytes:
    half = len(data) // 2
    compressor = zstandard.ZstdCompressor()
    return compressor.compress(data[:half]) + compressor.compress(data[half:])


def _gzip_members(data: bytes) -> bytes:
    half = len(data) // 2
    return gzip.compress(data[:half]) + gzip.compress(data[half:])


def _gzip_padded(data: bytes) -> bytes:
    """Members with zero padding after them, which gzip readers skip."""
    return gzip.compress(data) + bytes(700) + gzip.compress(b"") + bytes(3)


FORMS = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "gzip members": _gzip_members,
    "zstd": zstandard.ZstdCompressor().compress,
    "zstd frames": _zstd_frames,
    "gzip padded": _gzip_padded,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


def _check(checker: DiffIdChecker, blob: bytes, size: int = 65536) -> None:
    for start in range(0, len(blob), size):
        checker.feed(blob[start : start + size])
    checker.verify()


@pytest.mark.parametrize("form", FORMS)
def test_the_uncompressed_digest_is_the_diff_id(form: str) -> None:
    blob = FORMS[form](TAR)
    _check(DiffIdChecker(_digest(TAR), "layer x"), blob)
    assert diff_id_of(io.BytesIO(blob), "layer x") == _digest(TAR)


@pytest.mark.parametrize("form", FORMS)
def test_another_diff_id_is_refused_at_eof(form: str) -> None:
    blob = FORMS[form](TAR)
    checker = DiffIdChecker(_digest(b"something else"), "layer x")
    with pytest.raises(DigestMismatch, match="layer x diff_id"):
        _check(checker, blob)


def test_a_blob_shorter_than_a_magic_number_is_plain() -> None:
    _check(DiffIdChecker(_digest(b"abc"), "layer x"), b"abc")


def test_corrupt_compressed_data_is_a_bad_image() -> None:
    blob = bytearray(gzip.compress(TAR))
    blob[20:40] = b"\xff" * 20
    checker = DiffIdChecker(_digest(TAR), "layer x")
    with pytest.raises(BadImage, match="layer x"):
        _check(checker, bytes(blob))


def test_a_bomb_is_hashed_without_holding_it() -> None:
    """256 MiB of zeros from a 256 KiB gzip: the output is pulled a chunk at a time."""
    zeros = 256 << 20
    blob = gzip.compress(bytes(zeros), compresslevel=9)
    hasher = hashlib.sha256()
    for _ in range(zeros >> 20):
        hasher.update(bytes(1 << 20))
    checker = DiffIdChecker(Digest(f"sha256:{hasher.hexdigest()}"), "bomb")
    tracemalloc.start()
    try:
        _check(checker, blob, len(blob))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@given(
    form=st.sampled_from(sorted(FORMS)),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=30),
)
def test_any_split_of_the_stream_gives_the_same_diff_id(form: str, cuts: list[int]) -> None:
    data = TAR[:20000]
    blob = FORMS[form](data)
    checker = DiffIdChecker(_digest(data), "layer x")
    position = 0
    for cut in cuts:
        checker.feed(blob[position : position + cut])
        position += cut
    checker.feed(blob[position:])
    checker.verify()


def test_a_bomb_is_refused_once_it_passes_its_bound() -> None:
    blob = gzip.compress(bytes(8 << 20), compresslevel=9)
    checker = DiffIdChecker(_digest(b""), "layer x", (4 << 20, "too much"))
    with pytest.raises(BadImage, match="layer x: unpacks to more than 4194304 bytes, too much"):
        _check(checker, blob)
