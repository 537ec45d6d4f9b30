"""``lazyfs cache``: what the cache holds; and how much of each image is local, for ``images``.

``lazyfs cache`` shows the cache directory's size on disk, its limit, and
each layer in it: its size, the bytes of it cached, how complete it is, and
its background state (fetching, complete and verified, quarantined and why).
A table by default, one JSON document with ``--json``. The running daemon is
asked (its status message, ``lazyfs.cache.client.status``); when none
answers, the cache directory is read as it lies on disk, with the limit
``--cache_size`` gives. Either way nothing is created or changed.

Layer sizes the cache does not know (a layer no background fetch was asked
for, whose last chunk is not cached) come from the images in the store.

``local_share`` is the LOCAL column of ``lazyfs images``: the bytes of an
image's layers in the store, plus those cached for its remote layers, over
the image's size.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.cli_daemon import cache_dir, cache_size
from lazyfs.progress import human_size

if TYPE_CHECKING:
    from lazyfs.store.disk import Store
    from providers.digest import Digest
    from providers.manifest import ImageManifest


@dataclass(frozen=True)
class LayerRow:
    digest: str
    size: int | None  # None: not known
    cached_bytes: int
    complete: float | None  # cached over size, 0..1; None without a size
    state: (
        str  # partial, unchecked (all cached, not checked whole), fetching, complete, quarantined
    )
    reason: str = ""


@dataclass(frozen=True)
class CacheReport:
    cache_dir: str
    daemon_running: bool
    used_bytes: int
    limit_bytes: int
    chunks: int
    background_fetch: bool | None  # None: no daemon to ask
    layers: tuple[LayerRow, ...]


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print one JSON document, not a table")


def run_cache(args: argparse.Namespace, store_dir: Path, store: Callable[[], Store]) -> int:
    """``lazyfs cache``; the store (made only when ``store_dir`` exists) sizes known layers."""
    manifests = [image.manifest for image in store().images()] if store_dir.is_dir() else []
    report = cache_report(cache_dir(args), cache_size(args), layer_sizes(manifests))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(render(report))
    return 0


def cache_report(directory: Path, limit: int, known: Mapping[Digest, int]) -> CacheReport:
    """What the cache at ``directory`` holds: from its daemon, else from the disk. Blocking."""
    from lazyfs.cache.client import status
    from lazyfs.cache.framing import ProtocolError

    try:
        found = status(directory) if directory.is_dir() else None
    except (OSError, ProtocolError):
        found = None
    if found is not None:
        rows = [
            _row(b.digest, b.size or known.get(b.digest), b.cached_bytes, b.kind.name, b.reason)
            for b in found.blobs
        ]
        return CacheReport(str(directory), True, found.used_bytes, found.limit_bytes,
                           found.chunks, found.background_fetch, tuple(rows))  # fmt: skip
    used, chunks, rows = _from_disk(directory, known)
    return CacheReport(str(directory), False, used, limit, chunks, None, tuple(rows))


def _from_disk(directory: Path, known: Mapping[Digest, int]) -> tuple[int, int, list[LayerRow]]:
    from lazyfs.cache.blobstate import verdicts
    from lazyfs.cache.layout import Layout

    layout = Layout(directory)
    cached: dict[Digest, int] = {}
    chunks = 0
    for blob_dir in sorted(layout.chunks_dir.glob("*/*")):
        key = layout.key_of(blob_dir / "00000000")
        if key is None:
            continue
        sizes = [entry.stat().st_size for entry in os.scandir(blob_dir) if entry.is_file()]
        cached[key.digest] = sum(sizes)
        chunks += len(sizes)
    judged = {v.digest: v for v in verdicts(directory)}
    rows = []
    for digest in sorted(set(cached) | set(judged)):
        verdict = judged.get(digest)
        size = verdict.size if verdict is not None else known.get(digest)
        state = verdict.state.upper() if verdict is not None else "PARTIAL"
        if state == "COMPLETE" and cached.get(digest, 0) < (size or 0):
            state = "PARTIAL"  # verified once, partly evicted since
        reason = verdict.reason if verdict is not None else ""
        rows.append(_row(digest, size, cached.get(digest, 0), state, reason))
    return sum(cached.values()), chunks, rows


def _row(digest: str, size: int | None, cached: int, kind: str, reason: str) -> LayerRow:
    state = "partial" if kind == "UNKNOWN" else kind.lower()
    if state == "partial" and size and cached >= size:
        state = "unchecked"  # every byte read in, the whole never hashed (no background fetch)
    complete = min(cached / size, 1.0) if size else None
    return LayerRow(digest, size or None, cached, complete, state, reason)


def render(report: CacheReport) -> str:
    daemon = "daemon running" if report.daemon_running else "no daemon answering"
    if report.background_fetch is not None:
        daemon += f", background fetch {'on' if report.background_fetch else 'off'}"
    used, limit = human_size(report.used_bytes), human_size(report.limit_bytes)
    lines = [f"cache {report.cache_dir}: {used} of {limit} used, {report.chunks} chunks ({daemon})"]
    table: list[tuple[str, ...]] = [("LAYER", "SIZE", "CACHED", "COMPLETE", "STATE")]
    for row in report.layers:
        size = "?" if row.size is None else human_size(row.size)
        share = "?" if row.complete is None else f"{row.complete:.0%}"
        state = f"{row.state}: {row.reason}" if row.reason else row.state
        table.append((row.digest[:19], size, human_size(row.cached_bytes), share, state))
    lines.extend(columns(table))
    return "\n".join(lines)


def columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def layer_sizes(manifests: Iterable[ImageManifest]) -> dict[Digest, int]:
    return {layer.digest: layer.size for m in manifests for layer in m.layers}


def local_share(
    manifest: ImageManifest, in_store: Callable[[Digest], bool], directory: Path
) -> str:
    """How much of ``manifest`` is on this machine: its layers in the store, or cached. Blocking."""
    from lazyfs.cache.layout import Layout

    layout = Layout(directory)
    total = sum(layer.size for layer in manifest.layers)
    local = 0
    for layer in manifest.layers:
        if in_store(layer.digest):
            local += layer.size
            continue
        try:
            entries = list(os.scandir(layout.blob_dir(layer.digest)))
        except OSError:
            continue
        local += min(layer.size, sum(e.stat().st_size for e in entries if e.is_file()))
    return f"{local / total:.0%}" if total else "100%"
