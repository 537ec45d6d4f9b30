"""How a ``lazyfs`` command runs its async work, and how what ends it becomes one line.

``run_trio`` runs the work under trio and makes SIGTERM, SIGHUP, SIGQUIT,
SIGUSR1 and SIGUSR2 cancel it as Ctrl-C does, so the provisioner's clean-up
(shielded) runs either way; ``run_handed_over`` too, but once the work has
handed over what it made, they end nothing any more. Between pieces of such work, ``noting_signals``
notes them for the command to stop where it is safe, or to let go while a
clean-up must finish. ``failure_line`` words what ended a command (an
error, an exception group, an interruption, a signal) as the CLI prints it,
with its exit status: 1 for errors, 130 for Ctrl-C, 128+N for signal N.
``stdout_reader_gone`` tells a closed stdout (which ends a command quietly,
``READER_GONE``) from other broken pipes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

from providers.errors import LazyfsError

T = TypeVar("T")
log = logging.getLogger(__name__)


class Stopped(Exception):
    """A signal other than SIGINT asked the command to stop; its work was undone."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_trio(work: Callable[[], Awaitable[T]], *, watch: bool = True) -> T:
    """``trio.run(work)``; the ``_stopping`` signals cancel it as Ctrl-C does,
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


def run_handed_over(work: Callable[[], Awaitable[T]]) -> T:
    """``run_trio(work)`` for work whose result stands once it has it: what it made is
    complete and said (a container provisioned, printed, marked complete; a mount up).

    An interruption after that (Ctrl-C or a ``_stopping`` signal, in trio's
    close or after it) ends nothing: the result is returned, and those
    signals are ignored for the rest of the process (``ignore_stops``; a
    favour after it runs in ``run_stoppable``), so the command exits 0 over
    what it made, not 130 as if it had made nothing. One that comes before
    is raised, as ``run_trio`` raises it: the work has undone what it made,
    and the signals' handlers are as they were. Once per process: async
    work after it is not stopped by them.
    """
    import trio  # noqa: F401  # loaded first: a signal while it loads stops the work

    done: list[T] = []
    heard: list[int] = []
    stops = _stopping()
    interrupt = signal.getsignal(signal.SIGINT) != signal.SIG_IGN
    ignored = [signal.SIGINT, *stops] if interrupt else stops

    async def handing_over() -> T:
        if heard:  # before trio's watch began
            raise Stopped(heard[0])
        result = await work()
        done.append(result)
        if interrupt:  # trio puts its own Ctrl-C handler back only if it is still there
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return result

    def note(signum: int, _frame: FrameType | None) -> None:
        heard.append(signum)

    # Heard before trio's watch begins: stops the work as it starts. Put back by the
    # watch as it closes, with the signals it heard but did not act on (after the work
    # was done): noted, not the default's end.
    before: dict[signal.Signals, Any] = {}
    try:
        for sig in stops:
            before[sig] = signal.signal(sig, note)
        result = run_trio(handing_over)
        ignore_stops(ignored)
    except BaseException as stop:
        if not done or not _only_stops(stop):
            for sig, handler in before.items():
                signal.signal(sig, handler)
            raise
        ignore_stops(ignored)
        result = done[0]
    return result


def _only_stops(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_stops(inner) for inner in exc.exceptions)
    return isinstance(exc, (KeyboardInterrupt, Stopped))


_ignored: list[signal.Signals] = []  # what ``ignore_stops`` ignores


def ignore_stops(signals: list[signal.Signals]) -> None:
    """Ignore ``signals`` (SIGINT and the ``_stopping`` ones) for the rest of the process.

    SIG_IGN, not a handler that does nothing: the interpreter puts the
    default back for its handlers as it shuts down, and a signal then would
    still end the process by it. The helpers lazyfs starts get the default
    back (``providers.reaping.SPAWN_DEFAULTS``). Call from the main thread.
    """
    _ignored.extend(sig for sig in signals if sig not in _ignored)
    for sig in _ignored:
        signal.signal(sig, signal.SIG_IGN)


class _Stop(BaseException):
    """A signal that ended a favour after the hand-over (``run_stoppable``); base, so
    that no ``except Exception`` on the way takes it."""


def run_stoppable(what: str, call: Callable[[], None]) -> None:
    """``call()``, after ``ignore_stops``, where the signals it ignores end the call, with
    a warning naming ``what``, not the command, which goes on ignoring them. For a favour
    after the hand-over (publishing traces), which must not be left unstoppable."""
    armed = True

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal armed
        if armed:  # once: a second Ctrl-C lands where the first is answered
            armed = False
            raise _Stop(signal.Signals(signum).name)

    try:
        try:
            for sig in _ignored:
                signal.signal(sig, stop)
            call()
        finally:
            armed = False
    except _Stop as signalled:
        log.warning("%s: stopped by %s", what, signalled)
    except Exception as error:  # the hand-over stands: not a failure of the command
        log.warning("%s: failed: %s", what, error, exc_info=True)
    finally:
        for sig in _ignored:
            signal.signal(sig, signal.SIG_IGN)


class NotedSignals:
    """The ``_stopping`` signals noted, for a command that must clean up after them
    (``lazyfs run``).

    The handler only notes: the command asks ``stop_if_noted`` where
    stopping is safe (it raises Stopped for the first noted), and once it
    no longer asks, the rest are let go, so that a clean-up under way
    finishes. A handler that raised could do so anywhere: inside trio's
    own start or close, or at the first line of a ``finally`` that would
    have cleaned up. Without a handler a signal ends the process where it
    stands.
    """

    def __init__(self) -> None:
        self.noted: list[int] = []

    def stop_if_noted(self) -> None:
        """Stopped for the first signal noted, if one was."""
        if self.noted:
            raise Stopped(self.noted[0])

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.noted.append(signum)


@contextlib.contextmanager
def noting_signals() -> Iterator[NotedSignals]:
    """The ``_stopping`` signals noted by a ``NotedSignals`` in the block. Async
    work meanwhile runs with ``run_trio``'s own handling, which stops it at once, or with
    ``watch=False`` where it must finish. Call from the main thread."""
    handler = NotedSignals()
    with _handled(handler):
        yield handler


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


# What asks a command to stop, as Ctrl-C does: by default each would end the process
# where it stands, leaving what it made half-way (SIGQUIT: Ctrl-\).
_STOPPING = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _stopping() -> list[signal.Signals]:
    """``_STOPPING``, but not one the process ignores: under nohup a hang-up must not
    stop it."""
    return [s for s in _STOPPING if signal.getsignal(s) != signal.SIG_IGN]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


# What a command ends with once its stdout's reader went away (``lazyfs images | head -1``):
# SIGPIPE's status, as docker, skopeo or cat end then, and no line.
READER_GONE = 128 + signal.SIGPIPE


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) nobody reads any more: what it is sent is lost.

    A broken pipe elsewhere (the cache daemon's socket, runc's stdin) is an error to
    say; this tells them apart."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by one with no descriptor
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # A pipe's writer polls POLLERR once its last reader has closed it.
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


# What ``threading.Thread.start`` raises (a RuntimeError) when no thread can be had.
NO_THREAD = "can't start new thread"


def _cwd_gone() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


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
        if isinstance(exc, FileNotFoundError) and not exc.filename and _cwd_gone():
            # A relative path no check above named (getcwd: ENOENT): say why, at least.
            gone = "the current directory is gone (deleted): give absolute paths"
            return f"{exc.strerror}: {gone}", 1
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", 1
    if isinstance(exc, RuntimeError) and str(exc) == NO_THREAD:
        # Said by threading when the kernel refuses a thread (EAGAIN): a limit on the
        # user's processes, not a bug. Any other RuntimeError is one.
        return "cannot start a thread (a process limit: ulimit -u?)", 1
    if isinstance(exc, BaseExceptionGroup):
        # Several at once, all known: an interruption says why the command
        # ended (before errors it caused), else the first error. Anything
        # unknown among them is a bug: a traceback then.
        described = [failure_line(leaf) for leaf in _leaves(exc)]
        known = [d for d in described if d is not None]
        if known and len(known) == len(described):
            return max(known, key=lambda d: d[1] != 1)
    return None
