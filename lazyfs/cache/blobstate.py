"""Whole blobs in the cache: what their bytes are, which origins served wrong ones, reading back.

A background fetch (``lazyfs.cache.background``) ends with a finding on a
whole blob, kept beside the chunks so that every process reading the cache
directory sees it, also after the daemon restarts::

    CACHE_DIR/blobs/<algorithm>/<hex>     JSON: {"format": 2, "state": "complete",
                                                 "size": ..., "diff_id": ..., "reason": ...}
    CACHE_DIR/wrong/<algorithm>/<hex>/<k> JSON: {"origin": ..., "size": ..., "reason": ...}

A verdict states only facts about the bytes, never what one image claims of
them, because the cache is shared by every image on the machine and image
content is hostile. ``complete``: the blob's chunks, read back in order,
hash to its digest; ``size`` and ``diff_id`` are what they *are*, computed
from them (``diff_id`` None with a ``reason`` when they do not unpack). A
mount whose image says another size or diff_id for the layer is refused its
reads (``refusal``, which ``lazyfs.cache.client`` asks before it serves a
byte), with both named; mounts of images that agree read on.

Bytes that do not hash to the digest say nothing about the blob, only that
one origin (registry host and repository) served wrong bytes for it, asked
for that size: a ``wrong`` record, keyed by origin and size, refuses reads
through that origin only, and is removed when a later fetch from it
verifies. Other origins' mounts fetch from their own.

Records without ``"format": 2`` (written before verdicts were facts about
bytes) are ignored: the blob is fetched and judged again.

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
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lazyfs.cache.layout import CHUNK_SIZE, ChunkFiles, ChunkKey, Layout
from lazyfs.cache.values import Origin, RegistryOrigin
from providers.digest import Digest, algorithm, hex_part, parse_digest
from providers.errors import BadImage, DigestMismatch, NotFound
from providers.private_dir import PRIVATE

if TYPE_CHECKING:
    from lazyfs.cache.chunks import DiskCache  # the daemon's: readers never load it

COMPLETE = "complete"
QUARANTINED = "quarantined"  # the bytes hash to the digest but are no layer (do not unpack)
BLOBS_DIR = "blobs"
WRONG_DIR = "wrong"
FORMAT = 2  # records without it predate verdicts on bytes alone: ignored


@dataclass(frozen=True)
class Verdict:
    """The daemon's word on a whole blob's bytes: ``state`` is COMPLETE or QUARANTINED.

    ``size`` and ``diff_id`` are computed from bytes that hash to ``digest``.
    """

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
        if data.get("format") != FORMAT:
            return None
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
    data = {
        "format": FORMAT,
        "state": verdict.state,
        "size": verdict.size,
        "diff_id": verdict.diff_id,
        "reason": verdict.reason,
    }
    _write(record_path(cache_dir, verdict.digest), data)
    # Whatever an origin served before, the blob's bytes are known now.
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(_wrong_dir(cache_dir, verdict.digest))


def _write(path: Path, data: dict[str, object]) -> None:
    for directory in reversed(path.parents[:3]):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, PRIVATE)
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


def forget_complete(cache_dir: Path, digest: Digest) -> None:
    """Remove the verdict on ``digest`` if it says complete: its chunks are let go
    (``lazyfs.cache.forget``), and it would list a blob no longer here. A quarantine
    stays: it is a fact about the bytes, and holds no room."""
    verdict = read_verdict(cache_dir, digest)
    if verdict is not None and verdict.state == COMPLETE:
        forget_verdict(cache_dir, digest)


def origin_name(origin: Origin | None) -> str:
    """How records and messages name ``origin``."""
    if origin is None:
        return "an unnamed origin"
    if isinstance(origin, RegistryOrigin):
        return f"{origin.host}/{origin.repository}"
    return f"handle {origin.handle}"


def _wrong_dir(cache_dir: Path, digest: Digest) -> Path:
    return cache_dir / WRONG_DIR / algorithm(digest) / hex_part(digest)


def _wrong_path(cache_dir: Path, digest: Digest, origin: Origin | None, size: int | None) -> Path:
    # Hashed: an origin's name is the image's to choose, a file name is not.
    key = hashlib.sha256(f"{origin_name(origin)}\0{size}".encode()).hexdigest()
    return _wrong_dir(cache_dir, digest) / key


def write_wrong(
    cache_dir: Path, digest: Digest, origin: Origin | None, size: int, reason: str
) -> None:
    """Record that ``origin``, asked for ``size`` bytes of ``digest``, served wrong ones."""
    data = {"format": FORMAT, "origin": origin_name(origin), "size": size, "reason": reason}
    _write(_wrong_path(cache_dir, digest, origin, size), data)


def forget_wrong(cache_dir: Path, digest: Digest, origin: Origin | None, size: int) -> None:
    _wrong_path(cache_dir, digest, origin, size).unlink(missing_ok=True)


def wrong_reason(
    cache_dir: Path, digest: Digest, origin: Origin | None, size: int | None
) -> str | None:
    """Why ``origin`` is not read for ``digest`` at ``size``, or None. One stat when it is read."""
    try:
        data = json.loads(_wrong_path(cache_dir, digest, origin, size).read_text("utf-8"))
        return str(data["reason"]) or "it served wrong bytes"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "its record of wrong bytes cannot be read"


def disagreement(verdict: Verdict, size: int | None, diff_id: Digest | None) -> str | None:
    """How an image saying ``size`` and ``diff_id`` of the blob contradicts ``verdict``, or None."""
    what = f"layer {verdict.digest}"
    if verdict.state != COMPLETE:
        return f"{what}: {verdict.reason or 'its bytes are no layer'}"
    if size is not None and size != verdict.size:
        return f"{what}: its size is {verdict.size}, the image says {size}"
    # Computed as sha256: a diff_id in another algorithm is the store's to check.
    known = verdict.diff_id
    if diff_id is None or known is None or algorithm(diff_id) != algorithm(known):
        return None
    if diff_id != known:
        return f"{what}: its diff_id is {known}, the image says {diff_id}"
    return None


def refusal(
    cache_dir: Path,
    digest: Digest,
    origin: Origin | None,
    size: int | None,
    diff_id: Digest | None,
) -> tuple[str | None, bool]:
    """Why a mount reading ``digest`` through ``origin`` as ``size``/``diff_id`` is refused.

    Returns (the reason or None, whether that answer is final): a verdict on
    the bytes never changes, so a caller may keep a final answer; without
    one the caller asks again at its next read. A stat or two when nothing
    is known.
    """
    path = record_path(cache_dir, digest)
    verdict = read_verdict(cache_dir, digest) if path.exists() else None
    if verdict is not None:
        return disagreement(verdict, size, diff_id), True
    wrong = wrong_reason(cache_dir, digest, origin, size)
    return (None if wrong is None else f"layer {digest}: {wrong}"), False


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


def judge_cached(cache: DiskCache, digest: Digest, size: int) -> Verdict | str:
    """The verdict on the bytes of the ``size`` bytes of blob ``digest`` in ``cache``, or
    why they are not that blob. The background fetch's (``lazyfs.cache.background``).

    Blocking; the chunks pinned by the caller. Every size and digest here is
    computed from the chunks read.
    """
    what = f"layer {digest}"
    count = -(-size // cache.layout.chunk_size)
    keys = [ChunkKey(digest, index) for index in range(count)]
    lengths = [cache.length(key) or 0 for key in keys]
    hasher = hashlib.new(algorithm(digest))
    # Loaded by the first check, not at the daemon's start: the decompressors and tar parsers.
    from providers.diff_id import DiffIdChecker
    from providers.layer_limits import LayerLimits

    # Bounded by the size read, not the one the image says, so that a
    # claim cannot make good bytes look like a bomb.
    checker = DiffIdChecker(None, what, LayerLimits().bound(sum(lengths)))
    read = 0
    unpacks: str | None = None
    for key in keys:
        data = cache.files.read_chunk(key)
        if data is None:
            raise OSError(f"chunk {key.index} of {digest} vanished while pinned")
        read += len(data)
        hasher.update(data)
        if unpacks is None:
            try:
                checker.feed(data)
            except BadImage as error:
                unpacks = str(error)
    actual = Digest(f"{algorithm(digest)}:{hasher.hexdigest()}")
    if actual != digest:
        return str(DigestMismatch(what, expected=digest, actual=actual))
    diff_id = None
    if unpacks is None:
        try:
            diff_id = checker.actual()
        except BadImage as error:
            unpacks = str(error)
    if unpacks is not None:
        return Verdict(digest, QUARANTINED, read, None, unpacks)
    return Verdict(digest, COMPLETE, read, diff_id)
