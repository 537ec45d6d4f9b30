"""Cold-start rows of the unmodified gzip image, lazy through an index published beside it.

Each row is an ``IndexRow``: how the registry comes to hold what the timed
start uses, and the flags of that start (always a new work dir, store and
cache, with ``--trust_published_indexes``, through the shaping proxy; see
``benchlib.cold_run``).

- ``lazyfs fuse lazy (gzip, index pushed)``: the index was pushed once,
  before the rows, by ``lazyfs index push`` from a store of its own: what a
  CI job that publishes indexes gives.
- ``lazyfs fuse lazy (gzip, second machine)``: for every timed start the
  image is put in a repository of its own, with nothing beside it; a first
  machine (``--trust_published_indexes --publish_indexes``) starts it, finds
  no index, pulls it whole and publishes the index on that pull; then the
  timed start is the second machine's, on a fresh cache.  Nothing changed in
  anyone's CI: this is the start issue 13 is about.
- ``lazyfs fuse lazy (gzip, replayed trace)``: the same, and between the
  two a recording machine (the same flags) starts the image lazily from that
  index, records its trace, and pushes it beside the index when its run
  ends (``--publish_indexes``); the timed start finds both and replays the
  trace.  A sample whose start kept no fetched trace of the image in its
  store (``benchlib.cold_run.fetched_trace_reads``) is refused: a failed
  lookup is one warning, and the start would be a second machine's.
  Compared with the warm row, as issue 13's target says.
- ``lazyfs fuse (gzip, warm)``: the same ``lazyfs run`` as the timed
  starts above, on a machine that has the image whole already and runs
  it: an untimed ``lazyfs run`` without trust pulled it into the store
  first (through the link, not counted), and the cache daemon and the
  mount server that run started are left running; the timed start begins
  once both answer on their sockets, after a ``sync``, with the page cache
  kept: everything is cached and running.  A sample that sent a byte over
  the link, or whose daemon fetched, is refused.
- ``lazyfs fuse (gzip, warm, page cache dropped)``: the same, daemon and
  mount server running, but with the page cache dropped before the timed
  start, as before every cold start.  No byte crosses the link, so its
  ratio to the warm row is what a cold start pays before any network:
  reading Python, lazyfs and the image's program from the disk.  Issue
  13's trace target (1.3x the warm row) has to fit the link's part in what
  is left of that.

The first machines and the pushes go to the registry directly, not through
the shaper: they are untimed and their bytes are not counted.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from benchlib.cold_run import (
    fetched_trace_reads,
    lazyfs_argv,
    lazyfs_env,
    lazyfs_once,
    lazyfs_untimed,
    replayed_only,
    requiring,
    stop_leftovers,
    warm_until_printed,
)
from benchlib.measure import Contender, Context, Timing
from benchlib.shaper import Shaper
from benchlib.util import ToolError, run, scratch_dir

TRUST = "--trust_published_indexes"
PUBLISH = "--publish_indexes"
# The eStargz row each index row is compared with (issue 13: within 1.2x).
ESTARGZ_ROW = "lazyfs fuse lazy (eStargz)"
# The warm start the trace row is compared with (issue 13: at most 1.3x).
WARM_ROW = "lazyfs fuse (gzip, warm)"
# The warm start from a dropped page cache: what no lazy start can do better than.
WARM_DROPPED_ROW = "lazyfs fuse (gzip, warm, page cache dropped)"
TRACE_ARTIFACT_TYPE = "application/vnd.lazyfs.trace.v1"  # lazyfs.index.trace's
_MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
))  # fmt: skip


@dataclass(frozen=True)
class IndexRow:
    """One row: its name, how its first machine runs, and the timed start's flags.

    ``first``: None when the row uses the index pushed once before the rows;
    else the global flags of a first machine's ``lazyfs run --backend fuse``
    of the image in a new repository of its own, untimed, before each timed
    start (which then uses that repository).
    """

    name: str
    first: tuple[str, ...] | None
    flags: tuple[str, ...] = (TRUST,)
    # The global flags of a second untimed machine, after the first: one that
    # starts the image lazily, records its trace and publishes it. None: none.
    recorder: tuple[str, ...] | None = None
    versus: str = ESTARGZ_ROW


INDEX_PUSHED = IndexRow("lazyfs fuse lazy (gzip, index pushed)", None)
SECOND_MACHINE = IndexRow("lazyfs fuse lazy (gzip, second machine)", (TRUST, PUBLISH))
REPLAYED_TRACE = IndexRow(
    "lazyfs fuse lazy (gzip, replayed trace)", (TRUST, PUBLISH), recorder=(TRUST, PUBLISH),
    versus=WARM_ROW,
)  # fmt: skip


def replayed_trace_row() -> IndexRow | None:
    """The row "the same with a replayed trace" (issue 13)."""
    return REPLAYED_TRACE


def index_rows() -> list[IndexRow]:
    rows = [INDEX_PUSHED, SECOND_MACHINE]
    trace = replayed_trace_row()
    if trace is not None:
        rows.append(trace)
    return rows


def index_contenders(
    ctx: Context, host: str, link: Shaper, reference: str, image_bytes: int,
    rows: Sequence[IndexRow] | None = None, warm: bool = False,
) -> list[Contender]:  # fmt: skip
    """The rows' contenders for ``reference`` (``NAME:TAG``, gzip layers) in registry ``host``.

    With the two warm rows too when a row is compared with the warm one, or
    ``warm``. Pushes
    the index of ``reference`` first (for the rows that use it); if that fails,
    those rows are skipped with its reason.
    """
    rows = index_rows() if rows is None else rows
    failed: ToolError | None = None
    if any(row.first is None for row in rows):
        try:
            push_index(ctx, host, reference)
        except ToolError as error:
            failed = error
    contenders = []
    for row in rows:
        replays = row.recorder is not None  # its timed start must replay what was recorded
        once = lazyfs_once(ctx, link, _reference(ctx, host, reference, row), "fuse",
                           image_bytes, flags=row.flags,
                           more_facts=fetched_trace_reads if replays else None)  # fmt: skip
        if failed is not None and row.first is None:
            once = _failing(failed)
        once = _lazy_only(once)
        if replays:
            once = replayed_only(once)
        contenders.append(Contender(row.name, True, once, versus=row.versus))
    if warm or any(row.versus == WARM_ROW for row in rows):
        contenders += [
            Contender(WARM_ROW, True, _warm_once(ctx, link, reference, image_bytes)),
            Contender(WARM_DROPPED_ROW, True,
                      _warm_once(ctx, link, reference, image_bytes, drop=True), versus=WARM_ROW),
        ]  # fmt: skip
    return contenders


def _warm_once(
    ctx: Context, link: Shaper, reference: str, image_bytes: int, *, drop: bool = False
) -> Callable[[], Timing]:
    """A ``once`` timing the trace row's ``lazyfs run`` on a machine holding the image whole
    and running its cache daemon and mount server; ``drop``: from a dropped page cache, as a
    cold start."""

    def once() -> Timing:
        with scratch_dir(ctx.scratch, "cold-warm-") as work:
            try:
                # Untimed: pulled whole into the store (no trust: no lazy layer). What it
                # started stays: the cache daemon (the command starts one for a registry
                # image on fuse) and the store's mount server (its mount started one).
                _pull_whole(ctx, work, link.host, reference)
                argv = lazyfs_argv(ctx, work, link.host, reference, "fuse", (TRUST,))
                return warm_until_printed(ctx, argv, work, link, image_bytes, drop=drop)
            finally:
                stop_leftovers(work)

    return once


def _failing(error: ToolError) -> Callable[[], Timing]:
    def once() -> Timing:
        raise error

    return once


def _lazy_only(once: Callable[[], Timing]) -> Callable[[], Timing]:
    """``once``, refusing a start that did not mount lazily (no cache daemon answered).

    A start that found no index pulls the image whole, which would be
    another row's figure under this row's name.
    """
    return requiring(once, "daemon_requests", "not a lazy start (no cache daemon fetches)")


def push_index(ctx: Context, host: str, reference: str) -> None:
    """``lazyfs index push`` of ``host/reference`` from a store of its own."""
    with scratch_dir(ctx.scratch, "cold-index-") as work:
        try:
            run([*_lazyfs(work, host), "index", "push", f"{host}/{reference}"], env=lazyfs_env())
        finally:
            stop_leftovers(work)


def _lazyfs(work: Path, host: str) -> list[str]:
    return [sys.executable, "-P", "-m", "lazyfs", "--work_dir", str(work),
            "--docker_registry", f"http://{host}"]  # fmt: skip


_repositories = itertools.count()


def _reference(ctx: Context, host: str, reference: str, row: IndexRow) -> str | Callable[[], str]:
    """What the row's timed start runs: ``reference``, or a fresh copy per run, started once."""
    first = row.first
    if first is None:
        return reference

    def fresh() -> str:
        name, tag = reference.rsplit(":", 1)
        copy = f"{name}-{next(_repositories)}:{tag}"
        copy_image(host, reference, copy)
        lazyfs_untimed(ctx, host, copy, first)
        if row.recorder is not None:
            lazyfs_untimed(ctx, host, copy, row.recorder)
            if not has_referrer(host, copy, TRACE_ARTIFACT_TYPE):
                raise ToolError(f"the recording start of {copy} published no trace")
        return copy

    return fresh


