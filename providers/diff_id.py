"""A layer's diff_id: the digest of its *uncompressed* tar, checked as the blob streams.

An image config names each layer by its diff_id, and the manifest names the
compressed blob by its digest.  Checking only the blob digest trusts the
manifest and ignores the config; a registry (or a tarball) whose manifest
and config disagree would provision a tree the config never described.

``DiffIdChecker`` is fed the blob's bytes as the store ingests them and,
beside the blob digest check, decompresses them (by what they
start with, as ``providers.compression.decompressed`` decides) into a hash,
output-bounded so a compression bomb costs CPU, never memory.  At EOF the
hash must be the diff_id, or ``DigestMismatch``.  It does not judge whether
the compressed stream is well formed (truncation, trailing garbage): the
layer's readers refuse those on their own, the same way everywhere.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
from collections.abc import Callable
from typing import BinaryIO, Protocol

import zstandard
from isal import isal_zlib

from providers.compression import sniff
from providers.digest import CHUNK, Digest, algorithm
from providers.errors import BadImage, DigestMismatch

# gzip framing (a header and a CRC trailer) for isal's zlib-compatible decoder.
_GZIP_WBITS = 31
# isal's stubs declare its error class as an instance of Exception.
_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]
# sniff needs this many bytes before it can name a compression.
_HEAD = 8


class _Sink:
    """Where decoders put the uncompressed bytes: hashed, counted, and cut off at ``most``."""

    def __init__(self, algorithm: str, most: int | None, why: str, what: str) -> None:
        self.hasher = hashlib.new(algorithm)
        self.size = 0
        self._most = most
        self._why = why
        self._what = what

    def update(self, data: bytes) -> None:
        self.size += len(data)
        if self._most is not None and self.size > self._most:
            # Raised at once: inflating the rest would only cost more CPU.
            raise BadImage(
                f"bad {self._what}: unpacks to more than {self._most} bytes, {self._why}"
            )
        self.hasher.update(data)


class _Decoder(Protocol):
    """One compression's incremental decoder: bytes in, bounded output to ``sink``."""

    def feed(self, data: bytes) -> None: ...


class _Gzip:
    """gzip members, one after another; output pulled ``CHUNK`` bytes at a time.

    A member that inflates a thousandfold never sits in memory whole.
    """

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._zlib = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
        self._between = False  # after a member: zero padding may follow, as gzip allows

    def feed(self, data: bytes) -> None:
        while data:
            if self._between:
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._between = False
                self._zlib = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
            self._sink.update(self._zlib.decompress(data, CHUNK))
            if self._zlib.eof:
                data = self._zlib.unused_data
                self._between = True
            else:
                data = self._zlib.unconsumed_tail
        # Output still held inside the decoder comes out without more input.
        while not self._between and (out := self._zlib.decompress(b"", CHUNK)):
            self._sink.update(out)


class _Chained:
    """bzip2 or xz streams, one after another, with the same bounded output."""

    def __init__(
        self, new: Callable[[], bz2.BZ2Decompressor | lzma.LZMADecompressor], sink: _Sink
    ) -> None:
        self._new = new
        self._sink = sink
        self._decoder = new()

    def feed(self, data: bytes) -> None:
        while True:
            self._sink.update(self._decoder.decompress(data, CHUNK))
            data = b""
            if self._decoder.eof:
                data = self._decoder.unused_data
                self._decoder = self._new()
                if not data:
                    return
            elif self._decoder.needs_input:
                return


class _Zstd:
    """zstd frames, decoded through a stream writer that hands on ``CHUNK`` bytes at a time."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        # The writer only ever calls ``write`` on its sink.
        decompressor = zstandard.ZstdDecompressor()
        self._writer = decompressor.stream_writer(self, write_size=CHUNK)  # type: ignore[arg-type]

    def write(self, data: bytes) -> int:
        self._sink.update(data)
        return len(data)

    def feed(self, data: bytes) -> None:
        self._writer.write(data)


class _Plain:
    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def feed(self, data: bytes) -> None:
        self._sink.update(data)


class DiffIdChecker:
    """Fed a layer blob's bytes in order; ``verify`` says whether they inflate to ``diff_id``.

    ``what`` names the layer in errors.  ``bound`` (the most bytes the layer
    may unpack to, and why: ``providers.tar_stream.LayerLimits.bound``)
    stops a compression bomb with BadImage from ``feed`` as soon as it
    passes the bound; damaged compressed data is reported by ``verify``, so
    a caller that checks the blob's digest first reports a blob that is not
    what was promised as that.
    """

    def __init__(
        self, diff_id: Digest | None, what: str, bound: tuple[int, str] | None = None
    ) -> None:
        self._diff_id = diff_id
        self._what = what
        self._algorithm = "sha256" if diff_id is None else algorithm(diff_id)
        most, why = bound if bound is not None else (None, "")
        self._hasher = _Sink(self._algorithm, most, why, what)
        self._head = b""
        self._decoder: _Decoder | None = None
        self._checked = False
        self._error: BadImage | None = None

    def feed(self, data: bytes) -> None:
        """Take ``data`` as the next bytes of the blob."""
        if self._error is not None:
            return
        if self._decoder is None:
            self._head += data
            if len(self._head) < _HEAD:
                return
            data, self._head = self._head, b""
            self._decoder = _decoder_for(sniff(data[:_HEAD]), self._hasher)
        try:
            self._decoder.feed(data)
        except (
            _ISAL_ERROR,
            OSError,  # bz2's
            EOFError,
            ValueError,
            lzma.LZMAError,
            zstandard.ZstdError,
        ) as error:
            # Kept for verify: see the class docstring.
            self._error = BadImage(f"bad {self._what}: corrupt compressed data: {error}")

    def actual(self) -> Digest:
        """The diff_id of the bytes read so far, taken as the whole layer.

        Raises BadImage if they could not be decompressed.
        """
        if self._error is not None:
            raise self._error
        if self._decoder is None:  # fewer than _HEAD bytes in all: too short to be compressed
            self._decoder = _Plain(self._hasher)
            self._decoder.feed(self._head)
            self._head = b""
        return Digest(f"{self._algorithm}:{self._hasher.hasher.hexdigest()}")

    def verify(self) -> None:
        """Check the bytes read so far against the diff_id (if one was given); idempotent."""
        if self._checked:
            return
        if self._error is not None:
            raise self._error
        if self._diff_id is None:
            return
        actual = self.actual()
        if actual != self._diff_id:
            raise DigestMismatch(f"{self._what} diff_id", expected=self._diff_id, actual=actual)
        self._checked = True


def _decoder_for(kind: str, sink: _Sink) -> _Decoder:
    if kind == "gzip":
        return _Gzip(sink)
    if kind == "bzip2":
        return _Chained(bz2.BZ2Decompressor, sink)
    if kind == "xz":
        return _Chained(lzma.LZMADecompressor, sink)
    if kind == "zstd":
        return _Zstd(sink)
    return _Plain(sink)


def diff_id_of(stream: BinaryIO, what: str, bound: tuple[int, str] | None = None) -> Digest:
    """The sha256 diff_id of a whole (compressed or plain) layer blob read from ``stream``."""
    checker = DiffIdChecker(None, what, bound)
    while data := stream.read(CHUNK):
        checker.feed(data)
    return checker.actual()
