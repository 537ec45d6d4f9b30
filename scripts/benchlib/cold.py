"""The cold-start measurement: a registry image, nothing of it on the machine, until its
program prints, over a shaped link.

A loopback ``docker-registry`` (started for the measurement) holds the image
twice: as pushed by ``skopeo --dest-compress`` (gzip layers, "plain") and converted to
eStargz by ``ctr-remote`` (``benchlib.estargz``).  Every contender reaches
it only through the bench's shaping proxy (``benchlib.shaper``: 100 Mbit/s
and 20 ms round trip unless ``--link-rate``/``--link-rtt`` say otherwise),
starting from nothing: a new work dir, store and cache each run, the page
cache dropped.  Timed from the start of the command until the image's
program has printed its line; the bytes counted are those that crossed the
link by then, both ways.

- ``lazyfs fuse lazy (eStargz)``: ``lazyfs run --backend fuse`` of the
  eStargz image: layers indexed from their TOCs and read by range through
  the cache daemon the mount starts.
- ``lazyfs fuse lazy (eStargz, replayed trace)``: the same, on a machine
  that finds the trace a first run recorded published beside the image
  (``benchlib.cold_trace``).
- ``lazyfs fuse (plain)`` and ``lazyfs overlay (plain)``: ``lazyfs run`` of
  the plain image, whose layers are pulled whole first.
- ``skopeo copy + umoci unpack``: the image copied into an OCI layout,
  unpacked, and its program run with runc on the bundle's rootfs.

Every ``lazyfs`` runs as its command-line, as a user runs it, with this
checkout's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchlib.cold_trace import trace_contender
from benchlib.estargz import push_estargz
from benchlib.measure import Contender, Context, Result, Timing, _run_until_printed, compare
from benchlib.pull import registry
from benchlib.shaper import Shaper, shaping_proxy
from benchlib.util import ToolError, drop_caches, now, run, scratch_dir
from lazyfs.cache.connection import status
from lazyfs.cache.framing import ProtocolError
from lazyfs.fs import mount_server_client as server_client

REPO = Path(__file__).resolve().parents[2]
NAME = "cold-start"
DEFAULT_RATE_MBIT = 100.0
DEFAULT_RTT_MS = 20.0
_RUN_TIMEOUT = 900.0


def measure_cold_start(ctx: Context, rate_mbit: float, rtt_ms: float) -> Result:
    image = ctx.image
    with scratch_dir(ctx.scratch, "cold-registry-") as work, registry(work) as host:
        plain, lazy = f"bench/{image.name}:plain", f"bench/{image.name}:esgz"
        ctx.log(f"{NAME}: pushing {image.reference} to {host}, plain and as eStargz")
        # The layout's layers are uncompressed; a registry serves gzip, so compress them.
        run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2",
             "--dest-compress", f"oci:{image.oci_layout}:{image.tag}",
             f"docker://{host}/{plain}"])  # fmt: skip
        push_estargz(image.oci_layout, image.tag, ctx.scratch, f"{host}/{lazy}")
        sizes = {ref: _image_bytes(f"{host}/{ref}") for ref in (plain, lazy)}
        port = int(host.rsplit(":", 1)[1])
        rate = rate_mbit * 1_000_000
        with shaping_proxy(port, rate=rate, rtt=rtt_ms / 1000) as link:
            contenders = [
                Contender("lazyfs fuse lazy (eStargz)", True,
                          _lazyfs_once(ctx, link, lazy, "fuse", sizes[lazy])),
                trace_contender(ctx, host, link, lazy, sizes[lazy],
                                "lazyfs fuse lazy (eStargz, replayed trace)"),
                Contender("lazyfs fuse (plain)", True,
                          _lazyfs_once(ctx, link, plain, "fuse", sizes[plain])),
                Contender("lazyfs overlay (plain)", True,
                          _lazyfs_once(ctx, link, plain, "overlay", sizes[plain])),
                Contender("skopeo copy + umoci unpack", False,
                          _skopeo_umoci_once(ctx, link, plain, sizes[plain])),
            ]  # fmt: skip
            label = f"{NAME} {image.name} ({rate_mbit:g} Mbit/s, {rtt_ms:g} ms)"
            return Result(NAME, image.name, compare(contenders, ctx.runs, ctx.log, label))


def _image_bytes(reference: str) -> int:
    """The sum of the image's layer sizes, as its registry's manifest gives them."""
    import json

    text = run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"])
    return sum(int(layer["size"]) for layer in json.loads(text)["layers"])


def _lazyfs_once(
    ctx: Context, link: Shaper, reference: str, backend: str, image_bytes: int
) -> Callable[[], Timing]:
    def once() -> Timing:
        with scratch_dir(ctx.scratch, f"cold-{backend}-") as work:
            cache = work / "cache"
            argv = [sys.executable, "-P", "-m", "lazyfs", "--work_dir", str(work),
                    "--docker_registry", f"http://{link.host}", "--cache_dir", str(cache),
                    "run", "--backend", backend, f"docker:{link.host}/{reference}",
                    "--", *ctx.image.command]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            drop_caches()
            try:
                return _until_printed(ctx, argv, env, work / "lazyfs.log", link, image_bytes, cache)
            finally:
                _stop_daemon(cache)
                # The fuse run's mount server would idle on, in a store about to go.
                server_client.stop_server(server_client.server_dir(work / "store" / "docker"))

    return once


def _until_printed(
    ctx: Context,
    argv: list[str],
    env: dict[str, str],
    log: Path,
    link: Shaper,
    image_bytes: int,
    cache: Path | None = None,
) -> Timing:
    """Run ``argv``; the seconds and link bytes until it printed the image's line.

    With ``cache``, the facts also say what its cache daemon had done by then
    (``_daemon_facts``).
    """
    before = link.crossed()
    daemon: dict[str, int] = {}
    with open(log, "wb") as errors:
        start = now()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=errors, env=env)  # fmt: skip
        try:
            assert proc.stdout is not None
            printed, crossed = 0.0, 0
            for line in proc.stdout:
                if line.decode(errors="replace").strip() == ctx.image.expect:
                    printed, crossed = now(), link.crossed() - before
                    daemon = _daemon_facts(cache) if cache is not None else {}
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
    return Timing(printed - start, facts=facts)


def _daemon_facts(cache: Path) -> dict[str, int]:
    """What the cache daemon of ``cache`` had done when the line came (asked untimed).

    ``daemon_reads``: misses the mounts asked it for; ``daemon_requests`` and
    ``daemon_fetched_bytes``: range requests it sent upstream (on-demand,
    prefetch and background) and the bytes they brought.
    """
    try:
        found = status(cache)
    except (OSError, ProtocolError):
        return {}
    return {
        "daemon_reads": found.reads,
        "daemon_requests": found.fetches,
        "daemon_fetched_bytes": found.fetched_bytes,
    }


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


def _skopeo_umoci_once(
    ctx: Context, link: Shaper, reference: str, image_bytes: int
) -> Callable[[], Timing]:
    config = ctx.lazyfs.manifest.config

    def once() -> Timing:
        with scratch_dir(ctx.scratch, "cold-umoci-") as work:
            layout, bundle = work / "layout", work / "bundle"
            drop_caches()
            before = link.crossed()
            start = now()
            run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                 f"docker://{link.host}/{reference}", f"oci:{layout}:{ctx.image.tag}"])  # fmt: skip
            run(["umoci", "unpack", "--image", f"{layout}:{ctx.image.tag}", bundle])
            unpacked, crossed = now(), link.crossed() - before
            printed = _run_until_printed(ctx, bundle / "rootfs", config, False)
            phases = {"pull+unpack": unpacked - start, "run": printed - unpacked}
            facts = {"bytes": crossed, "image_bytes": image_bytes}
            return Timing(printed - start, phases, facts)

    return once
