"""How a ``lazyfs`` command runs its async work, and how what ends it becomes one line.

``run_trio`` runs the work under trio and makes SIGTERM and SIGHUP cancel
it as Ctrl-C does, so the provisioner's clean-up (shielded) runs either
way. Between pieces of such work, ``signals_stop`` makes them raise
``Stopped`` as Ctrl-C raises KeyboardInterrupt, and ``signals_ignored``
lets them go while a clean-up must finish. ``failure_line`` words what
ended a command (an error, an exception group, an interruption, a signal)
as the CLI prints it, with its exit status: 1 for errors, 130 for Ctrl-C,
128+N for signal N.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType
from typing import TypeVar

from providers.errors import LazyfsError

T = TypeVar("T")


class Stopped(Exception):
    """A signal other than SIGINT asked the command to stop; its work was undone."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_trio(work: Callable[[], Awaitable[T]], *, watch: bool = True) -> T:
    """``trio.run(work)``; SIGTERM and SIGHUP (unless ignored) cancel it as Ctrl-C does,
    then raise Stopped. Not ``watch``: they are left to the handlers in place.

    Cancelled, the provisioner undoes what it started (its clean-up is
    shielded), so a stopped provision leaves no container.
    """
    import trio  # loaded by the commands that run async work only

    async def watched() -> T:
        result: list[T] = []

        async def stop_on(signals: AsyncIterator[int]) -> None:
            async for signum in signals:
                raise Stopped(signum)

        wanted = _stopping() if watch else []
        if not wanted:
            return await work()
        with trio.open_signal_receiver(*wanted) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_on, signals)
                result.append(await work())
                nursery.cancel_scope.cancel()
        return result[0]

    try:
        return trio.run(watched)
    except BaseExceptionGroup as group:
        # One failure inside the nursery: raise it as it is, so main() words it.
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


@contextlib.contextmanager
def signals_stop() -> Iterator[None]:
    """In the block, SIGTERM and SIGHUP (unless ignored) raise Stopped in the main thread,
    as SIGINT raises KeyboardInterrupt, so that the caller's clean-up runs; without it,
    they end the process where it stands. Call from the main thread."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signum)

    with _handled(stop):
        yield


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """In the block, SIGTERM and SIGHUP do nothing: a clean-up that must finish once what
    they would stop has ended (run them with ``run_trio(watch=False)``). Not SIG_IGN,
    which the block's children would keep across exec. Call from the main thread."""

    def ignore(_signum: int, _frame: FrameType | None) -> None:
        pass

    with _handled(ignore):
        yield


@contextlib.contextmanager
def _handled(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    previous = {sig: signal.getsignal(sig) for sig in _stopping()}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def _stopping() -> list[signal.Signals]:
    """SIGTERM and SIGHUP, but not one the process ignores: under nohup a hang-up must not
    stop it."""
    return [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def failure_line(exc: BaseException) -> tuple[str, int] | None:
    """The line (without ``lazyfs: ``) and exit status for what ended a command.

    None for what is not the user's to read as one line (a bug): let it
    give its traceback.
    """
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, Stopped):
        return f"stopped by {exc}", 128 + exc.signum
    if isinstance(exc, LazyfsError):
        return str(exc), 1
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", 1
    if isinstance(exc, BaseExceptionGroup):
        # Several at once, all known: an interruption says why the command
        # ended (before errors it caused), else the first error. Anything
        # unknown among them is a bug: a traceback then.
        described = [failure_line(leaf) for leaf in _leaves(exc)]
        known = [d for d in described if d is not None]
        if known and len(known) == len(described):
            return max(known, key=lambda d: d[1] != 1)
    return None
