"""What ``lazyfs run`` does with the prefetch trace its mount recorded when the run was stopped.

The first lazy mount of an image for a command records the ranges it reads
until the workload settles, or until the mount ends, and then keeps them
marked ``cut`` (``lazyfs.blobs.trace_run``). A run stopped early (Ctrl-C, a
signal, an error, its container killed) recorded only the start of the
workload; kept, that start would be replayed by every later run instead of
the whole one, and pushed beside the image with ``--publish_indexes``. So
after such a run, once its rootfs is destroyed (its mount has kept the
trace by then), ``drop_if_stopped`` removes the trace its mount wrote: one
kept cut, or kept after the first signal ``run`` passed on to the container
(its shutdown may have been quiet long enough to settle).

Only a trace this run's mount wrote. ``noted``, as the provision returns,
says whether the mount may record (a lazy rootfs whose cache holds no
usable trace: the mount's first test, ``lazyfs.blobs.trace_run.find_trace``;
one that replays a trace published beside the image, kept in the store,
writes nothing in the cache, which is no harm) and which file the trace
path held then. Each write of a trace is a new file (written aside, then
renamed), so a file other than that one afterwards is this run's (unless a
run of the same image and command beside it wrote it), and one other than
the file at the first signal was written after it. A run that ends by
itself keeps its trace, cut or not: a short job's whole trace is cut.

Not covered: a mount that outlives its run (a destroy that failed to
unmount it; a run killed itself) keeps its cut trace when it ends later
(``recover``). Blocking; a trace is only a hint, so a failure is logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lazyfs.index.trace import MAX_TRACE_BYTES, TraceError, decode, load_trace, trace_path
from providers.manifest import ImageManifest

log = logging.getLogger(__name__)

# The signals that stop a container from outside: ``run`` passes on the first
# three; the terminal of ``run -t`` sends INT and QUIT itself; KILL is the
# kernel's (out of memory) or an agent's.
STOPPING = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL, signal.SIGTERM})

# Which file a path names: (device, inode), None for none.
FileId = tuple[int, int] | None


@dataclass(frozen=True)
class RunTrace:
    """Where the cache keeps the trace a run's mount records, and which file was there
    as the provision returned."""

    path: Path
    before: FileId


def noted(
    args: argparse.Namespace,
    image: ImageManifest,
    command: Sequence[str],
    working_dir: str,
    *,
    lazy: bool,
) -> RunTrace | None:
    """The trace the mount of ``image`` run as ``command`` in ``working_dir`` may record, as
    the provision returns; None when it records none (not ``lazy``, or it replays the one
    its cache holds)."""
    from lazyfs.cli_daemon import cache_dir
    from lazyfs.provision.lazy import run_trace_key

    key = run_trace_key(image, command, working_dir)
    cache = cache_dir(args)
    if not lazy or key is None or load_trace(cache, key, level=logging.DEBUG):
        return None
    path = trace_path(cache, key)
    return RunTrace(path, file_id(path))


def file_id(path: Path) -> FileId:
    """Which file ``path`` names now; None when none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def stopped(status: int | None, failed: bool, signalled: bool) -> bool:
    """Whether a run did not end by itself: it failed, passed a signal on, or its container
    ended by a signal that stops (runc's status 128+N)."""
    killed = status is not None and status > 128 and status - 128 in STOPPING
    return failed or signalled or killed


def drop_if_stopped(trace: RunTrace, *, signalled: bool, at_signal: FileId = None) -> bool:
    """Remove the trace the run's mount kept, if it kept one cut or, when it ``signalled``,
    after the first signal passed on (``at_signal``: which file was there then); whether
    one was removed. Call for a run that was ``stopped``, once its rootfs is destroyed."""
    path = trace.path
    try:
        with path.open("rb") as file:
            found = os.fstat(file.fileno())
            data = file.read(MAX_TRACE_BYTES + 1)
        now = (found.st_dev, found.st_ino)
        if now == trace.before:
            return False  # not written since the provision: not this run's
        if (not signalled or now == at_signal) and not _cut(data):
            return False  # settled before any signal
        path.unlink(missing_ok=True)
    except FileNotFoundError:
        return False
    except OSError as error:
        log.warning("cannot drop the prefetch trace %s of a stopped run: %s", path, error)
        return False
    log.info("the run was stopped before its workload settled: its prefetch trace %s is "
             "not kept", path)  # fmt: skip
    return True


def _cut(data: bytes) -> bool:
    try:
        return decode(data).cut
    except TraceError:
        return False  # not one a mount of this lazyfs wrote cut: left as it is
