"""A learned prefetch trace: which blob ranges an image's first run read, in order. No I/O
but ``load_trace``, ``find_trace`` and ``store_trace``.

A mount of an image started to run one command records the ranges of its
remote layers it reads until the workload settles (``lazyfs.blobs.trace_run``);
later mounts of the same image and command replay them as prefetch. A trace
is keyed by the image digest and a hash of the entrypoint, command and
working directory (``lazyfs.cache.remote.trace_key``): ``KEY`` spells
``sha256:<64 hex>@<32 hex>``.

It is only a hint. Every chunk it makes the daemon fetch is verified on the
way to a reader as any other (an eStargz chunkDigest, a published index's span
digest, the blob digest in the background), so a wrong trace costs extra
fetches, never wrong bytes. It is still bounded and checked whole, because it
is read from a cache directory and from registries: a file past
``MAX_TRACE_BYTES``, a range past ``MAX_RANGE``, more than ``MAX_READS``
reads or ``MAX_LAYERS`` layers, a digest or number that is not one, or
another key than the one asked for is refused (``TraceError``), and
``load_trace`` logs one line and returns None.

The encoding is JSON, versioned by its media type and ``TRACE_VERSION``::

    {"lazyfs_trace": 1, "key": KEY,
     "layers": [DIGEST, ...],
     "reads": [[LAYER_INDEX, OFFSET, LENGTH], ...],   in the order first read
     "cut": true}                                      only when it was (below)

A trace is ``cut`` when its mount ended before the workload settled (whole
for a job that ran to its end, but a run stopped early leaves only its
first reads), or when ``lazyfs run`` marked it so, having passed a signal
on (``lazyfs.cli_run_trace``). So a cut trace is provisional, as is one
with nothing of a mount's remote layers (not ``final``): the next mount
replays it and records again, and keeps its own instead when it goes
further (``replaces``; ``lazyfs.blobs.trace_run``). A reader that knows
nothing of the field reads a cut trace as any other.

Stored as ``CACHE_DIR/traces/<sha256 hex>@<command hash>.json``, written to a
temporary file in that directory, then renamed; those fetched from registries
the same way under ``STORE/traces/``, beside the ``.seen`` notes of
``lazyfs.publish.traces``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lazyfs.store.atomic import write_atomic
from providers import untrusted_json
from providers.digest import Digest, parse_digest
from providers.errors import BadImage
from providers.private_dir import private_dir
from providers.spans import union

log = logging.getLogger(__name__)

TRACE_VERSION = 1
# Of a trace blob pushed beside an image, and the artifactType of its manifest.
TRACE_MEDIA_TYPE = "application/vnd.lazyfs.trace.v1+json"
TRACE_ARTIFACT_TYPE = "application/vnd.lazyfs.trace.v1"
MAX_TRACE_BYTES = 4 << 20
MAX_READS = 65536
MAX_LAYERS = 256
MAX_RANGE = 64 << 20
TRACES_DIR = "traces"
# The blobs a mount reads remotely, by digest: their sizes, None when not known.
Sizes = Mapping[Digest, int | None]
# How many times the bytes of a trace that is not ``final`` another of its key (whole or
# cut) must read to replace it: a short job reads about the same each run, a stopped one less.
FURTHER = 1.25
_KEY = re.compile(r"^sha256:([0-9a-f]{64})@([0-9a-f]{32})$")


class TraceError(BadImage):
    """A trace that is not one this code reads: refused whole, never partly used."""


@dataclass(frozen=True)
class Read:
    """Bytes [offset, offset + length) of blob ``digest``."""

    digest: Digest
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Trace:
    """The reads of one image and command, in the order first read."""

    key: str
    reads: tuple[Read, ...]
    cut: bool = False  # recorded until its mount ended, not until the workload settled


def replaces(new: Trace, old: Trace, sizes: Sizes | None = None) -> bool:
    """Whether ``new`` is kept instead of ``old``, of one key: ``old`` is not ``final``, and
    ``new`` read something and ``FURTHER`` times ``old``'s bytes (its workload went
    further), whole or cut. Whole alone is not enough: a run stopped early whose shutdown
    was quiet settles its recording with the start of the workload in it; and each
    replacement is a quarter longer, so none goes back and forth between runs that read
    about the same.

    With ``sizes`` (the blobs a mount reads remotely), each counts only the
    bytes of those blobs, once each, up to each blob's end: ranges of layers
    local here, of windows blobs, repeated or past the end (a trace recorded
    where other layers were remote, or a hostile one) count for nothing."""
    before = counted(old, sizes)
    if not old.cut and before > 0:  # ``final``, counted once
        return False
    read = counted(new, sizes)
    return read > 0 and read >= before * FURTHER


def final(trace: Trace, sizes: Sizes | None = None) -> bool:
    """Whether no recording replaces ``trace``: it is whole, and has bytes of ``sizes``'s
    blobs (one recorded where this mount's remote layers were local has none)."""
    return not trace.cut and counted(trace, sizes) > 0


def counted(trace: Trace, sizes: Sizes | None = None) -> int:
    """The bytes ``trace`` reads: all, or as ``replaces`` counts them with ``sizes``."""
    if sizes is None:
        return sum(read.length for read in trace.reads)
    spans: dict[Digest, list[tuple[int, int]]] = {}
    for read in trace.reads:
        if read.digest in sizes:
            size = sizes[read.digest]
            end = read.end if size is None else min(read.end, size)
            spans.setdefault(read.digest, []).append((read.offset, end))
    return sum(end - start for each in spans.values() for start, end in union(each))


def check_key(key: str) -> str:
    """``key`` if it spells a trace key (then it is safe as a file name's part)."""
    if not _KEY.match(key):
        raise TraceError(f"not a trace key: {key[:100]!r}")
    return key


def key_image(key: str) -> Digest:
    """The image digest a trace key names."""
    return Digest(check_key(key).split("@", 1)[0])


def encode(trace: Trace) -> bytes:
    """The trace's bytes; TraceError when it is past the bounds (nobody could read it)."""
    check_key(trace.key)
    layers: dict[Digest, int] = {}
    reads = []
    for read in trace.reads:
        _check_range(read.offset, read.length)
        reads.append([layers.setdefault(read.digest, len(layers)), read.offset, read.length])
    if len(reads) > MAX_READS or len(layers) > MAX_LAYERS:
        raise TraceError(f"a trace of {len(reads)} reads of {len(layers)} layers is too big")
    body = {"lazyfs_trace": TRACE_VERSION, "key": trace.key, "layers": list(layers),
            "reads": reads}  # fmt: skip
    if trace.cut:
        body["cut"] = True
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_TRACE_BYTES:
        raise TraceError(f"a trace of {len(data)} bytes is past {MAX_TRACE_BYTES}")
    return data


def decode(data: bytes, key: str | None = None) -> Trace:
    """The trace ``data`` holds, checked whole (and against ``key`` when given); TraceError."""
    if len(data) > MAX_TRACE_BYTES:
        raise TraceError(f"a trace of {len(data)} bytes is past {MAX_TRACE_BYTES}")
    try:
        # A read is an array of some 10 bytes or more.
        body = untrusted_json.loads(data, per_container=6)
    except ValueError as error:
        raise TraceError(f"a trace that is not JSON: {error}") from None
    if not isinstance(body, dict) or body.get("lazyfs_trace") != TRACE_VERSION:
        raise TraceError(f"not a lazyfs trace of version {TRACE_VERSION}")
    found = body.get("key")
    if not isinstance(found, str):
        raise TraceError("a trace without its key")
    check_key(found)
    if key is not None and found != key:
        raise TraceError(f"a trace of {found}, not of {key}")
    layers, reads = body.get("layers"), body.get("reads")
    if not isinstance(layers, list) or not isinstance(reads, list):
        raise TraceError("a trace without its layers and reads")
    if len(layers) > MAX_LAYERS or len(reads) > MAX_READS:
        raise TraceError(f"a trace of {len(reads)} reads of {len(layers)} layers is too big")
    digests = []
    for text in layers:
        try:
            digests.append(parse_digest(text if isinstance(text, str) else ""))
        except BadImage:
            raise TraceError(f"a trace naming a layer {str(text)[:100]!r}") from None
    out = []
    for item in reads:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(type(n) is int for n in item)  # not bools, not floats
            or not 0 <= item[0] < len(digests)
        ):
            raise TraceError(f"a trace with a read {str(item)[:100]!r}")
        _check_range(item[1], item[2])
        out.append(Read(digests[item[0]], item[1], item[2]))
    cut = body.get("cut", False)
    if type(cut) is not bool:
        raise TraceError(f"a trace whose cut is {str(cut)[:100]!r}")
    return Trace(found, tuple(out), cut)


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or not 0 < length <= MAX_RANGE or offset > 1 << 48:
        raise TraceError(f"a trace with a read of {length} bytes at {offset}")


