"""Holding a local eStargz layer's TOC index to the tar stream of its own blob.

An eStargz blob holds its layer twice: as a tar stream, which the copy,
bind and overlay backends apply and any scanner reads, and as the TOC its
author wrote beside it, from which ``lazyfs.index.estargz_index`` indexes
the layer while it is remote.  The TOC digest annotation ties the TOC to
the image, and ``lazyfs.index.stored`` ties it to the blob (it is the
blob's own TOC), but nothing ties the TOC's entries to the tar's: a TOC can
give a file mode 04755 and uid 0 that its tar header does not, point a
file at another file's chunk, or add an entry the tar lacks.  While the
layer is remote that is eStargz's model (stargz-snapshotter trusts the TOC
too).  Once the verified blob is in the store, every backend must give one
tree, so the TOC index becomes the layer's own only once ``hold`` found it
to agree with the tar:

- every entry of the TOC index equals the entry the layer scan
  (``lazyfs.index.build.scan_stream``) makes of the tar member at the same
  place in archive order (path, kind, mode, owner, size, link target,
  device, xattrs in any order, no sparse extents), but for eStargz's own
  entries, which the TOC view hides on purpose; neither has an entry more;
- mtimes agree to the second: a TOC has whole seconds (ctr-remote rounds
  the tar's), which is what the TOC view shows, a documented limit;
- every chunk of every file is that file's data in the tar: the chunk's
  gzip member starts a member of the blob, holds the chunk's bytes
  (``inner_offset + size`` within its length, ending by the chunk's
  ``end``), and its uncompressed start plus ``inner_offset`` is where the
  file's data starts in the tar plus ``chunk_offset``.  The chunks' digests
  are checked as they are read, as for a remote layer.

The check inflates the whole blob once, member by member (ISA-L), keeping
where each member a chunk starts at lies, and the entries: seconds for a
big layer, so only the process that adopts the layer makes it (``hold``,
through ``ensure_index(own_toc=True)``), never a start.  Its verdict is
kept in the layer's directory (``VERDICT_NAME``), naming the chunk table
it was about by its first line (TOC digest, blob size, rows); the TOC index
is taken, and kept at later starts, only with a verdict that it agrees.
Blocking.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lazyfs.index.model import IndexEntry, Kind
from lazyfs.store.atomic import write_atomic
from providers.errors import BadImage

if TYPE_CHECKING:
    from lazyfs.index.estargz_chunks import ChunkTable
    from providers.tar_stream import LayerLimits

# Beside a local layer's eStargz chunk table: whether its TOC agrees with the blob's tar.
VERDICT_NAME = "estargz-toc-verdict"
_READ = 1 << 20  # compressed bytes read at a time
_INFLATE = 1 << 20  # most bytes inflated at a time: a bomb of a member stays bounded
_NS = 1_000_000_000
# eStargz's own entries (``lazyfs.index.estargz.is_stargz_own``): shown by a tar's view
# only.  Named here too: that module loads the TOC parser, which this one has no use for.
_OWN_PATHS = frozenset(
    {("stargz.index.json",), (".prefetch.landmark",), (".no.prefetch.landmark",)}
)


@dataclass(frozen=True)
class Verdict:
    """Whether a TOC index agrees with its blob's tar; ``why`` names the first difference."""

    agrees: bool
    why: str = ""


