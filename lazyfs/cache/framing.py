"""Length-prefixed frames on a byte stream: how messages cross the daemon's socket.

A frame is a 4-byte big-endian unsigned length, then that many payload bytes
(one serialized protobuf message; zero bytes is a valid, empty message).
``encode_frame`` makes one; ``FrameDecoder`` is the incremental reader, a
small state machine with no I/O: feed it bytes as they arrive, in pieces of
any size, and it returns the payloads completed so far, in order.

Frames are bounded by ``max_frame`` on both sides. A header announcing more
is an error the moment the header is complete, before any payload is
buffered, so a peer cannot make us allocate what it claims. After an error
the stream is out of step for good: the decoder refuses further input and
the connection is to be closed.
"""

from __future__ import annotations

import struct

from providers.errors import LazyfsError

HEADER = struct.Struct(">I")
# Messages carry paths and counts, and blob bytes only in a piece's answer
# (``lazyfs.cache.pieces.MAX_PIECE``): a few KiB, at most a quarter of this.
DEFAULT_MAX_FRAME = 1 << 20


class ProtocolError(LazyfsError):
    """A peer that does not speak ``cache.proto``: the connection is to be dropped.

    ProtocolError             (lazyfs.cache.framing)
    ├── FrameError            a byte stream that is not a sequence of frames
    └── BadRequest            a frame that is not a request we can act on
                              (lazyfs.cache.messages)
    """


class FrameError(ProtocolError):
    """A byte stream that is not a sequence of acceptable frames."""


def encode_frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """``payload`` with its length in front. Raises FrameError when it exceeds ``max_frame``."""
    if len(payload) > max_frame:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the limit of {max_frame}")
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Reassembles frames from a stream fed in arbitrary pieces.

    Two states: reading a header (``_need`` is None) and reading a payload of
    ``_need`` bytes. Bytes not yet part of a complete frame stay buffered
    between calls; ``pending`` tells how many, so a caller at EOF can tell a
    clean end (0) from a frame cut short.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 0 or max_frame > 0xFFFFFFFF:
            raise ValueError(f"max_frame {max_frame} does not fit a 4-byte length")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need: int | None = None
        self._failed: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not part of a returned frame yet."""
        return len(self._buffer) + (HEADER.size if self._need is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take ``data``; return the payloads it completed, oldest first.

        A header announcing more than ``max_frame`` bytes is a FrameError,
        raised by every call from then on; the frames complete before it are
        still returned first, so however the stream is cut, the same frames
        come out before the error: this call raises only when it completed
        none, else the next call (``feed`` or ``eof``) does.
        """
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        frames: list[bytes] = []
        start = 0
        while True:
            available = len(self._buffer) - start
            if self._need is None:
                if available < HEADER.size:
                    break
                (length,) = HEADER.unpack_from(self._buffer, start)
                if length > self.max_frame:
                    self._buffer.clear()
                    self._failed = FrameError(
                        f"peer announced a frame of {length} bytes; the limit is {self.max_frame}"
                    )
                    if frames:
                        return frames
                    raise self._failed
                self._need = length
                start += HEADER.size
            elif available >= self._need:
                frames.append(bytes(self._buffer[start : start + self._need]))
                start += self._need
                self._need = None
            else:
                break
        # One deletion per call, not per frame: many small frames in one read
        # must not cost quadratic copying.
        del self._buffer[:start]
        return frames

    def eof(self) -> None:
        """The stream ended. Raises FrameError when it ended inside a frame."""
        if self._failed is not None:
            raise self._failed
        if self.pending:
            raise FrameError(f"stream ended inside a frame ({self.pending} bytes of it received)")
