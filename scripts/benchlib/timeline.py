"""What crossed the shaping proxy, request by request: where a cold start's time went.

The proxy (``benchlib.shaper``) hands each piece it forwards to a
``Recorder``: a piece from the client that begins an HTTP request (the
clients here send a request's head in one write and never pipeline) opens a
request on its connection, and the pieces coming back until the next one
are its response.  ``Recorder.requests(start, end)`` gives those sent in a
window of ``time.perf_counter`` time as ``Request`` rows, their times in
seconds from ``start``: sent (the client wrote it, or for the first request
of a connection, opened the connection: its write waited for the handshake
the proxy models), first (its response's first byte reached the client) and
done (the last byte did, so far).  ``render`` writes rows as text, one
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
    opened: bool = False  # the first on its connection: ``sent`` is when that was opened

    def to_json(self) -> dict[str, object]:
        return {
            "connection": self.connection, "what": self.what, "range": self.span,
            "sent": self.sent, "first": self.first, "done": self.done,
            "status": self.status, "bytes": self.down, "opened": self.opened,
        }  # fmt: skip


@dataclass
class _Open:
    connection: int
    sent: float
    what: str
    span: str
    opened: bool
    first: float | None = None
    done: float | None = None
    down: int = 0
    status: str = ""


@dataclass
class Recorder:
    """Every request the proxy forwarded, as pieces go by (thread-safe)."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: list[_Open] = field(default_factory=list)
    _current: dict[int, _Open] = field(default_factory=dict)  # connection -> its newest
    _accepted: dict[int, float] = field(default_factory=dict)  # connection -> when
    _connections: int = 0

    def connection(self, accepted: float) -> int:
        """A number for a new connection, which the client opened at ``accepted``."""
        with self._lock:
            self._connections += 1
            self._accepted[self._connections] = accepted
            return self._connections

    def up(self, connection: int, data: bytes, written: float, _arrived: float) -> None:
        """The client wrote ``data`` on ``connection`` at ``written``.

        The first request of a connection counts as sent when the client
        opened it: its write waited for the handshake the proxy models.
        """
        if not data.startswith(_METHODS):
            return
        what, span = _head(data)
        with self._lock:
            accepted = self._accepted.pop(connection, None)
            sent = written if accepted is None else accepted
            request = _Open(connection, sent, what, span, opened=accepted is not None)
            self._requests.append(request)
            self._current[connection] = request

    def down(self, connection: int, data: bytes, _written: float, arrived: float) -> None:
        """``data`` of a response reached the client on ``connection`` at ``arrived``."""
        with self._lock:
            request = self._current.get(connection)
            if request is None:
                return
            if request.first is None:
                request.first = arrived
                status = _STATUS.match(data)
                request.status = status.group(1).decode() if status else ""
            request.done = arrived
            request.down += len(data)

    def requests(self, start: float, end: float) -> list[Request]:
        """The requests sent from ``start`` to ``end`` (``time.perf_counter``), in order, as
        they stand now: what comes back after is not in them."""
        with self._lock:
            return [_row(r, start) for r in self._requests if start <= r.sent <= end]


def _head(data: bytes) -> tuple[str, str]:
    """What a request's head asks for, shortened, and the range it names (or "")."""
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = line.partition(" ")
    target = rest.rsplit(" ", 1)[0].split("?", 1)[0]
    span = _RANGE.search(data)
    return f"{method} {_DIGEST.sub(_short, target)}", span.group(1).decode() if span else ""


def _row(request: _Open, start: float) -> Request:
    return Request(
        connection=request.connection,
        what=request.what,
        span=request.span,
        sent=request.sent - start,
        first=None if request.first is None else request.first - start,
        done=None if request.done is None else request.done - start,
        status=request.status,
        down=request.down,
        opened=request.opened,
    )


def _short(found: re.Match[str]) -> str:
    return f"sha256:{found.group(1)}"


def render(title: str, seconds: float, rows: list[Request]) -> str:
    """``rows`` as text: one line a request, times in ms, and a bar over ``seconds``."""
    lines = [f"## {title}: printed at {seconds * 1000:.0f} ms, {len(rows)} requests "
             "(conn `*`: a new connection, sent when the client opened it)",
             "",
             "```",
             f"{'sent':>6} {'first':>6} {'done':>6} {'conn':>4} {'st':>3} {'bytes':>9}  "
             f"{'':{_BAR}}  request",
             ]  # fmt: skip
    for row in rows:
        conn = f"{row.connection}{'*' if row.opened else ''}"
        lines.append(
            f"{row.sent * 1000:6.0f} {_ms(row.first):>6} {_ms(row.done):>6} {conn:>4} "
            f"{row.status:>3} {row.down:9d}  {_bar(row, seconds)}  "
            f"{row.what}{' ' + row.span if row.span else ''}"
        )
    lines += ["```", ""]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _bar(row: Request, seconds: float) -> str:
    """``.`` before the request, ``-`` waiting for its first byte (to the end when none came),
    ``=`` its response."""
    scale = _BAR / seconds if seconds > 0 else 0.0

    def at(t: float) -> int:
        return min(_BAR, max(0, round(t * scale)))

    a = at(row.sent)
    if row.first is None:
        return "." * a + "-" * (_BAR - a)
    b = at(row.first)
    c = at(row.done if row.done is not None else row.first)
    c = max(c, b + 1) if b < _BAR else c
    return ("." * a + "-" * (b - a) + "=" * (c - b)).ljust(_BAR)[:_BAR]