def trace_path(cache_dir: Path, key: str) -> Path:
    """Where the cache of ``cache_dir`` keeps the trace of ``key``."""
    image, command = _KEY.match(check_key(key)).groups()  # type: ignore[union-attr]
    return cache_dir / TRACES_DIR / f"{image}@{command}.json"


def load_trace(cache_dir: Path, key: str, *, level: int = logging.WARNING) -> Trace | None:
    """The trace of ``key`` kept in the cache; None when there is none, or (one line
    logged at ``level``) when it cannot be used: damaged, hostile, too big. Blocking."""
    path = trace_path(cache_dir, key)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_TRACE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.log(level, "trace %s ignored: %s", path, error)
        return None
    try:
        return decode(data, key)
    except TraceError as error:
        log.log(level, "trace %s ignored: %s", path, error)
        return None


def find_trace(
    cache_dir: Path,
    key: str,
    published: Path | None = None,
    sizes: Sizes | None = None,
    *,
    level: int = logging.WARNING,
) -> Trace | None:
    """The trace of ``key`` a mount replays: the one in ``cache_dir``, unless ``published``
    (where traces fetched from the image's registry are kept) has one that ``replaces`` it,
    counted on ``sizes``, the blobs the mount reads remotely (a mount records one that is
    not ``final`` again); None when neither has one,
    or (one line logged at ``level``) when ``key`` is not a trace key or a trace is
    unusable. Blocking."""
    try:
        trace = load_trace(cache_dir, key, level=level)
        if (trace is None or not final(trace, sizes)) and published is not None:
            found = load_trace(published, key, level=level)
            if found is not None and (trace is None or replaces(found, trace, sizes)):
                trace = found
    except TraceError as error:  # a key not of ``trace_key``'s making: nothing to trace by
        log.log(level, "no prefetch trace: %s", error)
        return None
    return trace


def store_trace(cache_dir: Path, trace: Trace) -> Path:
    """Keep ``trace`` in the cache, replacing any of its key: whole or not at all. Blocking."""
    path = trace_path(cache_dir, trace.key)
    private_dir(path.parent)
    # Not fsynced: a torn trace after a crash is refused when read, and only a hint.
    write_atomic(path, encode(trace), mode=0o600, durable=False)
    return path
