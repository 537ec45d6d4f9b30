"""The cache daemon as a process: what ``lazyfs daemon`` runs, in the foreground.

``run`` owns the cache directory (``DiskCache.open``: one daemon per
directory, UsageError when another has it), serves its socket
(``lazyfs.cache.daemon.serve``) and returns on SIGTERM or SIGINT, after the
socket is removed and the fetches in flight are cancelled (their waiters get
an error; nothing half-written is ever trusted, see ``chunks``). systemd
runs it so; a mount that finds no daemon starts it detached the same way
(``lazyfs.cache.spawn``). While it serves, ``CACHE_DIR/daemon.pid`` names it.

Its upstreams are ``lazyfs.cache.upstream.Origins``: the registries mounts
name, with the registry settings the daemon was started with.  ``every``
is a chore the daemon runs in a thread at an interval while it serves
(image GC, handed in by the CLI: this package does not know the store); a
chore that fails is logged and tried again at the next interval. A chore is
given a function to call with the blobs whose layers it removed, while it
still holds the store: the daemon lets go of their chunks then, as a
``ForgetRequest`` would have it (``lazyfs.cache.forget``), before a start may
want them again.

With ``idle_exit`` it also stops once no mount has been connected and no
fetch has been in hand for that many seconds (``first_idle``: while nothing
asked it more than its status), as a daemon a command started does
(``lazyfs.cli_daemon``): the next mount starts another. It holds the start
lock from then until the cache is let go (``lazyfs.cache.idle``). A chore
does not keep it, but it does not stop while a chore's run is in hand.

Whether it was started so or as a service, it exits (status ``GONE_STATUS``)
within ``LOOK_EVERY`` seconds of its cache directory's going away or being
replaced by another at its path (``lazyfs.cache.pinned_dir``), also with
mounts connected: it can no longer serve them. Its socket is gone, so no
mount finds it again; their chunk files are gone, so what they had cached
is lost either way; and each chunk it fetched would be written by path into
a directory that is gone (a failed read) or is another cache (another
daemon's to own). Its mounts take the exit as a daemon's restart: misses
wait for the next daemon (a mount starts one where a command left its spec
in the new directory), else fail after their timeout. A service manager
restarts a service on the exit status, on a fresh cache directory. It exits
at once, not through the stop above: that stop cleans up by path (the
socket, ``daemon.pid``), and the path may be another daemon's directory by
now; the kernel lets go of all it held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.daemon import Resolve, Server, serve
from lazyfs.cache.forget_values import Forget
from lazyfs.cache.idle import Idle
from lazyfs.cache.pinned_dir import PinnedDir
from lazyfs.cache.spawn import SPEC_NAME, START_LOCK
from providers.digest import Digest
from providers.fslock import try_exclusive_lock
from providers.private_dir import write_private

log = logging.getLogger(__name__)

PID_NAME = "daemon.pid"
# Seconds without an on-demand miss before background fetch sends a request:
# a starting container's misses come in bursts with gaps of CPU work between
# them, and its start should not share the link (``lazyfs.cache.background``).
BACKGROUND_SETTLE = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LOOK_EVERY = 2.0  # seconds between looks whether the cache directory is still there
GONE_STATUS = 1  # not 0: a service manager restarts it (``Restart=on-failure``)


# Seconds between runs, and the blocking job, given what to call with the blobs of the layers
# it removed (blocking: it waits for the daemon to let go of them).
Forgets = Callable[[Sequence[Digest]], object]
Chore = tuple[float, Callable[[Forgets], object]]


def run(
    cache_dir: Path,
    limit_bytes: int,
    resolve: Resolve,
    *,
    background: bool = True,
    every: Chore | None = None,
    idle_exit: float | None = None,
    first_idle: float | None = None,
) -> None:
    """Serve the cache at ``cache_dir`` until SIGTERM or SIGINT, or idle for ``idle_exit``
    seconds (``first_idle`` while unused; default the same: ``lazyfs.cache.idle``). Blocking.

    ``background``: whether mounted layers are fetched whole in the background.
    """
    stopping = contextlib.ExitStack()  # the start lock, once idle: let go after the cache
    chore = ChoreRunning()
    idle = None
    if idle_exit is not None:
        may_stop = stopper(cache_dir, chore, stopping)
        idle = Idle(idle_exit, idle_exit if first_idle is None else first_idle, may_stop)
    # A signal before trio listens (while the cache is taken stock of) ends the
    # process as signals do: the lock goes with it, and nothing is served yet.
    with stopping, DiskCache.open(cache_dir, limit_bytes) as cache:
        # Written while we own the cache: whoever reads it finds the owner (or a dead one).
        pid_file = cache_dir / PID_NAME
        write_private(pid_file, f"{os.getpid()}\n".encode())
        if idle is None:
            # A service's (``lazyfs daemon``): its manager restarts it, and stops it for
            # good; no mount is to start one as an earlier command did (``spawn.started_as``).
            (cache_dir / SPEC_NAME).unlink(missing_ok=True)
        stats = cache.stats()
        log.info(
            "cache %s: %d chunks, %d of %d bytes used",
            cache_dir,
            stats.chunks,
            stats.used_bytes,
            stats.limit_bytes,
        )
        # The directory that open made or found: held to see it go (``_exit_when_gone``).
        home = PinnedDir.opened(cache_dir)
        try:
            chores = None if every is None else (*every, chore)
            trio.run(_serve, cache, resolve, background, chores, idle, home)
        finally:
            pid_file.unlink(missing_ok=True)
            os.close(home.fd)
    log.info("cache daemon stopped")


class ChoreRunning:
    """Whether the chore runs now."""

    now = False


def stopper(
    cache_dir: Path, chore: ChoreRunning, stopping: contextlib.ExitStack
) -> Callable[[], bool]:
    """``Idle.may_stop`` for the daemon of ``cache_dir``: the start lock, taken into
    ``stopping``; never while ``chore`` runs."""

    def may_stop() -> bool:
        # A stop waits for the chore's run (GC may wait on a provision's lock), and
        # would keep the start lock, every mount's start, that long.
        if chore.now:
            return False
        return stopping.enter_context(try_exclusive_lock(cache_dir / START_LOCK))

    return may_stop


async def _serve(
    cache: DiskCache,
    resolve: Resolve,
    background: bool,
    every: tuple[float, Callable[[Forgets], object], ChoreRunning] | None,
    idle: Idle | None,
    home: PinnedDir | None = None,
) -> None:
    settle = BACKGROUND_SETTLE
    servers: list[Server] = []
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def serving(task_status: trio.TaskStatus[Path]) -> None:
                await serve(cache, resolve, background=background, background_settle=settle,
                            idle=idle, on_server=servers.append,
                            task_status=task_status)  # fmt: skip
                nursery.cancel_scope.cancel()  # it returns only when idle

            nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
            if home is not None:
                nursery.start_soon(_exit_when_gone, home, every[2] if every else ChoreRunning())
            path = await nursery.start(serving)
            log.info("cache daemon serving on %s", path)
            if every is not None:
                nursery.start_soon(_chore, *every, servers[0])


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for number in signals:
        log.info("%s: stopping", signal.Signals(number).name)
        scope.cancel()
        return


async def _exit_when_gone(home: PinnedDir, chore: ChoreRunning) -> None:
    """End the process once the cache directory is gone or replaced (see the module's doc),
    but not in the middle of a chore's run: image GC moves a store's files about."""
    while True:
        await trio.sleep(LOOK_EVERY)
        why = None if chore.now else await trio.to_thread.run_sync(home.gone)  # a hung NFS
        if why and not chore.now:  # a run may have begun while it looked
            log.error("cache directory %s: exiting", why)
            logging.shutdown()  # the line out before the process goes
            os._exit(GONE_STATUS)


async def _chore(
    interval: float,
    job: Callable[[Forgets], object],
    running: ChoreRunning,
    server: Server,
) -> None:
    """``job`` in a thread every ``interval`` seconds, one run at a time, until cancelled;
    ``server`` lets go of the blobs it says it removed."""

    def forget(digests: Sequence[Digest]) -> None:  # in the job's thread
        trio.from_thread.run(server.forget, Forget(0, tuple(digests)))

    while True:
        await trio.sleep(interval)
        running.now = True
        try:
            # Cancelling waits for the run in hand: GC moves things into its gc/
            # area and is safe to stop anywhere, but not to leave running unowned.
            await trio.to_thread.run_sync(job, forget)
        except Exception as error:
            log.error("%s failed: %s", getattr(job, "__name__", "a chore"), error)
        finally:
            running.now = False
