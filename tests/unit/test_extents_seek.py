"""``providers.extents.seek``: where lseek(SEEK_DATA) and lseek(SEEK_HOLE) land in a file.

A table over a file's size and its data extents (None: an ordinary file,
all data), against what lseek(2) answers on a filesystem with holes: the
start of the first data at or after the offset, the first hole at or
after it (the end of the file counts as one), None for ENXIO.
"""

from __future__ import annotations

import os

import pytest

from providers.extents import Extent, seek

DATA, HOLE = os.SEEK_DATA, os.SEEK_HOLE
# Data at [10, 20) and [20, 25) (touching: one run of data), and [40, 50); size 60.
SPARSE: tuple[Extent, ...] = ((10, 10, 0), (20, 5, 10), (40, 10, 15))
# Starts with data, ends with data.
FULL_ENDS: tuple[Extent, ...] = ((0, 5, 0), (8, 2, 5))

CASES = [
    # (extents, size, offset, whence, expected)
    (SPARSE, 60, 0, DATA, 10),  # in the leading hole: the next data
    (SPARSE, 60, 0, HOLE, 0),  # in a hole: there
    (SPARSE, 60, 10, DATA, 10),  # at data's start
    (SPARSE, 60, 12, DATA, 12),  # in data: there
    (SPARSE, 60, 12, HOLE, 25),  # in data: past the touching extent
    (SPARSE, 60, 24, HOLE, 25),  # at data's last byte
    (SPARSE, 60, 25, DATA, 40),  # at a hole's start
    (SPARSE, 60, 25, HOLE, 25),
    (SPARSE, 60, 39, DATA, 40),  # a hole's last byte
    (SPARSE, 60, 45, HOLE, 50),
    (SPARSE, 60, 50, DATA, None),  # in the trailing hole: no data after
    (SPARSE, 60, 50, HOLE, 50),
    (SPARSE, 60, 59, HOLE, 59),  # the last byte
    (SPARSE, 60, 60, DATA, None),  # at the size
    (SPARSE, 60, 60, HOLE, None),
    (SPARSE, 60, 61, HOLE, None),  # past it
    (SPARSE, 60, -1, DATA, None),  # negative, as lseek(2) answers on ext4
    (FULL_ENDS, 10, 0, HOLE, 5),
    (FULL_ENDS, 10, 6, DATA, 8),
    (FULL_ENDS, 10, 8, HOLE, 10),  # data up to the end: the end is the hole
    ((), 30, 0, DATA, None),  # all hole
    ((), 30, 0, HOLE, 0),
    ((), 30, 29, HOLE, 29),
    ((), 30, 30, HOLE, None),
    ((), 0, 0, DATA, None),  # empty
    ((), 0, 0, HOLE, None),
    (None, 100, 0, DATA, 0),  # an ordinary file: one extent [0, size)
    (None, 100, 99, DATA, 99),
    (None, 100, 7, HOLE, 100),
    (None, 100, 100, DATA, None),
    (None, 100, 100, HOLE, None),
    (None, 0, 0, HOLE, None),
]


@pytest.mark.parametrize(("extents", "size", "offset", "whence", "want"), CASES)
def test_seek(
    extents: tuple[Extent, ...] | None, size: int, offset: int, whence: int, want: int | None
) -> None:
    assert seek(extents, size, offset, whence) == want


def test_many_extents_found_from_the_middle() -> None:
    # Every other 4 KiB is data: answers in the middle of a long map.
    extents = tuple((i * 8192, 4096, i * 4096) for i in range(1000))
    size = 1000 * 8192
    assert seek(extents, size, 500 * 8192 + 4096, DATA) == 501 * 8192
    assert seek(extents, size, 500 * 8192 + 1, HOLE) == 500 * 8192 + 4096
    assert seek(extents, size, 999 * 8192 + 4096, DATA) is None


def test_other_whence_is_refused() -> None:
    with pytest.raises(ValueError, match="whence"):
        seek(None, 10, 0, os.SEEK_SET)
