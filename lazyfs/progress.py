"""Progress of long work, on stderr, drawn only when stderr is a terminal.

A pull shows one bar per blob, and a total bar for an image of several,
each with its bytes, percent, speed and time left, as skopeo and docker
show them; drawn by ``rich``, which fits the lines to the terminal's width
(an 80-column terminal gets no wrapped lines) and redraws in place.  When
the stream is not a terminal nothing is drawn at all, so logs and pipes
never fill with control characters; ``fetched`` still counts, so a caller
can say that nothing had to be fetched.

Sizes are in binary units everywhere lazyfs prints them (``human_size``).
"""

from __future__ import annotations

import atexit
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as Bars
    from rich.progress import TaskID

TOTAL = "total"


class Progress:
    """Byte counts per item (a blob digest) and in all.

    Safe to call from worker threads.  ``advance`` may take back (a
    negative amount) what a failed try counted.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._bars: Bars | None = None
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None
        self._size = 0  # of the items the bars drawn now show
        self.fetched = 0  # bytes counted in all, net of what was taken back
        self.items = 0

    def start(self, item: str, total: int) -> None:
        with self._lock:
            self.items += 1
            self._size += total
            if not self.enabled:
                return
            bars = self._open()
            self._tasks[item] = bars.add_task(_short(item), total=total)
            if len(self._tasks) == 2:  # several blobs: their sum too, below them
                self._total = bars.add_task(TOTAL, total=self._size)
            elif self._total is not None:
                bars.update(self._total, total=self._size)

    def advance(self, item: str, amount: int) -> None:
        with self._lock:
            self.fetched += amount
            if self._bars is None:
                return
            task = self._tasks.get(item)
            if task is not None:
                self._bars.advance(task, amount)
            if self._total is not None:
                self._bars.advance(self._total, amount)

    def message(self, text: str) -> None:
        """A line above the bars (on a terminal only), wrapped to the terminal's width."""
        if not self.enabled:
            return
        with self._lock:
            console = self._bars.console if self._bars is not None else _console(self.stream)
            console.print(text, markup=False, highlight=False)

    def finish(self) -> None:
        """Draw the bars a last time and stop; the next ``start`` draws new ones."""
        with self._lock:
            self._close()

    def _open(self) -> Bars:
        if self._bars is None:
            # Loaded only to draw: a command whose stderr is no terminal never pays for it.
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            columns: list[Any] = [
                TextColumn("{task.description}"),
                BarColumn(bar_width=None),
                DownloadColumn(binary_units=True),
                TaskProgressColumn(),
                _speed_column(),
                TimeRemainingColumn(),
            ]
            console = _console(self.stream)
            # stdout is the command's output (JSON): never drawn into, nor taken over.
            self._bars = RichProgress(
                *columns,
                console=console,
                expand=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._bars.start()
            # An error may end the command before ``finish``: leave the terminal as it was.
            atexit.register(self.finish)
        return self._bars

    def _close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._tasks.clear()
            self._total = None
            self._size = 0  # the next bars' total counts only their own items


def _console(stream: TextIO) -> Console:
    # Loaded only to draw: a command whose stderr is no terminal never pays for it.
    from rich.console import Console

    return Console(file=stream, highlight=False)


def _speed_column() -> Any:
    """rich's speed column counts in decimal units: this one in binary, as every size here."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            shown = "?" if speed is None else f"{human_size(int(speed))}/s"
            return Text(shown.rjust(12), style="progress.data.speed")

    return Speed()


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