def copy_image(host: str, source: str, dest: str) -> None:
    """Put image ``source`` in a new repository as ``dest``, the same manifest, nothing beside it.

    Blobs are mounted across repositories (no bytes move); the manifest is
    put as it is, so its digest, the referrers' subject, is the same.
    """
    base = f"http://{host}/v2"
    (name, tag), (new_name, new_tag) = source.rsplit(":", 1), dest.rsplit(":", 1)
    got = requests.get(f"{base}/{name}/manifests/{tag}", headers={"Accept": _MANIFEST_TYPES},
                       timeout=30)  # fmt: skip
    got.raise_for_status()
    manifest = got.json()
    for blob in [manifest["config"], *manifest["layers"]]:
        mounted = requests.post(
            f"{base}/{new_name}/blobs/uploads/",
            params={"mount": blob["digest"], "from": name},
            timeout=30,
        )
        if mounted.status_code != 201:
            raise ToolError(f"mounting {blob['digest']} into {new_name}: {mounted.status_code}")
    put = requests.put(
        f"{base}/{new_name}/manifests/{new_tag}",
        data=got.content,
        headers={"Content-Type": got.headers["Content-Type"]},
        timeout=30,
    )
    if put.status_code != 201:
        raise ToolError(f"putting {dest}: {put.status_code} {put.text[:200]}")


