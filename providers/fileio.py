"""Reading a file's bytes by position, whole.

``os.pread`` may return fewer bytes than asked before the end of the file
(a signal, a read past what one call moves); callers that want the range
whole loop. Here that loop is written once.
"""

from __future__ import annotations

import os


def pread_all(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes of ``fd`` from ``offset``; fewer only at the end of the file."""
    parts = []
    while length > 0:
        data = os.pread(fd, length, offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
        length -= len(data)
    return b"".join(parts)
