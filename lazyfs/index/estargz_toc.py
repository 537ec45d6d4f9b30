"""The TOC of an eStargz layer (``stargz.index.json``), parsed and checked.

The TOC lists every tar entry of the layer except itself, in archive order,
with where each regular file's bytes lie: a file is one or more *chunks*,
each a gzip member of the blob (``offset``) or a part of one
(``innerOffset`` bytes into the member's stream), ``chunkSize`` bytes of the
file from ``chunkOffset``, with the ``chunkDigest`` of those bytes.  A file's
first chunk is in its ``reg`` entry; later ones are ``chunk`` entries of the
same name right after it.  Names keep the TOC's spelling (``bin/``,
``./x``); ``path`` is the same name normalized by ``providers.layer_rules``.

``parse_toc`` accepts the JSON only when every value has the type and range
the format gives it, and refuses with BadImage (UnsafeLayer for names):

- names that escape (``..``, absolute), that no filesystem holds, or empty;
- names, link targets and xattr names no tar header gives (``tar_text``);
- owners, devices, sizes and modes out of range; a bad ``modtime``;
- a non-empty file without offset or ``chunkDigest``, chunks that do not
  tile the file from 0 to its size, a ``chunk`` not after its file;
- chunks whose bytes overlap others in the blob, lie at or past the TOC, or
  are more than deflate can make of the bytes before the next member;
- more than ``TocLimits.max_entries`` entries or deep-nested JSON.

Each chunk carries ``end``: the next member start any chunk (or the TOC)
has, so ``[offset, end)`` is a range of the blob that holds the whole chunk.

Pure: no I/O; safe from any thread.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import enum
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from lazyfs.index.estargz_footer import MAX_DEFLATE_RATIO
from lazyfs.index.tar_text import is_tar_text
from providers import untrusted_json
from providers.digest import Digest, is_digest
from providers.errors import BadImage, bad_entry
from providers.layer_entry import MAX_ID, MAX_MAJOR, MAX_MINOR, clamp_mtime
from providers.layer_limits import MAX_ENTRY_SIZE, MAX_XATTR_VALUE_BYTES
from providers.layer_rules import RelPath, check_symlink_target, hardlink_target, normalize_name

# The bounds a tar reader keeps too.
MAX_FILE_SIZE = MAX_ENTRY_SIZE
MAX_XATTRS = 1024
MAX_XATTR_VALUE = MAX_XATTR_VALUE_BYTES
_MAX_MODE = (1 << 32) - 1
_NS = 1_000_000_000
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d\d):(\d\d))"
)


class EntryType(enum.Enum):
    DIR = "dir"
    REG = "reg"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


_CHUNK = "chunk"
_TYPES = {t.value: t for t in EntryType}


@dataclass(frozen=True, slots=True)
class TocLimits:
    """What a TOC may hold: its JSON in bytes, its entries, one chunk in bytes."""

    max_json_bytes: int = 128 << 20
    max_entries: int = 1_000_000
    max_chunk_bytes: int = 64 << 20


class Chunk(NamedTuple):
    """Bytes ``[chunk_offset, chunk_offset + chunk_size)`` of a file.

    They are the bytes ``[inner_offset, inner_offset + chunk_size)`` of the
    stream of the gzip member starting at ``offset`` in the blob, which ends
    at ``end`` at the latest; their digest is ``chunk_digest``.
    """

    offset: int
    chunk_offset: int
    chunk_size: int
    chunk_digest: Digest
    inner_offset: int = 0
    end: int = 0


class TocEntry(NamedTuple):
    """One tar entry of the layer as the TOC gives it.

    ``mode`` holds the permission bits (0o7777) only: the kind is ``type``.
    ``mtime_ns`` is 0 when the TOC has no ``modtime``.  ``link_name`` is the
    target of a symlink or hardlink; ``devices`` (major, minor) of a device.
    ``xattrs`` are decoded, in TOC order.  ``digest`` is the whole file's
    digest when the TOC gives one; ``chunks`` tile a regular file in order.
    """

    name: str
    path: RelPath
    type: EntryType
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    link_name: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    devices: tuple[int, int] = (0, 0)
    digest: Digest | None = None
    chunks: tuple[Chunk, ...] = ()


# Chunk and TocEntry are NamedTuples, immutable as the frozen dataclasses
# elsewhere are, because a mount makes one of each per TOC entry and chunk
# on its way to serving: a frozen dataclass's __init__ costs six times as
# much (2.8 against 0.45 us for TocEntry's 13 fields).


@dataclass(frozen=True, slots=True)
class Toc:
    """The entries of a TOC in archive order, and where the TOC member starts."""

    entries: tuple[TocEntry, ...]
    toc_offset: int


class _Fields:
    """Typed access to one entry's JSON object; every refusal names the entry."""

    def __init__(self, raw: Mapping[str, Any], layer: str, name: str) -> None:
        self.raw, self.layer, self.name = raw, layer, name

    def bad(self, reason: str) -> BadImage:
        return bad_entry(self.layer, self.name, f"in the TOC {reason}")

    def integer(self, key: str, high: int) -> int:
        value = self.raw.get(key, 0)
        # bool is an int to Python, never to the format.
        if type(value) is not int or not 0 <= value <= high:
            raise self.bad(f"has {key} {value!r}, not an integer in 0..{high}")
        return value

    def text(self, key: str) -> str:
        """The string at ``key``, refused unless a tar header could give it."""
        value = self.raw.get(key, "")
        if not isinstance(value, str):
            raise self.bad(f"has a {key} that is not a string")
        if not is_tar_text(value):
            raise self.bad(f"has a {key} that no tar header gives")
        return value

    def digest(self, key: str) -> Digest | None:
        text = self.text(key)
        if not text:
            return None
        if not is_digest(text):
            raise self.bad(f"has the {key} {text!r}, not a digest")
        return Digest(text)


