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

Reading (``GzipCheckpoints``): a ``lazyfs.blobs.ranges.TarRangeReader``
over gzip blobs with their exported checkpoints, reading the
*uncompressed* stream.  See its docstring
for the thread-safety and resource bounds.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, cast

from indexed_gzip import IndexedGzipFile

from providers.digest import Digest
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
# Compressed bytes zran reads at a time.  A random read needs the compressed
# bytes of at most ``SPACING`` plus the range: a smaller buffer reads less
# that is thrown away; the build reads the whole blob and takes bigger gulps.
READ_BUFFER = 256 << 10
BUILD_READ_BUFFER = 1 << 20
# Uncompressed bytes a reader handle decodes beyond a read and keeps, so the
# next chunks of a file read front to back cost a copy, not another trip
# from the checkpoint; small so that a small file does not decode megabytes.
READ_AHEAD = 512 << 10
# Handles (each holding its own copy of the checkpoints) per layer.
HANDLES_PER_LAYER = 2


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


class GzipCheckpoints:
    """``read_range`` over gzip blobs, each with its exported checkpoint file.

    ``layers`` maps a digest to (blob, checkpoint file).  Thread-safe: an
    IndexedGzipFile keeps its position and decoder state, so a handle serves
    one read at a time, taken from a small pool per layer.  The pool grows
    only when every handle of the layer is busy, up to ``handles_per_layer``:
    a lock per layer would make the chunk cache's worker threads wait in
    line on a big layer while zran decodes without the GIL and could run
    them in parallel; but every handle holds its own copy of the checkpoint
    windows (about 3% of the layer), so the pool stays small.  Handles open
    the blob per call and keep no descriptor: descriptors in use are bounded
    by the reads in flight, handles by layers x ``handles_per_layer``.
    Handles are made on first use, so a mount starts without loading any.
    """

    def __init__(
        self,
        layers: Mapping[Digest, tuple[Path, Path]],
        *,
        handles_per_layer: int = HANDLES_PER_LAYER,
    ) -> None:
        self._pools = {
            digest: _Pool(blob, checkpoints, handles_per_layer)
            for digest, (blob, checkpoints) in layers.items()
        }

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        pool = self._pools[digest]  # KeyError for an unknown layer, as promised
        if length <= 0:
            return b""
        try:
            with pool.handle() as handle:
                handle.seek(offset)  # past the end: read() gives b""
                parts = []
                left = length
                while left > 0 and (data := handle.read(left)):
                    parts.append(data)
                    left -= len(data)
                return b"".join(parts)
        except (OSError, ValueError) as error:
            # indexed_gzip raises IOError, ValueError and their subclasses.
            raise OSError(
                errno.EIO, f"layer {digest}: cannot read {length} bytes at {offset}: {error}"
            ) from error

    def close(self) -> None:
        """Close the idle handles; reads may still open new ones."""
        for pool in self._pools.values():
            pool.close()


class _Pool:
    """Up to ``size`` reader handles over one blob, each lent to one thread at a time."""

    def __init__(self, blob: Path, checkpoints: Path, size: int) -> None:
        self._blob = blob
        self._checkpoints = checkpoints
        self._size = size
        self._idle: list[IndexedGzipFile] = []
        self._made = 0
        self._changed = threading.Condition()

    @contextmanager
    def handle(self) -> Iterator[IndexedGzipFile]:
        with self._changed:
            while not self._idle and self._made >= self._size:
                self._changed.wait()
            handle = self._idle.pop() if self._idle else None
            if handle is None:
                self._made += 1  # reserved; opened below, outside the lock (it reads a file)
        try:
            if handle is None:
                handle = self._open()
            yield handle
        except BaseException:
            # A handle that failed may be in any state: drop it, a new one is cheap.
            if handle is not None:
                handle.close()
            with self._changed:
                self._made -= 1
                self._changed.notify()
            raise
        with self._changed:
            self._idle.append(handle)
            self._changed.notify()

    def _open(self) -> IndexedGzipFile:
        checkpoints = self._checkpoints.read_bytes()
        handle = IndexedGzipFile(
            filename=str(self._blob),
            auto_build=False,  # the imported index is complete; never decode to extend it
            readbuf_size=READ_BUFFER,
            buffer_size=READ_AHEAD,
        )
        try:
            # From memory, not a file: see Checkpointer.export.
            handle.import_index(fileobj=io.BytesIO(checkpoints))
        except BaseException:
            handle.close()
            raise
        return handle

    def close(self) -> None:
        with self._changed:
            idle, self._idle = self._idle, []
            self._made -= len(idle)
            self._changed.notify_all()
        for handle in idle:
            handle.close()
