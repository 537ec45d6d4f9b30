"""What crossed the shaping proxy, request by request: where a cold start's time went.

The proxy (``benchlib.shaper``) hands each piece it forwards to a
``Recorder``: a piece from the client that begins an HTTP request (the
clients here send a request's head in one write and never pipeline) opens a
request on its connection, and the pieces coming back until the next one
are its response.  ``Recorder.requests(start, end)`` gives those sent in a
window of ``time.perf_counter`` time as ``Request`` rows, their times in seconds from ``start``:
sent (the client wrote it), first (its response's first byte reached the
client) and done (the last byte did).  ``render`` writes rows as text, one
request a line, with a bar of where in the start it ran.

Diagnostic only: nothing is timed by it, and a head split across two pieces
is shown without its range.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ")
_RANGE = re.compile(rb"\r\nrange:\s*bytes=([0-9]+-[0-9]*)", re.IGNORECASE)
_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})")
_DIGEST = re.compile(r"sha256:([0-9a-f]{12})[0-9a-f]{52}")
_BAR = 50  # characters a bar has for the whole start


@dataclass
class Request:
    """One request on one connection, and its response; times from the run's start."""

    connection: int
    what: str  # "GET /v2/NAME/blobs/sha256:0123456789ab", shortened
    span: str  # the Range asked for, or ""
    sent: float
    first: float | None = None
    done: float | None = None
    status: str = ""
    down: int = 0  # response bytes

    def to_json(self) -> dict[str, object]:
        return {
            "connection": self.connection, "what": self.what, "range": self.span,
            "sent": self.sent, "first": self.first, "done": self.done,
            "status": self.status, "bytes": self.down,
        }  # fmt: skip


@dataclass
class _Open:
    connection: int
    sent: float
    head: bytes
    first: float | None = None
    done: float | None = None
    down: int = 0
    status: bytes = b""


@dataclass
class Recorder:
    """Every request the proxy forwarded, as pieces go by (thread-safe)."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: list[_Open] = field(default_factory=list)
    _current: dict[int, _Open] = field(default_factory=dict)  # connection -> its newest
    _connections: int = 0

    def connection(self) -> int:
        """A number for a new connection."""
        with self._lock:
            self._connections += 1
            return self._connections

    def up(self, connection: int, data: bytes, written: float, _arrived: float) -> None:
        """The client wrote ``data`` on ``connection`` at ``written``."""
        if data.startswith(_METHODS):
            request = _Open(connection, written, data[:2048])
            with self._lock:
                self._requests.append(request)
                self._current[connection] = request

    def down(self, connection: int, data: bytes, _written: float, arrived: float) -> None:
        """``data`` of a response reached the client on ``connection`` at ``arrived``."""
        stamp = arrived
        with self._lock:
            request = self._current.get(connection)
            if request is None:
                return
            if request.first is None:
                request.first = stamp
                request.status = data[:16]
            request.done = stamp
            request.down += len(data)

    def requests(self, start: float, end: float) -> list[Request]:
        """The requests sent from ``start`` to ``end`` (``time.perf_counter``), in order."""
        with self._lock:
            chosen = [r for r in self._requests if start <= r.sent <= end]
            return [_row(r, start) for r in chosen]


def _row(request: _Open, start: float) -> Request:
    line = request.head.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = line.partition(" ")
    target = rest.rsplit(" ", 1)[0].split("?", 1)[0]
    span = _RANGE.search(request.head)
    status = _STATUS.match(request.status)
    return Request(
        connection=request.connection,
        what=f"{method} {_DIGEST.sub(_short, target)}",
        span=span.group(1).decode() if span else "",
        sent=request.sent - start,
        first=None if request.first is None else request.first - start,
        done=None if request.done is None else request.done - start,
        status=status.group(1).decode() if status else "",
        down=request.down,
    )


def _short(found: re.Match[str]) -> str:
    return f"sha256:{found.group(1)}"


def render(title: str, seconds: float, rows: list[Request]) -> str:
    """``rows`` as text: one line a request, times in ms, and a bar over ``seconds``."""
    lines = [f"## {title}: printed at {seconds * 1000:.0f} ms, {len(rows)} requests",
             "",
             "```",
             f"{'sent':>6} {'first':>6} {'done':>6} {'conn':>4} {'st':>3} {'bytes':>9}  "
             f"{'':{_BAR}}  request",
             ]  # fmt: skip
    for row in rows:
        first = row.first if row.first is not None else row.sent
        done = row.done if row.done is not None else first
        lines.append(
            f"{row.sent * 1000:6.0f} {_ms(row.first):>6} {_ms(row.done):>6} {row.connection:4d} "
            f"{row.status:>3} {row.down:9d}  {_bar(row.sent, first, done, seconds)}  "
            f"{row.what}{' ' + row.span if row.span else ''}"
        )
    lines += ["```", ""]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _bar(sent: float, first: float, done: float, seconds: float) -> str:
    """``.`` before the request, ``-`` waiting for its first byte, ``=`` its response."""
    scale = _BAR / seconds if seconds > 0 else 0.0

    def at(t: float) -> int:
        return min(_BAR, max(0, round(t * scale)))

    a, b, c = at(sent), at(first), at(done)
    c = max(c, b + 1) if b < _BAR else c
    return ("." * a + "-" * (b - a) + "=" * (c - b)).ljust(_BAR)[:_BAR]
