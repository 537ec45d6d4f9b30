"""When a registry transfer is tried again, how long it waits, and when it gives up.

Every HTTP path (registry manifests, blobs and ranges, token fetches, Appc
discovery) tries again through one loop, ``retrying``: an attempt that
fails temporarily raises ``Again``, and one ``Retries`` decides whether
another attempt follows, after a backoff, or the attempt's final error is
raised. It stops at the first of:

- ``attempts`` failures in a row without progress;
- a ``Deadline`` the next wait would pass.

Only temporary errors are retried: a connection that broke, was refused or
timed out (``is_temporary``), 429 and 5xx answers, a body that came too
slowly (``TooSlow``), and a body that did not match its digest (asked for
once more: corruption on the way is seldom repeated). Everything else is
final at once.

Waiting is interruptible: the helpers here run in worker threads started by
``trio.to_thread.run_sync``, where trio cannot stop a ``time.sleep``. So
``pause`` sleeps in short slices and ``checkpoint`` asks trio between them;
a cancelled task or a Ctrl-C (trio delivers KeyboardInterrupt the same way)
then surfaces in the thread within a slice, as ``trio.Cancelled`` or
``KeyboardInterrupt``. Nothing here catches either.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import requests
import trio
import urllib3

from providers.errors import LazyfsError

log = logging.getLogger(__name__)

# How long a wait may go without asking trio whether it was cancelled.
SLICE = 0.1
T = TypeVar("T")


# Errors that say the connection, not the server, failed: worth another try.
TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class TooSlow(OSError):
    """A body whose bytes came slower than the speed floor: as temporary as a cut."""


def is_temporary(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection, not the registry's answer, failed."""
    if isinstance(exc, requests.RequestException):  # an OSError too: decide first
        if isinstance(exc, requests.exceptions.SSLError):
            return False  # a certificate does not get better by asking again
        return isinstance(
            exc,
            requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError,
        )
    if isinstance(exc, urllib3.exceptions.DecodeError):
        return False  # the body arrived; it is what it is
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


def checkpoint() -> None:
    """Raise ``trio.Cancelled`` or ``KeyboardInterrupt`` if the trio task running
    this worker thread was cancelled or interrupted; outside trio, do nothing."""
    # RuntimeError: not a trio worker thread, so nobody can cancel it but its caller.
    with contextlib.suppress(RuntimeError):
        trio.from_thread.check_cancelled()


