"""Holding a published index's file entries to the tar headers in the layer's own bytes.

Span digests prove that the compressed bytes a published index points into
are the registry's, not that the index's entries describe them: a
self-consistent index can point a file at another file's data, or give it
mode 04755 and uid 0.  So before the data of a regular file is served, the
tar headers that precede that data in the verified, inflated stream are
parsed, and the entry the layer scan (``lazyfs.index.build.scan_stream``)
makes of them must equal the published one: name, kind, size, mode,
uid/gid, mtime, xattrs, link target and where the data is.  A difference
is EIO with one logged reason, per entry.

Where the headers start: after the data of the previous file (in stream
order) of the index, rounded up to a tar block, or at 0 for the first;
the members between (directories, links, PAX headers) are parsed on the
way, so only header blocks are read.  This binds each file's data and
metadata to a tar header in the bytes, but not to the layer's own members:
the walk starts where the index says, and a forged index that starts it
inside a tar archive stored as a file of the layer passes with that
archive's members (only a walk from 0 would prove the boundary, which
would fetch most of the layer before its last file).  Nor can it prove an
entry that has no data (a directory, a symlink, an empty file) or
checkpoint windows, which is why published indexes are read only when
trusted (``--trust_published_indexes``).

Blocking and thread-safe; each entry is checked once per ``EntryCheck``.
"""

from __future__ import annotations

import bisect
import errno
import io
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from lazyfs.index.model import IndexEntry, Kind, index_entry
from providers.errors import LazyfsError
from providers.layer_entry import EntryKind, classify_member

log = logging.getLogger(__name__)
BLOCK = 512
# Reads while walking headers: one header block and a little more.
_HEADER_READ = 4 * BLOCK


class _Loaded(NamedTuple):
    """The layer's file entries by data offset, where each starts and ends, and why the
    index is refused whole (None when it is not)."""

    files: list[IndexEntry]
    starts: list[int]
    ends: list[int]
    overlap: str | None