def _mtime_ns(fields: _Fields, seen: dict[str, int]) -> int:
    """The entry's modtime; ``seen`` holds the texts already read (most entries share a few)."""
    text = fields.text("modtime")
    if not text:
        return 0
    known = seen.get(text)
    if known is not None:
        return known
    seen[text] = found = _read_mtime(fields, text)
    return found


def _read_mtime(fields: _Fields, text: str) -> int:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise fields.bad(f"has the modtime {text!r}, not RFC 3339")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign, off_hours, off_minutes = match.groups()[6:]
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise fields.bad(f"has the modtime {text!r}, not a time")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if sign:
        offset = int(off_hours) * 3600 + int(off_minutes) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int((fraction or "0").ljust(9, "0"))
    return clamp_mtime(seconds * _NS + nanos)


def _xattrs(fields: _Fields) -> tuple[tuple[str, bytes], ...]:
    raw = fields.raw.get("xattrs") or {}
    if not isinstance(raw, dict) or len(raw) > MAX_XATTRS:
        raise fields.bad(f"has xattrs that are not a map of at most {MAX_XATTRS}")
    decoded = []
    for key, value in raw.items():
        # Go writes []byte values as base64: 4 characters per 3 bytes.
        if not key or not isinstance(value, str) or len(value) > MAX_XATTR_VALUE * 2:
            raise fields.bad(f"has the xattr {key!r} with a bad value")
        if not is_tar_text(key):
            raise fields.bad(f"has the xattr name {key!r}, which no tar header gives")
        try:
            data = base64.b64decode(value, validate=True)
        except binascii.Error as error:
            raise fields.bad(f"has the xattr {key!r}, not base64") from error
        if len(data) > MAX_XATTR_VALUE:
            raise fields.bad(f"has the xattr {key!r} over {MAX_XATTR_VALUE} bytes")
        decoded.append((key, data))
    return tuple(decoded)


# A chunk until ``_place_chunks`` knows its end and makes it a Chunk: (offset,
# chunk_offset, chunk_size, chunk_digest, inner_offset).
_Pending = tuple[int, int, int, Digest, int]


