"""One timed ``lazyfs run`` of the cold-start measurement, and what it leaves behind.

``lazyfs_once`` makes a contender's ``once``: a new work dir, store and cache
each run, the page cache dropped, then ``lazyfs run`` through the shaping
proxy, timed from its start until the image's line is printed, with the
bytes that crossed the link by then.  Everything a run starts (the cache
daemon a lazy mount spawns, the store's mount server) is stopped after it,
outside the timed region.  ``lazyfs_untimed`` runs the same command where a
row needs work done first (a first machine's start), not timed or counted.
``warm_until_printed`` times a start on a work dir an untimed run filled,
with the cache daemon and mount server that run left still running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchlib.measure import Context, Timing
from benchlib.shaper import Shaper
from benchlib.timeline import Request
from benchlib.util import ToolError, drop_caches, now, scratch_dir, settle
from lazyfs.cache.connection import status
from lazyfs.cache.framing import ProtocolError
from lazyfs.fs import mount_server_client as server_client
from lazyfs.index.trace import TRACES_DIR, decode, key_image, trace_path
from lazyfs.store.disk import Store
from providers.errors import LazyfsError
from providers.fslock import exclusive_lock_until

REPO = Path(__file__).resolve().parents[2]
_RUN_TIMEOUT = 900.0
_ADOPT_TIMEOUT = 120.0
_ANSWER_TIMEOUT = 30.0
# A run's reference: the image's registry reference, decided per run (a row may
# push the image to a repository of its own for each run, untimed).
Reference = Callable[[], str]


def lazyfs_argv(
    ctx: Context, work: Path, host: str, reference: str, backend: str, flags: Sequence[str] = ()
) -> list[str]:
    """``lazyfs [FLAGS] run --backend BACKEND docker:HOST/REFERENCE -- COMMAND`` on ``work``."""
    return [sys.executable, "-P", "-m", "lazyfs", "--work_dir", str(work),
            "--docker_registry", f"http://{host}", "--cache_dir", str(work / "cache"), *flags,
            "run", "--backend", backend, f"docker:{host}/{reference}",
            "--", *ctx.image.command]  # fmt: skip


def lazyfs_once(
    ctx: Context,
    link: Shaper,
    reference: str | Reference,
    backend: str,
    image_bytes: int,
    *,
    flags: Sequence[str] = (),
    more_facts: Callable[[Path], dict[str, int]] | None = None,
) -> Callable[[], Timing]:
    """A ``once`` timing ``lazyfs [FLAGS] run`` of ``reference`` from nothing, over ``link``.

    ``reference``: the image, or what gives it for each run (called first, untimed).
    ``more_facts``: what else the run left in its work dir, asked once it has ended.
    """

    def once() -> Timing:
        name = reference() if callable(reference) else reference
        with scratch_dir(ctx.scratch, f"cold-{backend}-") as work:
            argv = lazyfs_argv(ctx, work, link.host, name, backend, flags)
            drop_caches()
            try:
                timing = until_printed(ctx, argv, work / "lazyfs.log", link, image_bytes, work)
                if more_facts is not None:
                    timing = dataclasses.replace(timing, facts={**timing.facts, **more_facts(work)})
                return timing
            finally:
                stop_leftovers(work)

    return once


def lazyfs_untimed(ctx: Context, host: str, reference: str, flags: Sequence[str]) -> None:
    """``lazyfs [FLAGS] run --backend fuse`` of ``host/reference`` on a machine of its own."""
    with scratch_dir(ctx.scratch, "cold-first-") as work:
        try:
            lazyfs_untimed_on(work, lazyfs_argv(ctx, work, host, reference, "fuse", flags))
        finally:
            stop_leftovers(work)


def lazyfs_untimed_on(work: Path, argv: list[str]) -> None:
    """Run ``argv``, a ``lazyfs`` command on ``work``, untimed; ToolError if it fails.

    What it leaves running (a cache daemon, a mount server, the process
    adopting its layers) is left.
    """
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          env=lazyfs_env(), timeout=_RUN_TIMEOUT, check=False)  # fmt: skip
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-1500:]
        raise ToolError(f"{' '.join(argv[3:])} exited {done.returncode}: {tail}")


def lazyfs_env() -> dict[str, str]:
    # This checkout's code, as the bench imports it.
    return {**os.environ, "PYTHONPATH": str(REPO)}


def until_printed(
    ctx: Context,
    argv: list[str],
    log: Path,
    link: Shaper,
    image_bytes: int,
    work: Path | None = None,
) -> Timing:
    """Run ``argv``; the seconds and link bytes until it printed the image's line.

    With ``work`` (a lazyfs work dir), the facts also say what its cache
    daemon had done by then (``daemon_facts``).
    """
    before = link.crossed()
    daemon: dict[str, int] = {}
    with open(log, "wb") as errors:
        start = now()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=errors, env=lazyfs_env())  # fmt: skip
        try:
            assert proc.stdout is not None
            printed, crossed = 0.0, 0
            requests: tuple[Request, ...] = ()
            for line in proc.stdout:
                if line.decode(errors="replace").strip() == ctx.image.expect:
                    printed, crossed = now(), link.crossed() - before
                    requests = tuple(link.heard.requests(start, printed))
                    daemon = daemon_facts(work / "cache") if work is not None else {}
                    break
            proc.stdout.read()
            code = proc.wait(timeout=_RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    if not printed or code != 0:
        tail = log.read_text(errors="replace").strip()[-1500:]
        raise ToolError(f"{' '.join(argv[3:])} exited {code}, printed={bool(printed)}: {tail}")
    facts = {"bytes": crossed, "image_bytes": image_bytes, **daemon}
    return Timing(printed - start, facts=facts, requests=requests)


def daemon_facts(cache: Path) -> dict[str, int]:
    """What the cache daemon of ``cache`` had done when the line came (asked untimed).

    ``daemon_reads``: reads the mounts asked it for (misses, and a replayed trace's
    partial chunks, read from its memory); ``daemon_waits``: those that waited on a
    fetch, the misses; ``daemon_requests`` and
    ``daemon_fetched_bytes``: range requests it sent upstream (on-demand,
    prefetch and background) and the bytes they brought.
    """
    try:
        found = status(cache)
    except (OSError, ProtocolError):
        return {}
    return {
        "daemon_reads": found.reads,
        "daemon_waits": found.waits,
        "daemon_requests": found.fetches,
        "daemon_fetched_bytes": found.fetched_bytes,
    }


def warm_until_printed(
    ctx: Context, argv: list[str], work: Path, link: Shaper, image_bytes: int, *, drop: bool
) -> Timing:
    """``until_printed`` of ``argv`` on ``work``, which holds the image whole: a machine that
    runs it already, its cache daemon and mount server answering (``wait_answering``).

    After a ``sync``, the page cache kept (everything cached), or with
    ``drop`` dropped, as before a cold start. The daemon's facts are the
    timed start's own. ToolError if a byte crossed the link or the daemon
    fetched: not a warm start.
    """
    wait_answering(work)
    before = daemon_facts(work / "cache")
    if drop:
        drop_caches()  # syncs first
    else:
        settle()
    timing = until_printed(ctx, argv, work / "lazyfs.log", link, image_bytes, work)
    # The daemon counts since it started: keep what the timed start made it do.
    facts = {key: value - before.get(key, 0) for key, value in timing.facts.items()}
    if facts["bytes"] or facts.get("daemon_requests"):
        raise ToolError(f"not a warm start (the link or the cache daemon fetched): {facts}")
    return dataclasses.replace(timing, facts=facts)


def wait_answering(work: Path, timeout: float = _ANSWER_TIMEOUT) -> None:
    """Until the cache daemon and the mount server of a run on ``work`` both answer on their
    sockets; ToolError naming the one that does not within ``timeout`` seconds."""
    cache, server = work / "cache", server_client.server_dir(work / "store" / "docker")
    deadline = time.monotonic() + timeout
    while True:
        try:
            status(cache, timeout=1.0)
            daemon = ""
        except (OSError, ProtocolError) as error:
            daemon = f"the cache daemon of {cache}: {error}"
        if not daemon and server_client.server_pid(server) is not None:
            return
        if time.monotonic() > deadline:
            who = daemon or f"the mount server in {server}"
            raise ToolError(f"not answering after {timeout:g}s: {who}")
        time.sleep(0.05)


def fetched_trace_reads(work: Path) -> dict[str, int]:
    """``trace_reads``: the reads, in the image's layers, of the prefetch trace a start on
    ``work`` fetched from its registry and kept in its store (``STORE/traces``); 0 for none.

    The store and the cache were new: only that start's provision put a
    trace there (``lazyfs.publish.traces.fetch_trace``), and a lazy mount
    with no trace of its own in the cache replays the one the store keeps
    under its key (``lazyfs.blobs.trace_run.start_trace``) when it names
    the layers the mount reads remotely. The mount's log, which says so,
    goes with the rootfs when ``lazyfs run`` ends.
    """
    store = work / "store" / "docker"
    layers = {
        image.manifest.digest: {layer.digest for layer in image.manifest.layers}
        for image in Store(store).images()
    }
    reads = 0
    for path in (store / TRACES_DIR).glob("*.json"):
        try:
            trace = decode(path.read_bytes())
            if trace_path(store, trace.key) != path:
                continue  # not where a mount looks for its key
            named = layers.get(key_image(trace.key), set())
        except (OSError, LazyfsError):  # TraceError among them
            continue
        reads += sum(1 for read in trace.reads if read.digest in named)
    return {"trace_reads": reads}


def replayed_only(once: Callable[[], Timing]) -> Callable[[], Timing]:
    """``once``, refusing a start that kept no fetched trace of its image (``trace_reads``:
    ``benchlib.cold_run.fetched_trace_reads``), so replayed none.

    A failed trace lookup is one warning in the start's log, and the start
    goes on without the trace: another row's figure under this row's name.
    """
    return requiring(once, "trace_reads", "no trace replayed (none fetched into the store)")


def requiring(once: Callable[[], Timing], fact: str, refusal: str) -> Callable[[], Timing]:
    """``once``, refusing (ToolError: ``refusal``) a start whose ``fact`` is 0 or missing."""

    def checked() -> Timing:
        timing = once()
        if not timing.facts.get(fact):
            raise ToolError(f"{refusal}: {timing.facts}")
        return timing

    return checked


def stop_leftovers(work: Path) -> None:
    """Stop the cache daemon and the mount server a run on ``work`` started, if any.

    And wait for the process that copies its layers into the store
    (``lazyfs.provision.adopt``), which ends within about a second of its
    next look at the daemon (every 10 s) once none answers: none of it runs
    into the next timed start.
    """
    _stop_daemon(work / "cache")
    try:
        _wait_adopted(work)
    finally:
        # The fuse run's mount server would idle on, in a store about to go.
        server_client.stop_server(server_client.server_dir(work / "store" / "docker"))


def _wait_adopted(work: Path) -> None:
    """Until no process adopts into ``work``'s store (each holds its image's adopt lock)."""
    deadline = time.monotonic() + _ADOPT_TIMEOUT
    for lock in (work / "store" / "docker" / "locks").glob("adopt-*.lock"):
        with exclusive_lock_until(lock, deadline, ToolError):
            pass  # free once the adopting process exits


def _stop_daemon(cache: Path) -> None:
    """End the cache daemon a lazy mount started under ``cache``, if any, and wait for it."""
    try:
        pid = int((cache / "daemon.pid").read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if b"lazyfs" not in args or b"daemon" not in args:
        return  # the pid is someone else's by now
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
