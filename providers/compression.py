"""Layer compression: recognise gzip, zstd and plain tar by their first bytes."""

from __future__ import annotations

import gzip
import io
from typing import Any, BinaryIO

import zstandard

from providers.errors import BadImage

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"


def sniff(head: bytes) -> str:
    """Name the compression of a stream from its first bytes: gzip, zstd, bzip2, xz or none."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    if head.startswith(XZ_MAGIC):
        return "xz"
    return "none"


class _Raw(io.RawIOBase):
    """Any object with ``read`` (a VerifyingReader, say) as a raw stream.

    io.BufferedReader needs ``readable`` and ``readinto``, which plain
    readers such as VerifyingReader do not have.
    """

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def decompressed(stream: BinaryIO) -> BinaryIO:
    """Return a stream of ``stream``'s bytes, decompressed by what they start with.

    The media type is not trusted for this: images in the wild label gzip
    layers as plain tar and the reverse, and the bytes cannot lie.
    """
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(_Raw(stream))
    kind = sniff(buffered.peek(8)[:8])
    if kind == "gzip":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        return io.BufferedReader(reader)
    if kind == "bzip2":
        import bz2

        return bz2.BZ2File(buffered, mode="rb")  # type: ignore[return-value]
    if kind == "xz":
        import lzma

        return lzma.LZMAFile(buffered, mode="rb")  # type: ignore[return-value]
    if kind != "none":
        raise BadImage(f"unsupported compression {kind}")
    return buffered