class EntryCheck:
    """Checks the file entries of one layer's published index against its tar stream.

    ``read(offset, length)`` gives verified bytes of the inflated stream;
    ``entries()`` the published index's entries (loaded on the first check).
    """

    def __init__(
        self,
        layer: str,
        read: Callable[[int, int], bytes],
        entries: Callable[[], Sequence[IndexEntry]],
    ) -> None:
        self.layer = layer
        self._read = read
        self._entries = entries
        self._lock = threading.Lock()
        # Published whole, in one assignment: readers look without the lock.
        self._loaded: _Loaded | None = None
        self._verdicts: dict[int, str | None] = {}  # data offset -> None (right) or why not

    def check(self, offset: int, length: int) -> None:
        """OSError(EIO) unless every file whose data ``[offset, offset + length)`` reaches
        matches its headers (a read may reach several files: a reader's own chunks)."""
        files, starts, _, overlap = self._load()
        if overlap is not None:
            raise OSError(errno.EIO, f"layer {self.layer}: published index refused: {overlap}")
        number = max(0, bisect.bisect_right(starts, offset) - 1)
        while number < len(files) and files[number].offset < offset + length:
            entry = files[number]
            if entry.offset + _stored(entry) > offset:
                self._check_one(files, number)
            number += 1

    def extents(self) -> tuple[list[int], list[int]]:
        """Where each file's data starts and ends in the stream, by start; none for an index
        refused (files sharing data).  Loads the entries, as a check does."""
        _, starts, ends, overlap = self._load()
        if overlap is not None:
            return [], []
        return starts, ends

    def refused(self) -> bool:
        """Whether the index is refused whole (files sharing data); loads the entries."""
        return self._load().overlap is not None

    def _check_one(self, files: list[IndexEntry], number: int) -> None:
        entry = files[number]
        with self._lock:
            known = entry.offset in self._verdicts
            why = self._verdicts.get(entry.offset)
        if not known:
            start = _data_end(files[number - 1]) if number else 0
            why = self._compare(entry, start)
            with self._lock:
                self._verdicts[entry.offset] = why
            if why is not None:
                log.error("layer %s: published index refused for %s", self.layer, why)
        if why is not None:
            raise OSError(errno.EIO, f"layer {self.layer}: published index refused for {why}")

    def _load(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            files = sorted(
                (e for e in self._entries() if e.kind is Kind.FILE and _stored(e)),
                key=lambda e: e.offset,
            )
            # A scan gives each file data of its own: a read maps to one entry only.
            overlap = next(
                (f"{'/'.join(b.path)[:200]!r} shares the data of {'/'.join(a.path)[:200]!r}"
                 for a, b in itertools.pairwise(files) if b.offset < a.offset + _stored(a)),
                None,
            )  # fmt: skip
            if overlap is not None:
                log.error("layer %s: published index refused: %s", self.layer, overlap)
            starts = [e.offset for e in files]
            ends = [e.offset + _stored(e) for e in files]
            loaded = self._loaded = _Loaded(files, starts, ends, overlap)
        return loaded

    def _compare(self, entry: IndexEntry, start: int) -> str | None:
        """None when the member whose data is at ``entry.offset`` gives ``entry``, else why not."""
        import tarfile  # loaded only when a file is checked: see _member_entry

        name = "/".join(entry.path)[:200]
        try:
            found = _member_entry(self.layer, self._read, start, entry.offset)
        except (tarfile.TarError, EOFError, LazyfsError, ValueError) as error:
            return f"{name!r}: no tar member before its data ({error})"
        if found is None:
            return f"{name!r}: no tar member's data starts at {entry.offset}"
        if found != entry:
            return f"{name!r}: its tar header says {_differences(entry, found)}"
        return None


def _member_entry(
    layer: str, read: Callable[[int, int], bytes], start: int, data: int
) -> IndexEntry | None:
    """The entry the scan makes of the member whose data is at ``data``, parsed from ``start``."""
    # Here, not at the top: a mount of eStargz layers loads this module (through
    # lazyfs.blobs.gzip_remote) and has no use for the tar parsers.
    import tarfile

    from providers.tar_stream import CheckedTarInfo, file_layout

    stream = _StreamAt(read, start)
    archive = tarfile.open(fileobj=stream, mode="r:", tarinfo=CheckedTarInfo)  # noqa: SIM115
    while (member := archive.next()) is not None:
        archive.members.clear()  # type: ignore[attr-defined]
        if member.offset_data > data:
            return None
        classified = classify_member(member, layer=layer)
        if classified.kind is EntryKind.FILE and member.offset_data == data:
            return index_entry(classified, layout=file_layout(member, layer=layer))
    return None


def _stored(entry: IndexEntry) -> int:
    return entry.size if entry.extents is None else sum(e[1] for e in entry.extents)


def _data_end(entry: IndexEntry) -> int:
    end = entry.offset + _stored(entry)
    return -(-end // BLOCK) * BLOCK


def _differences(want: IndexEntry, got: IndexEntry) -> str:
    fields = ("path", "kind", "mode", "uid", "gid", "size", "mtime_ns", "target", "xattrs")
    said = [f"{f} {getattr(got, f)!r}, not {getattr(want, f)!r}" for f in fields
            if getattr(got, f) != getattr(want, f)]  # fmt: skip
    return "; ".join(said)[:300] or "other data extents"


class _StreamAt(io.RawIOBase):
    """The inflated stream from ``start`` on, as tarfile reads it: absolute ``tell``."""

    def __init__(self, read: Callable[[int, int], bytes], start: int) -> None:
        super().__init__()
        self._read = read
        self.position = start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.position
        elif whence != io.SEEK_SET:
            raise ValueError("only SEEK_SET and SEEK_CUR")
        self.position = offset
        return offset

    def tell(self) -> int:
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        got = self._read(self.position, _HEADER_READ if size is None or size < 0 else size)
        self.position += len(got)
        return got

    def readinto(self, buffer: object) -> int:
        view = memoryview(buffer)  # type: ignore[arg-type]
        got = self.read(len(view))
        view[: len(got)] = got
        return len(got)