def _pull_whole(ctx: Context, work: Path, host: str, reference: str) -> None:
    """An untimed ``lazyfs run --backend fuse`` on ``work`` that stores ``reference`` whole."""
    argv = lazyfs_argv(ctx, work, host, reference, "fuse")
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=lazyfs_env(),
                          timeout=900, check=False)  # fmt: skip
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-1500:]
        raise ToolError(f"{' '.join(argv[3:])} exited {done.returncode}: {tail}")


def has_referrer(host: str, reference: str, artifact_type: str) -> bool:
    """Whether ``host/reference`` has a referrer of ``artifact_type`` in its referrers tag.

    The bench registry (``docker-registry``) has no Referrers API: lazyfs
    keeps the tag.
    """
    base = f"http://{host}/v2"
    name, tag = reference.rsplit(":", 1)
    got = requests.get(f"{base}/{name}/manifests/{tag}", headers={"Accept": _MANIFEST_TYPES},
                       timeout=30)  # fmt: skip
    got.raise_for_status()
    digest = got.headers.get("Docker-Content-Digest", "")
    if not digest:
        digest = "sha256:" + hashlib.sha256(got.content).hexdigest()
    listed = requests.get(f"{base}/{name}/manifests/{digest.replace(':', '-', 1)}",
                          headers={"Accept": "application/vnd.oci.image.index.v1+json"},
                          timeout=30)  # fmt: skip
    if listed.status_code != 200:
        return False
    manifests = listed.json().get("manifests", [])
    return any(item.get("artifactType") == artifact_type for item in manifests)
