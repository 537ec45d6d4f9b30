"""What ``lazyfs run`` does with the prefetch trace its mount recorded when the run was stopped.

The first lazy mount of an image for a command records the ranges it reads
until the workload settles, or until the mount ends, and then keeps them
marked ``cut`` (``lazyfs.blobs.trace_run``). A run stopped early (Ctrl-C, a
signal, an error, its container killed) recorded only the start of the
workload; kept, that start would be replayed by every later run instead of
the whole one, and pushed beside the image with ``--publish_indexes``. So
after such a run, once its rootfs is destroyed (its mount has kept the
trace by then), ``drop_if_stopped`` removes the trace its mount wrote: one
kept cut, or kept after the first signal passed on to the container (its
shutdown may have been quiet long enough to settle).

Only a trace this run wrote: ``noted`` looks whether the cache kept one
before, as the provision returns (a mount that finds one replays it and
records nothing; one that records keeps its trace two seconds after the
workload's last new read at the earliest, and then it settled). A run
that ends by itself keeps its trace, cut or not: a short job's whole
trace is cut. Blocking; a trace is only a hint, so a failure is logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lazyfs.index.trace import MAX_TRACE_BYTES, TraceError, decode, trace_path
from providers.manifest import ImageManifest

log = logging.getLogger(__name__)

# The signals that stop a container from outside: ``run`` passes on the first
# three; the terminal of ``run -t`` sends INT and QUIT itself; KILL is the
# kernel's (out of memory) or an agent's.
STOPPING = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL, signal.SIGTERM})
# File times come from the kernel's coarse clock, a tick behind time.time_ns().
_CLOCK_SLACK_NS = 50_000_000


@dataclass(frozen=True)
class RunTrace:
    """Where the cache keeps the trace of a run's image and command, and whether it
    kept one before the run's mount could write it."""

    path: Path | None  # None: a command no trace is keyed for
    existed: bool


def noted(args: argparse.Namespace, image: ImageManifest, command: Sequence[str],
          working_dir: str) -> RunTrace:  # fmt: skip
    """The trace of ``image`` run as ``command`` in ``working_dir``, as the provision returns."""
    from lazyfs.cli_daemon import cache_dir
    from lazyfs.provision.lazy import run_trace_key

    key = run_trace_key(image, command, working_dir)
    if key is None:
        return RunTrace(None, existed=True)
    path = trace_path(cache_dir(args), key)
    return RunTrace(path, existed=os.path.lexists(path))


def stopped(status: int | None, failed: bool, signalled_at: int | None) -> bool:
    """Whether a run did not end by itself: it failed, passed a signal on, or its container
    ended by a signal that stops (runc's status 128+N)."""
    killed = status is not None and status > 128 and status - 128 in STOPPING
    return failed or signalled_at is not None or killed


def drop_if_stopped(trace: RunTrace, signalled_at: int | None) -> bool:
    """Remove the trace the run's mount kept, if it kept one cut, or after ``signalled_at``
    (``time.time_ns()`` of the first signal passed on); whether one was removed. Call for a
    run that was ``stopped``, once its rootfs is destroyed."""
    path = trace.path
    if path is None or trace.existed:
        return False  # the run's mount replayed it, or keys none
    try:
        with path.open("rb") as file:
            written = os.fstat(file.fileno()).st_mtime_ns
            data = file.read(MAX_TRACE_BYTES + 1)
        after = signalled_at is not None and written >= signalled_at - _CLOCK_SLACK_NS
        if not after and not _cut(data):
            return False
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