def recorded(home: Path, table: Path) -> Verdict | None:
    """The verdict kept in the layer directory ``home`` about the chunk table ``table``.

    None when there is none about that very table (by its first line: a
    verdict about another TOC of the layer is none), or it does not parse.
    Cheap: two small reads.
    """
    try:
        with table.open(encoding="utf-8") as stream:
            head = stream.readline().rstrip("\n")
        said = json.loads((home / VERDICT_NAME).read_text(encoding="utf-8"))
        if said["table"] != head:
            return None
        # Agreeing only as written: a damaged file's "false" is no agreement.
        return Verdict(said["agrees"] is True, str(said["why"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def hold(
    home: Path,
    table: Path,
    blob: Path,
    entries: Sequence[IndexEntry],
    *,
    limits: LayerLimits | None = None,
) -> Verdict:
    """The verdict on the TOC index (``entries`` and the chunk table ``table``) of the
    verified blob ``blob``: the one kept in the layer directory ``home``, else worked out
    (``differences``: the blob inflated) and kept there.

    Raises OSError when the blob or table cannot be read or the verdict cannot
    be written, BadImage for a table that does not parse: the TOC is then
    not held, so not taken (``lazyfs.index.stored`` builds from the tar).
    """
    from lazyfs.index.estargz_chunks import loads as load_chunks

    found = recorded(home, table)
    if found is not None:
        return found
    text = table.read_text(encoding="utf-8")  # read once: the head names the rows compared
    try:
        chunks = load_chunks(text)
    except ValueError as error:
        raise BadImage(f"the chunk table {table}: {error}") from None
    why = differences(blob, entries, chunks, limits=limits)
    verdict = Verdict(why is None, why or "")
    said = {"table": text.partition("\n")[0], "agrees": verdict.agrees, "why": verdict.why}
    # Not durable: a verdict lost in a crash leaves the TOC untaken, never taken unheld.
    write_atomic(home / VERDICT_NAME, json.dumps(said).encode(), mode=0o600, durable=False)
    return verdict


def differences(
    blob: Path,
    entries: Sequence[IndexEntry],
    table: ChunkTable,
    *,
    limits: LayerLimits | None = None,
) -> str | None:
    """The first way the TOC index (``entries``, ``table``) differs from ``blob``'s tar; None.

    A tar the layer scan refuses (corrupt, hostile, past ``limits``) is a
    difference too: the TOC gave an index of it.  Raises OSError.
    """
    from lazyfs.index.build import scan_stream  # the tar parsers: not for a start
    from providers.tar_stream import CHUNK, LayerReader

    layer = str(table.digest)
    with blob.open("rb") as raw:
        # Spans kept of the members chunks start at only: a blob of millions of empty
        # members costs no more memory than its chunk table.
        members = _Members(raw, {row.offset for row in table.rows})
        stream = LayerReader(
            members,  # type: ignore[arg-type]  # read() is all it uses
            layer,
            limits=limits,
            compressed_size=os.fstat(raw.fileno()).st_size,
        )
        try:
            scanned = scan_stream(stream, layer=layer)
            while stream.read(CHUNK):  # the rest: the TOC's member, the footer
                pass
        except BadImage as error:  # UnsafeLayer is one
            return f"its tar is refused: {error}"
    linked = {tuple(e.target.split("/")) for e in scanned if e.kind is Kind.HARDLINK}
    tar = [e for e in scanned if not _hidden(e, linked)]
    return _entry_difference(entries, tar) or _chunk_difference(entries, tar, table, members.spans)


def _hidden(entry: IndexEntry, linked: set[tuple[str, ...]]) -> bool:
    """Whether the TOC index leaves ``entry`` out, as ``lazyfs.index.estargz_index`` does: an
    own name's plain file at the layer's root that no hardlink of the layer names."""
    return entry.kind is Kind.FILE and entry.path in _OWN_PATHS and entry.path not in linked


def _entry_difference(toc: Sequence[IndexEntry], tar: Sequence[IndexEntry]) -> str | None:
    """The first entry, in archive order, the TOC gives otherwise than the tar; None."""
    for mine, theirs in zip_longest(toc, tar):
        if mine is None:
            return f"the tar has {_name(theirs)!r}, which the TOC lacks"
        if theirs is None:
            return f"the TOC has {_name(mine)!r}, which the tar lacks"
        if mine.path != theirs.path:
            return f"the TOC has {_name(mine)!r} where the tar has {_name(theirs)!r}"
        pairs = zip(_comparable(mine, theirs), _comparable(theirs, theirs), strict=True)
        said = [f"{f} {b!r}, not {a!r}" for f, (a, b) in zip(_FIELDS, pairs, strict=True) if a != b]
        if said:
            return f"{_name(mine)!r}: its tar header says {'; '.join(said)[:300]}"
    return None


_FIELDS = ("path", "kind", "mode", "uid", "gid", "size", "mtime_ns", "target", "rdev", "xattrs",
           "extents")  # fmt: skip


def _comparable(entry: IndexEntry, tar: IndexEntry) -> tuple[object, ...]:
    """``entry``'s fields but where its data is (the TOC's is in data space), its xattrs
    in order, and its mtime taken as ``tar``'s when they are one second's (see above)."""
    mtime = entry.mtime_ns
    if mtime % _NS == 0 and abs(mtime - tar.mtime_ns) < _NS:
        mtime = tar.mtime_ns
    return (
        entry.path, entry.kind, entry.mode, entry.uid, entry.gid, entry.size, mtime,
        entry.target, entry.rdev, tuple(sorted(entry.xattrs)), entry.extents,
    )  # fmt: skip


def _chunk_difference(
    toc: Sequence[IndexEntry],
    tar: Sequence[IndexEntry],
    table: ChunkTable,
    spans: dict[int, tuple[int, int, int]],
) -> str | None:
    """The first chunk that is not its file's data in the tar; None.

    ``toc`` and ``tar`` agree entry by entry (``_entry_difference``).
    """
    used = 0
    for mine, theirs in zip(toc, tar, strict=True):
        if mine.kind is not Kind.FILE or not mine.size:
            continue
        end = mine.offset + mine.size
        at = 0  # the file's bytes covered so far: its chunks tile it, in order
        for number in table.covering(mine.offset, end):
            row = table.rows[number]
            if row.start + row.size <= mine.offset:
                continue  # a row of the file before, ending in the gap before this one
            used += 1
            span = spans.get(row.offset)
            where = f"{_name(mine)!r}: its chunk at {row.chunk_offset}"
            if (
                row.start - mine.offset != at
                or row.chunk_offset != at
                or row.start + row.size > end
            ):
                return f"{where} does not follow the one before"
            if span is None:
                return f"{where} names blob offset {row.offset}, where no gzip member starts"
            out_start, out_end, member_end = span
            if out_start + row.inner_offset + row.size > out_end or member_end > row.end:
                return f"{where} reaches past its gzip member"
            if out_start + row.inner_offset != theirs.offset + row.chunk_offset:
                return f"{where} is not the file's data in the tar"
            at += row.size
        if at != mine.size:
            return f"{_name(mine)!r}: its chunks hold {at} of its {mine.size} bytes"
    if used != len(table.rows):
        return f"the chunk table has {len(table.rows) - used} chunks of no file"
    return None


def _name(entry: IndexEntry) -> str:
    name = "/".join(entry.path)[:200]
    # A marker's path is the one it hides, or the directory it makes opaque.
    return f"{name} ({entry.kind.value})" if entry.kind in (Kind.WHITEOUT, Kind.OPAQUE) else name


class _Members:
    """The tar stream of a gzip blob, inflated member by member, noting where each lies.

    ``spans`` maps the blob offset where a member starts, of those in
    ``starts``, to where its bytes start and end in the stream and where it
    ends in the blob.  Raises
    zlib.error for bytes that do not inflate, EOFError for a blob that ends
    inside a member (``LayerReader`` makes both BadImage).
    """

    def __init__(self, raw: BinaryIO, starts: set[int]) -> None:
        from isal import isal_zlib  # as the layer scan inflates: ISA-L

        self._zlib = isal_zlib
        # isal's stubs declare its error class as an instance of Exception.
        self._error: type[Exception] = isal_zlib.error  # type: ignore[assignment]
        self._raw = raw
        self._inflater = isal_zlib.decompressobj(wbits=31)
        self._input = b""
        self._at = 0  # the blob offset of _input's first byte
        self._total = 0  # the stream's bytes inflated so far
        self._member: tuple[int, int] | None = None  # the open member's blob and stream starts
        self._out = bytearray()
        self._done = False
        self._starts = starts
        self.spans: dict[int, tuple[int, int, int]] = {}

    def read(self, size: int = -1) -> bytes:
        want = _INFLATE if size is None or size < 0 else size
        while len(self._out) < want and not self._done:
            self._step()
        data = bytes(self._out[:want])
        del self._out[:want]
        return data

    def _step(self) -> None:
        if not self._input:
            self._input = self._raw.read(_READ)
            if not self._input:
                if self._member is not None:
                    raise EOFError("the blob ends inside a gzip member")
                self._done = True
                return
        if self._member is None:
            self._member = (self._at, self._total)
        inflater = self._inflater
        try:
            out = inflater.decompress(self._input, _INFLATE)
        except self._error as error:
            raise zlib.error(str(error)) from None
        rest = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        self._at += len(self._input) - len(rest)
        self._input = rest
        self._total += len(out)
        self._out += out
        if inflater.eof:
            start, out_start = self._member
            if start in self._starts:
                self.spans[start] = (out_start, self._total, self._at)
            self._member = None
            self._inflater = self._zlib.decompressobj(wbits=31)
