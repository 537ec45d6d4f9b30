"""A blob source for the cache's tests: counts its calls, and can hold them at a gate."""

from __future__ import annotations

import io
import threading
from typing import BinaryIO

from providers.digest import Digest
from providers.errors import NotFound

BLOB = Digest("sha256:" + "cd" * 32)
SIZE = 16
DATA = bytes(range(256)) * 2  # 512 bytes: chunks 0-31


class FakeSource:
    """A BlobSource over DATA that records its calls; gated, it waits for ``gate`` to answer."""

    def __init__(self, *, gated: bool = False, failures: list[Exception] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.failures = list(failures or [])
        if not gated:
            self.gate.set()

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(DATA)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        if digest != BLOB:
            raise NotFound(f"blob {digest}")
        with self.lock:
            self.calls.append((offset, length))
            failure = self.failures.pop(0) if self.failures else None
        # A bound on the wait, not a delay: a test that never opens the gate fails.
        assert self.gate.wait(timeout=30), "the gate was never opened"
        if failure is not None:
            raise failure
        return DATA[offset : offset + length]
