"""The cold-start row with a learned prefetch trace replayed (issue 13).

Before the timed runs, untimed: one ``lazyfs run`` of the lazy image on the
bench registry itself (not through the shaped link), with a cache of its own,
records the trace of the image and its program; ``lazyfs.publish.traces``
pushes it beside the image. Each timed run is then a new machine: new work
dir, store and cache, the page cache dropped, ``lazyfs run --backend fuse
--trust_published_indexes`` through the shaped link, which finds the trace
in the registry and replays it while the program starts. Timed, and the
bytes counted, as every cold-start row: until the program has printed. A
start that kept no fetched trace in its store (a failed lookup is one
warning) is refused (``benchlib.cold_run.replayed_only``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from benchlib.cold_run import fetched_trace_reads, replayed_only, stop_leftovers
from benchlib.measure import Contender, Context, Timing
from benchlib.shaper import Shaper
from benchlib.util import ToolError, drop_caches, now, scratch_dir
from lazyfs.cache.connection import status
from lazyfs.cache.framing import ProtocolError

REPO = Path(__file__).resolve().parents[2]
_TIMEOUT = 900.0


def trace_contender(
    ctx: Context, host: str, link: Shaper, reference: str, image_bytes: int, name: str
) -> Contender:
    """Row ``name``: ``reference`` (a lazy image on ``host``) with its trace published."""
    _publish_trace(ctx, host, reference)

    def once() -> Timing:
        with scratch_dir(ctx.scratch, "cold-trace-") as work:
            drop_caches()
            try:
                timing = _until_printed(ctx, work, link.host, reference, link, image_bytes)
                facts = {**timing.facts, **fetched_trace_reads(work)}
                return dataclasses.replace(timing, facts=facts)
            finally:
                stop_leftovers(work)

    return Contender(name, True, replayed_only(once))


def _argv(ctx: Context, work: Path, registry: str, reference: str) -> list[str]:
    return [sys.executable, "-P", "-m", "lazyfs", "--work_dir", str(work),
            "--docker_registry", f"http://{registry}", "--cache_dir", str(work / "cache"),
            "--trust_published_indexes", "run", "--backend", "fuse",
            f"docker:{registry}/{reference}", "--", *ctx.image.command]  # fmt: skip


def _publish_trace(ctx: Context, host: str, reference: str) -> None:
    from lazyfs.publish.push import repository_push
    from lazyfs.publish.traces import publish_traces
    from providers.registry import RegistryClient, RegistryOptions

    ctx.log(f"cold-start: recording the trace of {reference} (untimed)")
    with scratch_dir(ctx.scratch, "cold-trace-record-") as work:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            done = subprocess.run(_argv(ctx, work, host, reference), env=env, check=False,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=_TIMEOUT)  # fmt: skip
            if done.returncode != 0:
                raise ToolError(f"recording the trace failed: {done.stderr.strip()[-1500:]}")
            client = RegistryClient(RegistryOptions(registry=f"http://{host}"))
            manifest = client.resolve(f"{host}/{reference}")
            if publish_traces(work / "cache", repository_push(client, manifest.reference),
                              manifest) is None:  # fmt: skip
                raise ToolError(f"the run of {reference} kept no trace to publish")
        finally:
            stop_leftovers(work)


def _until_printed(
    ctx: Context, work: Path, registry: str, reference: str, link: Shaper, image_bytes: int
) -> Timing:
    before = link.crossed()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(work / "lazyfs.log", "wb") as errors:
        start = now()
        proc = subprocess.Popen(_argv(ctx, work, registry, reference), env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=errors)  # fmt: skip
        printed, crossed = 0.0, 0
        facts: dict[str, int] = {}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.decode(errors="replace").strip() == ctx.image.expect:
                    printed, crossed = now(), link.crossed() - before
                    facts = _daemon_facts(work / "cache")
                    break
            proc.stdout.read()
            code = proc.wait(timeout=_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    if not printed or code != 0:
        tail = (work / "lazyfs.log").read_text(errors="replace").strip()[-1500:]
        raise ToolError(f"lazyfs run with a trace exited {code}, printed={bool(printed)}: {tail}")
    return Timing(printed - start, facts={"bytes": crossed, "image_bytes": image_bytes, **facts})


def _daemon_facts(cache: Path) -> dict[str, int]:
    """The cache daemon's counts when the line came, as the other lazy rows report them."""
    try:
        found = status(cache)
    except (OSError, ProtocolError):
        return {}
    return {"daemon_reads": found.reads, "daemon_waits": found.waits,
            "daemon_requests": found.fetches,
            "daemon_fetched_bytes": found.fetched_bytes}  # fmt: skip
