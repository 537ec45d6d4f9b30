"""The cold-start measurement: a registry image, nothing of it on the machine, until its
program prints, over a shaped link.

A loopback ``docker-registry`` (started for the measurement) holds the image
twice: as pushed by ``skopeo --dest-compress`` (gzip layers, "plain") and converted to
eStargz by ``ctr-remote`` (``benchlib.estargz``).  Every contender reaches
it only through the bench's shaping proxy (``benchlib.shaper``: 100 Mbit/s
and 20 ms round trip unless ``--link-rate``/``--link-rtt`` say otherwise),
on a new work dir, store and cache each run.  Every row but the two warm
ones with the page cache kept (``lazyfs fuse (eStargz, warm)`` and
``lazyfs fuse (gzip, warm)``) starts from nothing, the page cache dropped;
the warm rows start from what an untimed run left (below).  Timed from the
start of the command until the image's program has printed its line; the
bytes counted are those that crossed the link by then, both ways.

- ``lazyfs fuse lazy (eStargz)``: ``lazyfs run --backend fuse`` of the
  eStargz image: layers indexed from their TOCs and read by range through
  the cache daemon the mount starts.
- ``lazyfs fuse lazy (eStargz, replayed trace)``: the same, on a machine
  that finds the trace a first run recorded published beside the image
  (``benchlib.cold_trace``).
- ``lazyfs fuse (eStargz, warm)``: the start after a lazy one whose layers
  have all arrived and been copied into the store, and one more untimed
  start, whose cache daemon and mount server are left running, as for the
  gzip warm row; the page cache kept (``benchlib.cold_warm``).  Compared
  with the gzip warm row.
- ``lazyfs fuse lazy (gzip, ...)``: ``lazyfs run --backend fuse
  --trust_published_indexes`` of the plain image, its layers read by range
  through the index published beside it (``benchlib.cold_index``: pushed by
  ``lazyfs index push``, or published by a first machine's whole pull);
  each compared with the eStargz row too.
- ``lazyfs fuse (gzip, warm)`` and ``lazyfs fuse (gzip, warm, page cache
  dropped)``: the plain image's start on a machine holding it whole and
  running the cache daemon and mount server of the run that pulled it, the
  page cache kept (after a ``sync``) or dropped; the replayed-trace row is
  compared with the first, the second with the first (``benchlib.cold_index``).
- ``lazyfs fuse (plain)`` and ``lazyfs overlay (plain)``: ``lazyfs run`` of
  the plain image, whose layers are pulled whole first.
- ``skopeo copy + umoci unpack``: the image copied into an OCI layout,
  unpacked, and its program run with runc on the bundle's rootfs.

Every ``lazyfs`` runs as its command-line, as a user runs it, with this
checkout's code (``benchlib.cold_run``).

``LAZYFS_BENCH_COLD_ROWS`` (rows' names, comma-separated; ``ROWS``) keeps
only those rows: a quick look at one of them without the minutes of whole
pulls. Figures to compare against the peer need the ``skopeo`` row in the
same run.  A name that is not a row's is refused (``unknown_rows``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from benchlib.cold_index import ESTARGZ_ROW, WARM_DROPPED_ROW, index_contenders, index_rows
from benchlib.cold_index import WARM_ROW as GZIP_WARM_ROW
from benchlib.cold_run import lazyfs_once
from benchlib.cold_trace import trace_contender
from benchlib.cold_warm import NAME as WARM_ROW
from benchlib.cold_warm import estargz_warm_once
from benchlib.estargz import push_estargz
from benchlib.measure import Contender, Context, Result, Timing, _run_until_printed, compare
from benchlib.pull import registry
from benchlib.shaper import Shaper, shaping_proxy
from benchlib.util import drop_caches, now, run, scratch_dir

NAME = "cold-start"
DEFAULT_RATE_MBIT = 100.0
DEFAULT_RTT_MS = 20.0
ROWS_ENV = "LAZYFS_BENCH_COLD_ROWS"
TRACE_ROW = "lazyfs fuse lazy (eStargz, replayed trace)"
PLAIN_FUSE_ROW = "lazyfs fuse (plain)"
PLAIN_OVERLAY_ROW = "lazyfs overlay (plain)"
SKOPEO_ROW = "skopeo copy + umoci unpack"
# Every row, in the order they are listed.
ROWS = (
    ESTARGZ_ROW,
    TRACE_ROW,
    *(row.name for row in index_rows()),
    GZIP_WARM_ROW,
    WARM_DROPPED_ROW,
    WARM_ROW,
    PLAIN_FUSE_ROW,
    PLAIN_OVERLAY_ROW,
    SKOPEO_ROW,
)


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
            # A row left out is not set up either (its index pushed, its trace published).
            # The eStargz warm row after the gzip ones: ``run_order`` runs the first two
            # rows compared with the gzip warm row (trace, page cache dropped) beside it.
            contenders = [
                Contender(ESTARGZ_ROW, True, lazyfs_once(ctx, link, lazy, "fuse", sizes[lazy])),
                *([trace_contender(ctx, host, link, lazy, sizes[lazy], TRACE_ROW)]
                  if _wanted(TRACE_ROW) else []),
                *index_contenders(ctx, host, link, plain, sizes[plain],
                                  [row for row in index_rows() if _wanted(row.name)],
                                  warm=_wanted(GZIP_WARM_ROW)),
                Contender(WARM_ROW, True, estargz_warm_once(ctx, link, lazy, sizes[lazy]),
                          versus=GZIP_WARM_ROW),
                Contender(PLAIN_FUSE_ROW, True,
                          lazyfs_once(ctx, link, plain, "fuse", sizes[plain])),
                Contender(PLAIN_OVERLAY_ROW, True,
                          lazyfs_once(ctx, link, plain, "overlay", sizes[plain])),
                Contender(SKOPEO_ROW, False, _skopeo_umoci_once(ctx, link, plain, sizes[plain])),
            ]  # fmt: skip
            contenders = [c for c in contenders if _wanted(c.name)]
            label = f"{NAME} {image.name} ({rate_mbit:g} Mbit/s, {rtt_ms:g} ms)"
            return Result(NAME, image.name, compare(contenders, ctx.runs, ctx.log, label))


def _wanted(row: str) -> bool:
    """Whether ``LAZYFS_BENCH_COLD_ROWS`` (unset or empty: every row) names ``row``."""
    rows = os.environ.get(ROWS_ENV, "")
    return not rows.strip() or row in _named(rows)


def _named(rows: str) -> set[str]:
    # Rows' names hold commas inside their parentheses: split only on the others.
    return {name.strip() for name in re.split(r",(?![^()]*\))", rows)} - {""}


def unknown_rows(rows: str) -> list[str]:
    """The names in ``rows`` (``LAZYFS_BENCH_COLD_ROWS``'s value) that are no row's."""
    return sorted(_named(rows) - set(ROWS))


def _image_bytes(reference: str) -> int:
    """The sum of the image's layer sizes, as its registry's manifest gives them."""
    import json

    text = run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"])
    return sum(int(layer["size"]) for layer in json.loads(text)["layers"])


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
