"""BlobSource conformance: whole blobs and ranges, at and past the end, and refusals.

Runs against the local puller, the registry client, the store
(``StoreBlobs``) and the fake (``conftest.BLOB_CASES``), each serving one
blob whose bytes the test knows.
"""

from __future__ import annotations

import pytest

from providers.digest import Digest
from providers.errors import NotFound
from tests.support.source_cases import BlobCase

UNKNOWN = Digest("sha256:" + "0" * 64)


def test_open_streams_the_whole_blob(blob_case: BlobCase) -> None:
    with blob_case.source.open(blob_case.digest) as stream:
        assert stream.read() == blob_case.data


def test_a_range_of_the_whole_blob(blob_case: BlobCase) -> None:
    size = len(blob_case.data)
    assert blob_case.source.read_range(blob_case.digest, 0, size) == blob_case.data


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_range_inside_the_blob(blob_case: BlobCase, where: str) -> None:
    size = len(blob_case.data)
    length = max(1, size // 5)
    offset = {"start": 0, "middle": size // 2 - length // 2, "end": size - length}[where]
    got = blob_case.source.read_range(blob_case.digest, offset, length)
    assert got == blob_case.data[offset : offset + length]


def test_a_range_running_past_the_end_stops_at_it(blob_case: BlobCase) -> None:
    size = len(blob_case.data)
    got = blob_case.source.read_range(blob_case.digest, size - 3, 100)
    assert got == blob_case.data[-3:]


@pytest.mark.parametrize("past", [0, 1, 1 << 40])
def test_a_range_starting_at_or_past_the_end_is_empty(blob_case: BlobCase, past: int) -> None:
    size = len(blob_case.data)
    assert blob_case.source.read_range(blob_case.digest, size + past, 10) == b""


@pytest.mark.parametrize("offset", [0, 5])
def test_a_zero_length_range_is_empty(blob_case: BlobCase, offset: int) -> None:
    assert blob_case.source.read_range(blob_case.digest, offset, 0) == b""


@pytest.mark.parametrize(("offset", "length"), [(-1, 10), (0, -1), (-5, -5)])
def test_a_negative_range_is_a_value_error(blob_case: BlobCase, offset: int, length: int) -> None:
    with pytest.raises(ValueError, match="negative range"):
        blob_case.source.read_range(blob_case.digest, offset, length)


def test_an_unknown_digest_is_not_found(blob_case: BlobCase) -> None:
    with pytest.raises(NotFound):
        blob_case.source.open(UNKNOWN)
    with pytest.raises(NotFound):
        blob_case.source.read_range(UNKNOWN, 0, 10)
