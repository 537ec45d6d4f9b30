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
- ``replayed_trace_row``: the same with a trace recorded on the first run
  and replayed by the second; not there yet (``None``).

The first machine and the pushes go to the registry directly, not through
the shaper: they are untimed and their bytes are not counted.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from benchlib.cold_run import lazyfs_env, lazyfs_once, lazyfs_untimed, stop_leftovers
from benchlib.measure import Contender, Context, Timing
from benchlib.shaper import Shaper
from benchlib.util import ToolError, run, scratch_dir

TRUST = "--trust_published_indexes"
PUBLISH = "--publish_indexes"
# The eStargz row each index row is compared with (issue 13: within 1.2x).
ESTARGZ_ROW = "lazyfs fuse lazy (eStargz)"
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


INDEX_PUSHED = IndexRow("lazyfs fuse lazy (gzip, index pushed)", None)
SECOND_MACHINE = IndexRow("lazyfs fuse lazy (gzip, second machine)", (TRUST, PUBLISH))


def replayed_trace_row() -> IndexRow | None:
    """The row "the same with a replayed trace" (issue 13), once traces exist.

    Expected shape: ``SECOND_MACHINE`` whose first machine records its trace
    and publishes it beside the index, and whose timed start replays it,
    e.g. ``IndexRow("lazyfs fuse lazy (gzip, replayed trace)", (TRUST,
    PUBLISH, <record flag>), (TRUST, <replay flag>))``.  None: no such row.
    """
    return None


def index_rows() -> list[IndexRow]:
    rows = [INDEX_PUSHED, SECOND_MACHINE]
    trace = replayed_trace_row()
    if trace is not None:
        rows.append(trace)
    return rows


def index_contenders(
    ctx: Context, host: str, link: Shaper, reference: str, image_bytes: int,
    rows: Sequence[IndexRow] | None = None,
) -> list[Contender]:  # fmt: skip
    """The rows' contenders for ``reference`` (``NAME:TAG``, gzip layers) in registry ``host``.

    Pushes the index of ``reference`` first (for the rows that use it); if
    that fails, those rows are skipped with its reason.
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
        once = lazyfs_once(ctx, link, _reference(ctx, host, reference, row), "fuse",
                           image_bytes, flags=row.flags)  # fmt: skip
        if failed is not None and row.first is None:
            once = _failing(failed)
        contenders.append(Contender(row.name, True, _lazy_only(once), versus=ESTARGZ_ROW))
    return contenders


def _failing(error: ToolError) -> Callable[[], Timing]:
    def once() -> Timing:
        raise error

    return once


def _lazy_only(once: Callable[[], Timing]) -> Callable[[], Timing]:
    """``once``, refusing a start that did not mount lazily (no cache daemon answered).

    A start that found no index pulls the image whole, which would be
    another row's figure under this row's name.
    """

    def checked() -> Timing:
        timing = once()
        if not timing.facts.get("daemon_requests"):
            raise ToolError(f"not a lazy start (no cache daemon fetches): {timing.facts}")
        return timing

    return checked


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
