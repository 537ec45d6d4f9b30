"""Whole blobs in the cache: the daemon's verdict on each, and reading a verified one back.

A background fetch (``lazyfs.cache.background``) ends with a verdict on a
whole blob, kept beside the chunks so that every process reading the cache
directory sees it, also after the daemon restarts::

    CACHE_DIR/blobs/<algorithm>/<hex>    JSON: {"state": "complete" | "quarantined",
                                                "size": ..., "diff_id": ..., "reason": ...}

``complete``: every chunk was fetched and the blob, read back from its
chunk files in order, has its digest and, uncompressed, its diff_id.
``quarantined``: it was whole and is not what its descriptor says; a
mount's reads of it give EIO (``lazyfs.cache.client`` looks here before it
serves a byte of a blob), and its chunks are dropped.

The store learns of a complete blob through ``open_complete``: a stream
over its chunk files, which ``Store.ingest`` verifies again as it copies
(a chunk evicted since the verdict is NotFound: the layer just stays
remote). So nothing here is trusted more than any registry: the verdict
says where to look, the store's own check decides.

Records are written whole (a temporary file renamed into place) and only
by the daemon, which owns the directory. Blocking file I/O; thread-safe.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lazyfs.cache.layout import CHUNK_SIZE, ChunkFiles, ChunkKey, Layout
from providers.digest import Digest, algorithm, hex_part, parse_digest
from providers.errors import BadImage, NotFound
from providers.private_dir import PRIVATE

COMPLETE = "complete"
QUARANTINED = "quarantined"
BLOBS_DIR = "blobs"


@dataclass(frozen=True)
class Verdict:
    """The daemon's word on a whole blob: ``state`` is COMPLETE or QUARANTINED."""

    digest: Digest
    state: str
    size: int
    diff_id: Digest | None = None
    reason: str = ""


def record_path(cache_dir: Path, digest: Digest) -> Path:
    return cache_dir / BLOBS_DIR / algorithm(digest) / hex_part(digest)


def read_verdict(cache_dir: Path, digest: Digest) -> Verdict | None:
    """The verdict on ``digest``, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(record_path(cache_dir, digest).read_text(encoding="utf-8"))
        state = data["state"]
        diff_id = data.get("diff_id")
        verdict = Verdict(
            digest,
            state,
            int(data["size"]),
            None if diff_id is None else parse_digest(diff_id),
            str(data.get("reason", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, BadImage):
        return None
    return verdict if state in (COMPLETE, QUARANTINED) else None


def verdicts(cache_dir: Path) -> list[Verdict]:
    """Every readable verdict in the cache directory."""
    found = []
    for path in sorted((cache_dir / BLOBS_DIR).glob("*/*")):
        try:
            digest = parse_digest(f"{path.parent.name}:{path.name}")
        except BadImage:
            continue
        verdict = read_verdict(cache_dir, digest)
        if verdict is not None:
            found.append(verdict)
    return found


def write_verdict(cache_dir: Path, verdict: Verdict) -> None:
    """Record ``verdict``, replacing any earlier one, whole or not at all."""
    path = record_path(cache_dir, verdict.digest)
    for directory in (path.parent.parent, path.parent):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, PRIVATE)
    data = {
        "state": verdict.state,
        "size": verdict.size,
        "diff_id": verdict.diff_id,
        "reason": verdict.reason,
    }
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".verdict.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def forget_verdict(cache_dir: Path, digest: Digest) -> None:
    record_path(cache_dir, digest).unlink(missing_ok=True)


def quarantine_reason(cache_dir: Path, digest: Digest) -> str | None:
    """Why blob ``digest`` is quarantined, or None when it is not. One stat when it is not."""
    path = record_path(cache_dir, digest)
    if not path.exists():
        return None
    verdict = read_verdict(cache_dir, digest)
    if verdict is None or verdict.state != QUARANTINED:
        return None
    return verdict.reason or "quarantined"


def open_complete(
    cache_dir: Path, digest: Digest, *, chunk_size: int = CHUNK_SIZE
) -> BinaryIO | None:
    """The blob's bytes from its chunk files when the daemon found it complete, else None.

    Not verified here: the reader (``Store.ingest``) checks digest and
    diff_id as it copies. A chunk that is gone when its turn comes is
    NotFound, raised by ``read``.
    """
    verdict = read_verdict(cache_dir, digest)
    if verdict is None or verdict.state != COMPLETE:
        return None
    files = ChunkFiles(Layout(cache_dir, chunk_size))
    return io.BufferedReader(_ChunkStream(files, digest, verdict.size), 1 << 20)


class _ChunkStream(io.RawIOBase):
    """Blob ``digest`` of ``size`` bytes, read chunk after chunk from the cache files."""

    def __init__(self, files: ChunkFiles, digest: Digest, size: int) -> None:
        self._files = files
        self._digest = digest
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._position >= self._size:
            return 0
        chunk_size = self._files.layout.chunk_size
        index, start = divmod(self._position, chunk_size)
        want = min(len(buffer), chunk_size - start, self._size - self._position)
        data = self._files.read_chunk(ChunkKey(self._digest, index), start, want)
        if not data:
            raise NotFound(f"chunk {index} of {self._digest} left the cache", digest=self._digest)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
