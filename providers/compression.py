"""Layer compression: recognise gzip, zstd and plain tar by their first bytes.

gzip is inflated by ISA-L (``isal.igzip``), about twice as fast as zlib
here (a 95 MB layer: 0.20-0.24 s against 0.48-0.65 s), with gzip's own
checks (header, CRC, length, every member) and the header's own CRC, which
zlib checks too where layers are read through checkpoints. Its decoder's
errors are given as zlib's (``zlib.error``), and a member header longer
than its 512 KiB buffer (a name or comment no tool writes) as a bad gzip
file: every reader of a layer refuses those in one line.
"""

from __future__ import annotations

import gzip
import io
import zlib
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
        # Loaded for gzip alone: the cache daemon sniffs, and inflates nothing.
        from isal import igzip

        inflating = igzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[no-untyped-call]
        return _Inflated(inflating)  # type: ignore[return-value]
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


class _Inflated(io.RawIOBase):
    """An ``igzip.GzipFile`` whose decoder errors are ``zlib.error``, as zlib's gzip raises."""

    def __init__(self, inflating: io.BufferedIOBase) -> None:
        from isal import isal_zlib

        super().__init__()
        self._inflating = inflating
        # isal's stubs declare its error class as an instance of Exception.
        self._error: type[Exception] = isal_zlib.error  # type: ignore[assignment]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._inflating.readinto(buffer)
        except self._error as error:
            raise zlib.error(str(error)) from None
        except OverflowError as error:  # a member's header past isal's 512 KiB buffer
            raise gzip.BadGzipFile(f"gzip header too long: {error}") from None

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._inflating.read(size)
        except self._error as error:
            raise zlib.error(str(error)) from None
        except OverflowError as error:
            raise gzip.BadGzipFile(f"gzip header too long: {error}") from None

    def close(self) -> None:
        if not self.closed:
            self._inflating.close()
        super().close()
