"""The table of a gzip layer's checkpoint file, as zran (``indexed_gzip``) exports it.

Format version 1: a head (magic ``GZIDX``, version, flags, the blob's and the
tar stream's sizes, the spacing, the window size, the number of points), a
row per point (compressed offset, tar offset, bits, whether it has a
window), then the 32 KiB windows of the points that have one, in order.
``read_checkpoints`` reads the head and the rows and checks them; the
windows stay in the file (``Checkpoint.window_at`` says where).
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass
from pathlib import Path

WINDOW = 32768
_HEAD = struct.Struct("<5sBBQQIII")  # magic, version, flags, sizes, spacing, window, points
_POINT = struct.Struct("<QQBB")  # compressed offset, tar offset, bits, has a window


@dataclass(frozen=True)
class Checkpoint:
    compressed: int  # the first whole byte of the block
    bits: int  # bits of the byte before it that are the block's start
    position: int  # the tar-stream offset of the block's first output byte
    window_at: int | None  # where its window is in the file; None: a member's start


@dataclass(frozen=True)
class Checkpoints:
    blob_size: int
    tar_size: int
    points: tuple[Checkpoint, ...]
    positions: tuple[int, ...]

    def before(self, offset: int) -> int:
        """The index of the last checkpoint at or before tar offset ``offset``."""
        return max(bisect.bisect_right(self.positions, offset) - 1, 0)


def read_checkpoints(path: Path) -> Checkpoints:
    """The table of the checkpoint file at ``path`` (its windows stay in the file).

    Raises OSError when it cannot be read, ValueError when it is not a
    complete, well-formed zran index of version 1.
    """
    with open(path, "rb") as file:
        head = file.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise ValueError("the checkpoint file is cut short")
        magic, version, _flags, blob_size, tar_size, _spacing, window, count = _HEAD.unpack(head)
        if magic != b"GZIDX" or version != 1 or window != WINDOW or count < 1:
            raise ValueError("not a zran index of version 1 with 32 KiB windows")
        size = os.fstat(file.fileno()).st_size
        if size < _HEAD.size + count * _POINT.size:
            raise ValueError("the checkpoint file is cut short")
        table = file.read(count * _POINT.size)
    points: list[Checkpoint] = []
    windows_start = _HEAD.size + count * _POINT.size
    windows = 0
    for compressed, position, bits, has_window in _POINT.iter_unpack(table):
        if bits > 7 or compressed > blob_size or position > tar_size or (bits and not compressed):
            raise ValueError(f"a checkpoint out of range: {compressed}/{bits} -> {position}")
        if points and (position < points[-1].position or compressed < points[-1].compressed):
            raise ValueError("checkpoints out of order")
        window_at = windows_start + windows * WINDOW if has_window else None
        windows += bool(has_window)
        points.append(Checkpoint(compressed, bits, position, window_at))
    if size != windows_start + windows * WINDOW:
        raise ValueError(f"the checkpoint file has {size} bytes, its table says otherwise")
    if points[0].position != 0:
        raise ValueError("the checkpoints do not start at the stream's start")
    return Checkpoints(blob_size, tar_size, tuple(points), tuple(p.position for p in points))
