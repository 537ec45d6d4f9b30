"""What ``lazyfs run`` does with the prefetch trace its mount recorded when it passed a signal on.

The first lazy mount of an image for a command records the ranges it reads
until the workload settles (kept whole), or until the mount ends first
(kept ``cut``: all of a short job, the start of a run stopped early). A cut
trace is provisional: the next mount replays it, records again, and keeps
its own when it goes further (``lazyfs.blobs.trace_run``). So a run stopped
early costs the next one nothing but a shorter replay.

One stopped run's trace is not cut: a container that a signal ``run`` passed
on stops, and whose shutdown reads nothing new for the settle time, keeps a
trace marked whole of the start of its workload, which would be replayed
(and pushed beside the image with ``--publish_indexes``) for ever. So
``run`` notes which file the trace path holds at the first signal it passes
on (``noted``, ``file_id``), and once the rootfs is destroyed (its mount
has kept the trace by then) ``cut_if_written`` marks cut a whole trace
written since. Each write of a trace is a new file (written aside, then
renamed), so another file is a later write; no clock. A mount that
replays a ``final`` trace (whole, with bytes of its remote layers) writes
none.

Not covered: a mount that outlives its run (a destroy that failed to
unmount it; a run killed itself) writes its trace when it settles or
ends later (``recover``), after this; and an agent's container, started through
``provision``, stopped early and destroyed 2 s or more after its last read
keeps a whole trace of its start (destroyed sooner, it keeps it cut).

Blocking; a trace is only a hint, so a failure is logged.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lazyfs.index.trace import MAX_TRACE_BYTES, TraceError, decode, store_trace, trace_path
from providers.errors import LazyfsError
from providers.manifest import ImageManifest

log = logging.getLogger(__name__)

# Which file a path names: (device, inode), None for none.
FileId = tuple[int, int] | None


@dataclass(frozen=True)
class RunTrace:
    """The trace a run's mount records or replays: of ``key``, in the cache at ``cache_dir``."""

    cache_dir: Path
    key: str

    @property
    def path(self) -> Path:
        return trace_path(self.cache_dir, self.key)


def noted(
    args: argparse.Namespace,
    image: ImageManifest,
    command: Sequence[str],
    working_dir: str,
    *,
    lazy: bool,
) -> RunTrace | None:
    """The trace the mount of ``image`` run as ``command`` in ``working_dir`` records or
    replays; None when it has none (not ``lazy``)."""
    from lazyfs.cli_daemon import cache_dir
    from lazyfs.provision.lazy import run_trace_key

    key = run_trace_key(image, command, working_dir)
    if not lazy or key is None:
        return None
    return RunTrace(cache_dir(args), key)


def file_id(path: Path) -> FileId:
    """Which file ``path`` names now; None when none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def cut_if_written(trace: RunTrace, at_signal: FileId) -> bool:
    """Mark ``trace`` cut if it is whole and another file than ``at_signal`` (which its
    path held at the first signal the run passed on); whether it did. Call once the run's
    rootfs is destroyed."""
    path = trace.path
    try:
        with path.open("rb") as file:
            found = os.fstat(file.fileno())
            data = file.read(MAX_TRACE_BYTES + 1)
        if (found.st_dev, found.st_ino) == at_signal:
            return False  # settled before the signal: the whole workload's
        kept = decode(data, trace.key)
        if kept.cut:
            return False
        store_trace(trace.cache_dir, replace(kept, cut=True))
    except FileNotFoundError:
        return False
    except TraceError as error:
        log.info("the prefetch trace %s is left as it is: %s", path, error)
        return False
    except (OSError, LazyfsError) as error:
        log.warning("cannot mark cut the prefetch trace %s of a stopped run: %s", path, error)
        return False
    log.info("the run was stopped before its workload settled: its prefetch trace %s is "
             "kept cut, for the next run to complete", path)  # fmt: skip
    return True