class Deadline:
    """A point in time after which an operation stops; ``seconds <= 0`` means never."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds if seconds > 0 else math.inf

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end


def pause(seconds: float) -> None:
    """Sleep ``seconds``, checking for cancellation at least every ``SLICE``."""
    end = time.monotonic() + seconds
    while True:
        checkpoint()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, SLICE))


@dataclass(frozen=True)
class Backoff:
    """Waits doubling from ``first`` up to ``cap``; ``Retry-After`` lengthens one, to the cap."""

    first: float = 0.25
    cap: float = 4.0

    def delay(self, failure: int, retry_after: str | None = None) -> float:
        delay: float = min(self.cap, self.first * 2 ** (failure - 1))
        if retry_after:
            delay = min(self.cap, max(delay, parse_retry_after(retry_after)))
        return delay


class Retries:
    """The failures of one operation; ``again`` decides whether it goes on.

    Not thread-safe: one operation, one thread.
    """

    def __init__(self, attempts: int, backoff: Backoff, deadline: Deadline) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.deadline = deadline
        self.failures = 0

    def again(self, why: str, retry_after: str | None = None) -> bool:
        """Count a failure; wait and return True if another try may follow, else False.

        False, without waiting, when the attempts are used up or the wait
        would end past the deadline. Raises ``trio.Cancelled`` or
        ``KeyboardInterrupt`` if interrupted while waiting.
        """
        delay = self.next_delay(retry_after)
        if delay is None:
            return False
        self.wait(delay, why)
        return True

    def next_delay(self, retry_after: str | None = None) -> float | None:
        """Count a failure; the wait before the next try, or None if there is none."""
        self.failures += 1
        if self.failures >= self.attempts:
            return None
        delay = self.backoff.delay(self.failures, retry_after)
        if delay >= self.deadline.remaining():
            return None
        return delay

    def wait(self, delay: float, why: str) -> None:
        log.info("retrying in %.2fs after %s", delay, why)
        pause(delay)

    def progressed(self) -> None:
        """The operation moved forward: its failures so far no longer count."""
        self.failures = 0


class SpeedFloor:
    """Refuses a body slower than ``min_speed`` bytes/s over ``window`` seconds.

    The window tumbles: each ``window`` seconds of the body is judged on its
    own, so a body that starts slow (TCP slow start, a cold cache) and then
    flows is not judged on its start, and a stall is caught within two
    windows. ``min_speed <= 0`` turns the floor off.
    """

    def __init__(
        self, min_speed: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_speed = min_speed
        self.window = window
        self._clock = clock
        self._start = clock()
        self._got = 0

    @property
    def enabled(self) -> bool:
        return self.min_speed > 0 and self.window > 0

    def message(self) -> str:
        return f"registry sent less than {self.min_speed} bytes/s for {seconds(self.window)} s"

    def restart(self) -> None:
        """A new connection: its window starts now."""
        self._start = self._clock()
        self._got = 0

    def add(self, count: int) -> None:
        """Count ``count`` bytes just received; raises TooSlow when a window fell short."""
        if not self.enabled:
            return
        self._got += count
        now = self._clock()
        if now - self._start < self.window:
            return
        if self._got < self.min_speed * (now - self._start):
            raise TooSlow(self.message())
        self._start = now
        self._got = 0


class Again(Exception):
    """An attempt failed in a way worth another: raised by attempts, caught by ``retrying``.

    ``why`` is logged with the wait; ``final`` is the error raised when no
    attempt is left, or makes it (called only then: it may read the failed
    answer);
    ``release`` frees what the attempt holds when another follows instead;
    ``retry_after`` is the server's Retry-After. Chain the cause with
    ``raise Again(...) from exc``: the final error keeps it.
    """

    def __init__(
        self,
        why: str,
        final: BaseException | Callable[[], BaseException],
        retry_after: str | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(why)
        self.why = why
        self.final = final
        self.retry_after = retry_after
        self.release = release


def retrying(retries: Retries, attempt: Callable[[], T]) -> T:
    """``attempt()``, tried again after each ``Again`` while ``retries`` allow.

    Returns what an attempt returns; raises what an attempt raises other
    than Again, or the last Again's final error. Raises ``trio.Cancelled`` or
    ``KeyboardInterrupt`` if interrupted while waiting.
    """
    while True:
        try:
            return attempt()
        except Again as again:
            delay = retries.next_delay(again.retry_after)
            if delay is None:
                _give_up(again)
            if again.release is not None:
                again.release()
            retries.wait(delay, again.why)


def _give_up(again: Again) -> NoReturn:
    final = again.final if isinstance(again.final, BaseException) else again.final()
    # An attempt may give up with the very error that caused its Again.
    cause = final.__cause__ if final is again.__cause__ else again.__cause__
    raise final from cause


def short_cause(exc: BaseException) -> str:
    """A short cause for an error message: the innermost reason, one line, no URL."""
    reason: Any = exc
    # requests wraps urllib3 errors that wrap OSErrors; the innermost says most.
    for _ in range(4):
        inner = getattr(reason, "reason", None) or (reason.args[0] if reason.args else None)
        if isinstance(inner, BaseException):
            reason = inner
        else:
            break
    text = str(reason)
    if isinstance(reason, LazyfsError):
        return text
    # urllib3 puts "<connection object at 0x...>: " or "HTTPConnection(host=...):"
    # before the useful part, which is the OS error when there is one.
    text = text.split(">: ", 1)[-1]
    if "[Errno" in text:
        at = text.index("[Errno")
        # "Failed to resolve 'host' ([Errno -2] ...)": the parenthesis goes with its opening.
        closing = text[at - 1 : at] == "(" and text.endswith(")")
        text = text[at : len(text) - closing].split("] ", 1)[-1]
    return " ".join(text.split())[:200] or type(reason).__name__


def seconds(value: float) -> str:
    """``30`` for 30.0, ``1.5`` for 1.5: how the flags were written."""
    return f"{value:g}"


def parse_retry_after(value: str) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); 0 if unreadable."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())
