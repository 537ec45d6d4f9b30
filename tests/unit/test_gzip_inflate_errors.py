"""gzip layers are inflated by ISA-L (``providers.compression.decompressed``), and every
way a gzip stream can be bad ends as the error zlib's own reader gives, which each
reader of a layer refuses in one line; a good stream, of one member or several, reads whole.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest

from providers.compression import decompressed
from providers.errors import BadImage
from providers.tar_stream import LayerReader

DATA = os.urandom(1000) + b"a" * 100_000
GOOD = gzip.compress(DATA)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (GOOD, DATA),
        (GOOD + gzip.compress(b"xyz"), DATA + b"xyz"),
        (GOOD + b"\0" * 100, DATA),  # zero padding after the last member, as gzip takes it
    ],
)
def test_a_good_stream_reads_whole(stream: bytes, expected: bytes) -> None:
    assert decompressed(io.BytesIO(stream)).read() == expected


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (GOOD[:-20], EOFError),  # truncated
        (GOOD[:-8] + b"\0\0\0\0" + GOOD[-4:], gzip.BadGzipFile),  # CRC
        (GOOD[:-4] + b"\1\0\0\0", gzip.BadGzipFile),  # length
        (GOOD[:20] + b"\xff" * 30 + GOOD[50:], zlib.error),  # the deflate data itself
        (GOOD[:10] + bytes([GOOD[10] ^ 0xFF]) + GOOD[11:], zlib.error),
        (GOOD + b"garbage!", (EOFError, gzip.BadGzipFile)),  # not a member after the last
    ],
)
def test_a_bad_stream_fails_as_zlib_s_reader_fails(
    stream: bytes, error: type[Exception] | tuple[type[Exception], ...]
) -> None:
    with pytest.raises(error):
        decompressed(io.BytesIO(stream)).read()
    with pytest.raises(error):  # read in pieces, as tarfile reads it
        inflated = decompressed(io.BytesIO(stream))
        while inflated.read(4096):
            pass


def test_a_member_header_longer_than_isal_takes_is_a_bad_layer_in_one_line() -> None:
    # FNAME of 600 kB: past ISA-L's 512 KiB header buffer (zlib's reader takes it).
    raw = zlib.compressobj(wbits=-15)
    body = raw.compress(DATA) + raw.flush()
    name = b"n" * 600_000 + b"\0"
    trailer = zlib.crc32(DATA).to_bytes(4, "little") + len(DATA).to_bytes(4, "little")
    stream = b"\x1f\x8b\x08\x08" + b"\0" * 6 + name + body + trailer
    reader = LayerReader(decompressed(io.BytesIO(stream)), "sha256:" + "0" * 64)
    with pytest.raises(BadImage) as refused:
        reader.read(4096)
    assert "\n" not in str(refused.value) and "header" in str(refused.value)