def _chunk(fields: _Fields, chunk_offset: int, remaining: int, toc_offset: int) -> _Pending:
    """The chunk at ``chunk_offset`` of a file with ``remaining`` bytes left from there."""
    if "offset" not in fields.raw:
        raise fields.bad(f"has no offset for its bytes from {chunk_offset}")
    offset = fields.integer("offset", toc_offset - 1)
    digest = fields.digest("chunkDigest")
    if digest is None:
        raise fields.bad(f"has no chunkDigest for its bytes from {chunk_offset}")
    # chunkSize 0 (or absent) is the file's last chunk: the rest of it.
    size = fields.integer("chunkSize", remaining) or remaining
    return offset, chunk_offset, size, digest, fields.integer("innerOffset", MAX_FILE_SIZE)


def _entry(fields: _Fields, kind: EntryType, path: RelPath, mtimes: dict[str, int]) -> TocEntry:
    if not path and kind is not EntryType.DIR:
        raise fields.bad("is the root but not a directory")
    link = fields.text("linkName")
    if kind is EntryType.SYMLINK:
        check_symlink_target(link, layer=fields.layer, entry=fields.name)
    elif kind is EntryType.HARDLINK:
        hardlink_target(link, layer=fields.layer, entry=fields.name)
    devices = (0, 0)
    if kind in (EntryType.CHAR, EntryType.BLOCK):
        devices = (fields.integer("devMajor", MAX_MAJOR), fields.integer("devMinor", MAX_MINOR))
    get = fields.raw.get
    size = get("size", 0) if kind is EntryType.REG else 0
    mode, uid, gid = get("mode", 0), get("uid", 0), get("gid", 0)
    # bool is an int to Python, never to the format: hence type(), not isinstance().
    if not (
        type(size) is type(mode) is type(uid) is type(gid) is int
        and 0 <= size <= MAX_FILE_SIZE
        and 0 <= mode <= _MAX_MODE
        and 0 <= uid <= MAX_ID
        and 0 <= gid <= MAX_ID
    ):
        # Refused for the first that is wrong, in this order.
        if kind is EntryType.REG:
            fields.integer("size", MAX_FILE_SIZE)
        for key, high in (("mode", _MAX_MODE), ("uid", MAX_ID), ("gid", MAX_ID)):
            fields.integer(key, high)
        # Unreachable: the checks above test what the combined one does.
        raise AssertionError(f"{fields.name!r}: the integer checks disagree")
    mode &= 0o7777
    mtime_ns = _mtime_ns(fields, mtimes)
    xattrs = _xattrs(fields) if fields.raw.get("xattrs") else ()
    digest = fields.digest("digest") if kind is EntryType.REG else None
    return TocEntry(
        fields.name, path, kind, size, mode, uid, gid, mtime_ns, link, xattrs, devices, digest
    )


