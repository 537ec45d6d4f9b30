"""Progress of long work, on stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# Per-item counts drawn at once; more would not fit a terminal line.
ACTIVE_SHOWN = 3


class Progress:
    """Byte counts per item and in total, redrawn on one line at most 10 times a second.

    Safe to call from worker threads. A no-op when the stream is not a terminal,
    so logs and pipes never fill with carriage returns.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self._last = 0.0

    def start(self, item: str, total: int) -> None:
        with self._lock:
            self._done[item] = 0
            self._total[item] = total

    def advance(self, item: str, amount: int) -> None:
        with self._lock:
            self._done[item] = self._done.get(item, 0) + amount
            now = time.monotonic()
            if self.enabled and now - self._last >= 0.1:
                self._last = now
                self._draw()

    def message(self, text: str) -> None:
        if self.enabled:
            with self._lock:
                self.stream.write(f"\r\033[K{text}\n")
                self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            with self._lock:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()

    def _draw(self) -> None:
        done = sum(self._done.values())
        total = sum(self._total.values())
        finished = sum(1 for k, v in self._done.items() if v >= self._total.get(k, 0))
        # The items still moving, each with its own bytes, so a slow layer shows.
        active = [
            f"{_short(item)} {_size(self._done.get(item, 0))}/{_size(size)}"
            for item, size in self._total.items()
            if 0 < self._done.get(item, 0) < size
        ]
        extra = (
            f"  [{', '.join(active[:ACTIVE_SHOWN])}{' ...' if len(active) > ACTIVE_SHOWN else ''}]"
        )
        self.stream.write(
            f"\r\033[K{finished}/{len(self._total)} blobs  {_size(done)} / {_size(total)}"
            + (extra if active else "")
        )
        self.stream.flush()


def _short(item: str) -> str:
    """``sha256:0123456789ab`` for a digest: enough to tell layers apart."""
    return item[: item.find(":") + 13] if ":" in item else item[:19]


def human_size(n: int) -> str:
    """``n`` bytes in binary units, as lazyfs prints every size: ``512 B``, ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


_size = human_size
