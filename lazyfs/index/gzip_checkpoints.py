"""gzip checkpoints: random access into a gzip layer blob without an uncompressed copy.

A deflate stream cannot be entered in the middle: decoding a byte needs the
32 KiB of output before it.  ``indexed_gzip`` (zran) records *checkpoints*
(a compressed offset, a bit offset and that 32 KiB window) every ``spacing``
bytes of output; from the checkpoint before an offset it decompresses at
most ``spacing`` bytes to get there.

Building (``Checkpointer``): while the index build reads the layer's tar
stream through Python's validating decompressor, the checkpointer lets zran
extend its checkpoints up to where that stream has got, so both walk the
blob together in one streaming pass (zran reads pages the validator has
just read).  zran itself is not trusted for integrity: it checks no CRC
when it builds incrementally and ends a truncated stream quietly, so it
only ever goes where ``providers.compression.decompressed`` (the same
decompressor ``backends.apply`` uses) has already accepted the bytes, and at
the end both must agree on the stream's length.  Its errors become BadImage.

Reading is ``lazyfs.index.gzip_reads``: ISA-L, from the exported
checkpoints, without indexed_gzip.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, cast

from indexed_gzip import IndexedGzipFile

from providers.errors import BadImage

# 1 MiB between checkpoints: a read decompresses 512 KiB on average (1 MiB at
# most, a couple of milliseconds) before its first byte, while the windows
# cost 32 KiB per MiB of layer, about 3% of the uncompressed size, on disk
# and in the memory of every open reader; the copy this replaces cost 100%.
SPACING = 1 << 20
# How far the validating stream runs ahead before zran catches up: big
# enough that zran's file opens and index lookups do not count, small enough
# that the blob's pages are still cached when zran reads them.
EXTEND_EVERY = 8 << 20
# Compressed bytes zran reads at a time while it builds.
BUILD_READ_BUFFER = 1 << 20


class Checkpointer:
    """Checkpoints of the gzip blob ``blob``, made alongside a validated read of it.

    ``track`` wraps the validated, decompressed stream of the same blob;
    reading the wrapper drives zran along.  ``export`` finishes the index
    (``tar_size``: the length the validated stream had) and returns it in
    indexed_gzip's format.  Raises BadImage naming ``layer`` when zran
    fails or disagrees.  Use as a context manager: it closes zran's handle.
    """

    def __init__(self, blob: Path, *, layer: str, spacing: int = SPACING) -> None:
        self.layer = layer
        try:
            # drop_handles (the default): the blob is opened per call, no descriptor kept.
            self._zran = IndexedGzipFile(
                filename=str(blob), spacing=spacing, readbuf_size=BUILD_READ_BUFFER
            )
        except (OSError, ValueError) as error:
            raise self._bad(f"cannot open it for checkpoints: {error}") from error
        self._next = EXTEND_EVERY

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zran.close()

    def track(self, stream: BinaryIO) -> BinaryIO:
        """``stream``, read through: each read moves the checkpoints along."""
        # It has read(), all that LayerReader and tarfile call.
        return cast(BinaryIO, _Tracked(stream, self))

    def reached(self, position: int) -> None:
        """The validated stream has got to ``position``: checkpoint up to there."""
        if position >= self._next:
            self._extend(position)
            self._next = position + EXTEND_EVERY

    def export(self, tar_size: int) -> bytes:
        self._extend(tar_size)
        try:
            # The index is complete only once zran has seen the end itself.
            end = self._zran.seek(0, os.SEEK_END)
        except (OSError, ValueError) as error:
            raise self._bad(f"checkpoints do not reach the end: {error}") from error
        if end != tar_size:
            raise self._bad(f"checkpoints cover {end} bytes, the stream has {tar_size}")
        # A BytesIO, not a file: given a real file, indexed_gzip fdopen()s a C
        # stream over its descriptor and never closes that stream.
        out = io.BytesIO()
        try:
            self._zran.export_index(fileobj=out)
        except (OSError, ValueError) as error:
            raise self._bad(f"cannot export checkpoints: {error}") from error
        return out.getvalue()

    def _extend(self, position: int) -> None:
        try:
            # With auto_build, seeking builds checkpoints up to the offset
            # (without the GIL) and decodes nothing it does not have to.
            self._zran.seek(position)
        except (OSError, ValueError) as error:
            raise self._bad(f"cannot checkpoint its gzip stream at {position}: {error}") from error

    def _bad(self, reason: str) -> BadImage:
        return BadImage(f"bad layer {self.layer}: {reason}")


class _Tracked:
    """A stream that tells its ``Checkpointer`` how far it has been read."""

    def __init__(self, stream: BinaryIO, checkpointer: Checkpointer) -> None:
        self._stream = stream
        self._checkpointer = checkpointer
        self._position = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self._position += len(data)
        self._checkpointer.reached(self._position)
        return data