def _load(data: bytes, layer: str, limits: TocLimits) -> list[Any]:
    if len(data) > limits.max_json_bytes:
        raise BadImage(f"layer {layer}: its TOC is over {limits.max_json_bytes} bytes")
    try:
        doc = untrusted_json.loads(data)
    except ValueError as error:
        raise BadImage(f"layer {layer}: its TOC is not JSON: {error}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or type(doc["version"]) is not int:
        raise BadImage(f"layer {layer}: its TOC is not a version 1 eStargz TOC")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise BadImage(f"layer {layer}: its TOC has no list of entries")
    if len(entries) > limits.max_entries:
        raise BadImage(f"layer {layer}: its TOC has over {limits.max_entries} entries")
    return entries


class _Reader:
    """Folds the TOC's entries into TocEntry values, a file's chunks into its entry.

    Each entry and chunk is made once: a file's chunks wait in ``chunks``
    (by the entry's index) until ``_place_chunks`` knows where each ends.
    """

    def __init__(self, layer: str, toc_offset: int) -> None:
        self.layer, self.toc_offset = layer, toc_offset
        self.entries: list[TocEntry] = []
        self.chunks: dict[int, list[_Pending]] = {}  # by entry index: regular files' chunks
        self.pending: list[_Pending] = []  # of the last entry, while it is a regular file
        self.mtimes: dict[str, int] = {}

    def add(self, raw: object) -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadImage(f"layer {self.layer}: its TOC has an entry that is no named object")
        fields = _Fields(raw, self.layer, raw["name"])
        kind = raw.get("type")
        if kind == _CHUNK:
            self._add_chunk(fields)
            return
        self.close()
        if not isinstance(kind, str) or kind not in _TYPES:
            raise fields.bad(f"has the type {kind!r}")
        path = normalize_name(fields.text("name"), layer=self.layer)
        entry = _entry(fields, _TYPES[kind], path, self.mtimes)
        self.entries.append(entry)
        if entry.type is EntryType.REG and entry.size:
            self.pending.append(_chunk(fields, 0, entry.size, self.toc_offset))

    def _add_chunk(self, fields: _Fields) -> None:
        if not self.pending or self.entries[-1].name != fields.name:
            raise fields.bad("has a chunk that follows no non-empty file of its name")
        done = sum(self.pending[-1][1:3])  # chunk_offset + chunk_size
        if fields.integer("chunkOffset", MAX_FILE_SIZE) != done:
            raise fields.bad(f"has a chunk that does not start at {done}")
        remaining = self.entries[-1].size - done
        if remaining == 0:
            raise fields.bad("has a chunk past the end of its file")
        self.pending.append(_chunk(fields, done, remaining, self.toc_offset))

    def close(self) -> None:
        """Hold the pending chunks for their file, once they cover it."""
        if not self.pending:
            return
        file = self.entries[-1]
        covered = sum(self.pending[-1][1:3])
        if covered != file.size:
            why = f"in the TOC has chunks for {covered} of {file.size} bytes"
            raise bad_entry(self.layer, file.name, why)
        self.chunks[len(self.entries) - 1] = self.pending
        self.pending = []


def _with_chunks(entry: TocEntry, chunks: tuple[Chunk, ...]) -> TocEntry:
    """``entry`` with ``chunks`` (its last field): ``entry._replace``, without its cost."""
    return TocEntry(*entry[:-1], chunks)


def _place_chunks(
    entries: list[TocEntry],
    chunks: dict[int, list[_Pending]],
    toc_offset: int,
    layer: str,
    limits: TocLimits,
) -> None:
    """Give every chunk its ``end`` and its file; refuse overlaps and impossible sizes."""
    starts = sorted({c[0] for found in chunks.values() for c in found} | {toc_offset})
    following = dict(itertools.pairwise(starts))
    # Per member, the spans of its inflated stream that chunks claim.
    claims: dict[int, list[tuple[int, int, str]]] = {}
    for index, found in chunks.items():
        entry = entries[index]
        placed = []
        for offset, at, size, digest, inner in found:
            end = following[offset]
            need = inner + size
            room = end - offset
            if need > limits.max_chunk_bytes or need > room * MAX_DEFLATE_RATIO:
                why = f"in the TOC needs {need} bytes from {room} at {offset}"
                raise bad_entry(layer, entry.name, why)
            claims.setdefault(offset, []).append((inner, need, entry.name))
            placed.append(Chunk(offset, at, size, digest, inner, end))
        entries[index] = _with_chunks(entry, tuple(placed))
    for offset, spans in claims.items():
        spans.sort()
        for (_, claimed, _), (start, _, name) in itertools.pairwise(spans):
            if start < claimed:
                raise bad_entry(layer, name, f"in the TOC shares bytes with another at {offset}")


def parse_toc(data: bytes, *, toc_offset: int, layer: str, limits: TocLimits | None = None) -> Toc:
    """The TOC whose JSON is ``data``, of a blob whose TOC member starts at ``toc_offset``.

    ``layer`` names the layer in errors.  Raises BadImage (or its subclass
    UnsafeLayer) for anything the module docstring refuses.
    """
    limits = limits or TocLimits()
    reader = _Reader(layer, toc_offset)
    for raw in _load(data, layer, limits):
        reader.add(raw)
    reader.close()
    _place_chunks(reader.entries, reader.chunks, toc_offset, layer, limits)
    return Toc(tuple(reader.entries), toc_offset)
