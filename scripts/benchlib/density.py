"""The density measurement: many fuse containers of one image on one machine, at once.

For N of 1, 10, 20 and 100, N writable fuse containers of the image are provisioned
concurrently (one trio nursery, as an agent starting them together would),
with their mount processes exec'd (``LAZYFS_MOUNT_SERVER=0``) and forked by
the store's mount server (``=1``; the server is started by the warm-up run,
so the timed runs see it running, as every container after a machine's first
does). The figure is the time until all N are provisioned; the facts, per
mount process once all N are up:

- ``pss_kib``: proportional set size (``/proc/PID/smaps_rollup``), pages
  shared with the other mounts and the server counted by share;
- ``rss_kib``: resident set size, shared pages counted whole;
- ``cpu_ms``: CPU time the mount process has used (user + system), the
  server's share of it (the forks) added;
- ``server_pss_kib``: the server's own PSS (0 without it), a fixed cost per
  store.

Once a run, ``measure_density_files`` measures one mount of images of 1k
to 1M files (``benchlib.density_scale``), and its memory after a walk and a
read-all (``benchlib.density_memory``); ``--only density-files`` runs that
part alone.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from backends.base import scratch_dir as rootfs_scratch
from benchlib.density_scale import log_medians, measure_scale
from benchlib.measure import Contender, Context, Result, Timing, compare
from benchlib.util import now, settle
from lazyfs.fs import mount as lazy_mount
from lazyfs.fs import mount_server_client as server_client
from lazyfs.provision.provisioner import ProvisionInfo

COUNTS = (1, 10, 20, 100)
STARTS = {"exec": "0", "server": "1"}
_ids = itertools.count()
_TICK = os.sysconf("SC_CLK_TCK")


def measure_density(ctx: Context) -> Result:
    contenders = [
        Contender(f"lazyfs fuse x{n} ({start})", True, _provision_many(ctx, n, value))
        for n in COUNTS
        for start, value in STARTS.items()
    ]
    try:
        compare(contenders, ctx.runs, ctx.log, f"density {ctx.image.name}")
    finally:
        stop_mount_server(ctx)
    log_medians(ctx, f"density {ctx.image.name}", contenders)
    return Result("density", ctx.image.name, contenders)


def measure_density_files(ctx: Context) -> list[Result]:
    """One mount per image size, 1k to 1M files, and its memory under load (``density_scale``)."""
    return measure_scale(ctx, _cpu_ms, _per)


def stop_mount_server(ctx: Context) -> None:
    """Stop the mount servers of the bench's stores, if a measurement started one: the
    store's, and the gzip store's when a measurement made it (the walks and reads)."""
    stores = [ctx.lazyfs]
    if "lazyfs_gzip" in vars(ctx):  # a cached property: made only where it was needed
        stores.append(ctx.lazyfs_gzip)
    for lazyfs in stores:
        server_client.stop_server(server_client.server_dir(lazyfs.store.root))


@contextmanager
def _mount_start(value: str) -> Iterator[None]:
    old = os.environ.get(server_client.ENV)
    os.environ[server_client.ENV] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[server_client.ENV]
        else:
            os.environ[server_client.ENV] = old


def _provision_many(ctx: Context, count: int, start: str) -> Callable[[], Timing]:
    provisioner, image = ctx.lazyfs.provisioner, ctx.lazyfs.image

    async def provision_all() -> list[ProvisionInfo]:
        made: list[ProvisionInfo] = []

        async def one() -> None:
            cid = f"density-{next(_ids)}"
            made.append(await provisioner.provision(cid, image, "fuse", writable=True))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        return made

    async def destroy_all(made: list[ProvisionInfo]) -> None:
        async with trio.open_nursery() as nursery:
            for info in made:
                nursery.start_soon(provisioner.destroy, info.container_id)

    def once() -> Timing:
        settle()
        with _mount_start(start):
            server = server_client.server_pid(server_client.server_dir(ctx.lazyfs.store.root))
            server_cpu = _cpu_ms(server) if server else 0.0
            began = now()
            made: list[ProvisionInfo] = []
            try:
                made = trio.run(provision_all)
                took = now() - began
                pids = [lazy_mount.recorded_pid(rootfs_scratch(info.rootfs)) for info in made]
                mounts = [pid for pid in pids if pid is not None]
                server = server_client.server_pid(server_client.server_dir(ctx.lazyfs.store.root))
                forks = (_cpu_ms(server) - server_cpu) if server and start == "1" else 0.0
                facts = {
                    "containers": len(mounts),
                    "pss_kib": _per(mounts, "Pss"),
                    "rss_kib": _per(mounts, "Rss"),
                    "cpu_ms": round((sum(_cpu_ms(pid) for pid in mounts) + forks) / len(mounts)),
                    # A server left from another contender's runs serves none of these.
                    "server_pss_kib": _rollup(server, "Pss") if server and start == "1" else 0,
                }
            finally:
                trio.run(destroy_all, made)
        return Timing(took, facts=facts)

    return once


def _per(pids: list[int], field: str) -> int:
    return round(sum(_rollup(pid, field) for pid in pids) / len(pids))


def _rollup(pid: int, field: str) -> int:
    """A field of ``/proc/PID/smaps_rollup``, in KiB."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/smaps_rollup")


def _cpu_ms(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, in ms (proc(5) fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / _TICK
