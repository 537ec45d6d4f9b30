"""Layer indexes kept in the store: read back, checked, built once per layer.

``<layers_dir>/<hex>/`` holds a layer's ``index.json`` and what its format
(``lazyfs.index.formats``) keeps beside it: the zstd copy ``tar``, the gzip
checkpoints ``gzip-index``, the eStargz chunk table ``estargz-chunks``, or
nothing for a plain tar layer.

``ensure_index`` builds and stores the index once per layer digest, with
what it points into: under an flock, each file written to a scratch
directory and renamed into place, the index last, so a present index.json
implies its tar copy or checkpoint file is complete (each is fsynced before
its rename: ``lazyfs.store.atomic``).  It reads them back on every later
call.  ``lazyfs.index.stored_remote.ensure_remote_index`` does the same
for an eStargz layer whose blob is not here, from its footer and TOC read
through a ``BlobSource``, and keeps it by layer digest and TOC digest
(``lazyfs.index.estargz_store``).
``load_index`` and ``check_data_present`` are what a mount process
serving stored indexes needs: they read, never build.

A layer's index keeps its format once stored: merged trees kept for an
image (``lazyfs.tree.kept``) hold the offsets its index gave, which differ
between formats (an eStargz index gives data-space offsets, a gzip one tar
offsets).  So ``ensure_index`` keeps a stored eStargz index (its chunks read
from the local blob as well as from a registry), and ``ensure_remote_index``
leaves an index of another format alone.  Kept trees name the format of
each layer's index too, so one that changes anyway is merged again.

An eStargz index was built from a TOC a registry served, checked against the
TOC digest its descriptor gave, never against the layer digest: any image
can name any layer digest with its own TOC.  So ``ensure_index``, which has
the verified blob, keeps a stored eStargz index only when it was built from
that blob's own TOC and size; any other is built again from the blob, in the
blob's format.  A blob that arrives whole after its layer was read remotely
(background fetch) takes the remote index built from its own TOC, checked so,
as its own: a copy of two files, where a build would inflate the whole blob,
and the offsets the mount's kept tree already holds.  Only the adopting
process takes it so, once its entries are held to the blob's tar
(``lazyfs.index.estargz_agree``), and a start keeps it only with that
verdict: any other is built again from the blob.  Blocking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lazyfs.index.estargz_footer import SUGGESTED_TAIL_SIZE
from lazyfs.index.formats import ESTARGZ, LayerFormat, build_index, format_named
from lazyfs.index.model import CHUNKS_NAME, INDEX_NAME, LayerData, LayerIndex, dumps, loads
from lazyfs.index.published import is_published
from lazyfs.store.atomic import publish, write_atomic
from providers.digest import Digest, algorithm, digest_bytes, hex_part
from providers.errors import BadImage
from providers.fslock import exclusive_lock
from providers.locked_temps import locked_scratch
from providers.private_dir import private_dir, private_file

if TYPE_CHECKING:
    from lazyfs.index.estargz_chunks import ChunkTable
    from providers.tar_stream import LayerLimits

# Beside a local layer's eStargz chunk table: it was checked to be the blob's own TOC's.
OWN_TOC_STAMP = "estargz-own-toc"
log = logging.getLogger(__name__)


# The eStargz TOC and chunk table code (the TOC parser above all) is loaded
# on first use, through these three: a mount of plain layers reads neither,
# and should not pay for importing them at every start.
def toc_digest(annotations: Mapping[str, str]) -> Digest | None:
    """``lazyfs.index.estargz.toc_digest``."""
    from lazyfs.index.estargz import toc_digest as digest_of

    return digest_of(annotations)


def source_of(head: str) -> tuple[Digest, int]:
    """``lazyfs.index.estargz_chunks.source_of``."""
    from lazyfs.index.estargz_chunks import source_of as parse

    return parse(head)


def dump_chunks(table: ChunkTable) -> str:
    """``lazyfs.index.estargz_chunks.dumps``."""
    from lazyfs.index.estargz_chunks import dumps

    return dumps(table)


def index_path(layers_dir: Path, digest: Digest) -> Path:
    return layers_dir / hex_part(digest) / INDEX_NAME


def load_index(layers_dir: Path, digest: Digest, *, entries: bool = True) -> LayerIndex | None:
    """The stored index of ``digest``; None if there is none or it is stale or damaged.

    ``entries=False``: its header only (no entries), read from the first line.
    """
    try:
        with index_path(layers_dir, digest).open(encoding="utf-8") as stream:
            text = stream.read() if entries else stream.readline()
        index = loads(text, entries=entries)
    except (OSError, ValueError):
        return None
    return index if index.digest == digest else None


def ensure_index(
    layers_dir: Path,
    tmp_dir: Path,
    digest: Digest,
    blob: Path,
    *,
    entries: bool = True,
    limits: LayerLimits | None = None,
    own_toc: bool = False,
) -> LayerIndex:
    """The index of the verified layer blob ``blob``, built and stored if missing.

    Rebuilt too when what it points into (``check_data_present``) is gone
    or damaged.  The files its format keeps (a zstd copy, gzip checkpoints)
    are renamed into place before the index that promises them; what an
    older index format kept there and this one does not need is removed
    (``_drop_unused``).  With ``entries=False`` a stored index is checked
    and returned by its header alone (no entries): what a caller that only
    makes sure the index is there needs.  Raises BadImage for a corrupt
    layer or one that unpacks past ``limits`` (a stored index was built
    within the limits of its day), UnsafeLayer for a hostile one; nothing
    is stored then.  A stored eStargz index built from ``blob``'s own TOC
    is kept, another is replaced (see the module docstring): read a kept
    one through a ``BlobSource`` (the store's own will do).  ``own_toc``: the
    index a remote read took from the blob's own TOC is held to the blob's tar
    (``estargz_agree``) and taken if it agrees; for the adopting process only.
    """
    found = _usable(layers_dir, blob, load_index(layers_dir, digest, entries=entries))
    if found is not None:
        return found
    home = layers_dir / hex_part(digest)
    private_dir(home)
    with exclusive_lock(home / "lock"):
        found = _usable(layers_dir, blob, load_index(layers_dir, digest), say=True)
        if found is not None:  # another process built it while we waited
            return found
        with locked_scratch(tmp_dir) as scratch:  # flocked: no cleaner takes it meanwhile
            index = _own_remote_index(home, blob, digest, scratch, limits) if own_toc else None
            own = index is not None
            if index is None:
                index = build_index(digest, blob, scratch, limits=limits)
            store_files(home, scratch, index)
            if own:
                _stamp(home / CHUNKS_NAME)  # checked by _own_remote_index
    return index


def index_source(layers_dir: Path, digest: Digest) -> str:
    """What the stored index of ``digest`` was built from, as text; "" when there is none.

    Its format, and for an eStargz index the TOC digest its chunk table
    names: two indexes of one layer digest give the same offsets only when
    these are equal (an eStargz index gives data-space offsets, another
    tar offsets).  What a kept merged tree is checked against
    (``lazyfs.tree.kept``).  Cheap: two first lines read.
    """
    index = load_index(layers_dir, digest, entries=False)
    if index is None:
        return ""
    if is_published(layers_dir, digest):
        # Fetched from a registry (lazyfs.index.published): not what this blob gives here.
        return f"{index.compression} published {layers_dir.name}"
    if index.compression != ESTARGZ.name:
        return index.compression
    try:
        data = layer_data(layers_dir, Path(), index)
        with data.path.open(encoding="utf-8") as stream:
            toc, _ = source_of(stream.readline())
    except (BadImage, OSError, ValueError):
        return index.compression  # no tree made with a readable table matches it
    return f"{index.compression} {toc}"


def store_files(home: Path, scratch: Path, index: LayerIndex) -> None:
    """Rename the files of ``index``'s format from ``scratch`` into ``home``, then the index."""
    kind = layer_format(index)
    for name in kind.stored_files:
        # The directory is synced once, with the index renamed into it last.
        publish(scratch / name, home / name, sync_dir=False)
    for name in kind.obsolete_files:
        _drop_unused(home / name)
    write_atomic(home / INDEX_NAME, dumps(index).encode(), mode=0o600, temp_dir=scratch)


def load_chunk_table(layers_dir: Path, index: LayerIndex) -> ChunkTable:
    """The chunk table of the stored eStargz index ``index`` (its prefetch span, say).

    BadImage when it is missing or damaged.
    """
    from lazyfs.index.estargz_chunks import loads as load_chunks

    data = check_data_present(layers_dir, Path(), index)
    try:
        table = load_chunks(data.path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadImage(f"layer {index.digest}: its chunk table {data.path}: {error}") from None
    if table.digest != index.digest:
        raise BadImage(f"layer {index.digest}: its chunk table {data.path} is another layer's")
    return table


def _drop_unused(path: Path) -> None:
    """Remove ``path``, a file an older index format kept, unless a mount process still names it.

    Format 1's mount processes were started with ``--layer DIGEST=<the tar
    copy of a gzip layer>`` and open it on their first read of the layer:
    removing it under one of them would turn its reads into EIO.  Such a
    file stays until a rebuild finds it unused.
    """
    if not path.exists():
        return
    named = b"=" + os.fsencode(path) + b"\0"
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if named in (process / "cmdline").read_bytes():
                return
        except OSError:
            continue  # gone meanwhile, or not ours to read
    path.unlink(missing_ok=True)


def _usable(
    layers_dir: Path, blob: Path, index: LayerIndex | None, *, say: bool = False
) -> LayerIndex | None:
    """``index``, unless what it points into went missing or changed size.

    Or an eStargz index not built from ``blob``'s own TOC, or with no verdict
    that it agrees with the tar (one that differs logged with ``say``).
    """
    if index is None:
        return None
    try:
        data = check_data_present(layers_dir, blob, index)
    except BadImage:
        return None  # built again, its files first
    if index.compression == ESTARGZ.name:
        from lazyfs.index.estargz_agree import recorded  # two small reads

        verdict = recorded(data.path.parent, data.path)
        if verdict is not None and not verdict.agrees and say:
            log.error("layer %s: its eStargz TOC differs from its tar (%s): indexed from"
                      " the tar", index.digest, verdict.why)  # fmt: skip
        if verdict is None or not verdict.agrees or not _checked_own(data.path, blob, index):
            return None  # built again from the verified blob, in its own format
    return index


def _checked_own(table: Path, blob: Path, index: LayerIndex) -> bool:
    """``_built_from``, skipped once it held for this very table (the stamp beside it says so).

    The stamp is the table's first line (TOC digest, blob size, rows),
    written once the blob's own TOC was found to be that one: a stored blob
    never changes, so the check would give the same answer at every start,
    for the price of reading and hashing the TOC again.
    """
    try:
        if (table.parent / OWN_TOC_STAMP).read_text(encoding="utf-8") == _first_line(table):
            return True
    except OSError:
        pass
    if not _built_from(table, blob, index):
        return False
    _stamp(table)
    return True


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8") as stream:
        return stream.readline()


def _stamp(table: Path) -> None:
    """Say beside the chunk table ``table`` that it is its blob's own TOC's; best effort."""
    with contextlib.suppress(OSError):  # else the check is made again next time
        write_atomic(
            table.parent / OWN_TOC_STAMP, _first_line(table).encode(), mode=0o600, durable=False
        )


def _own_remote_index(
    home: Path, blob: Path, digest: Digest, scratch: Path, limits: LayerLimits | None
) -> LayerIndex | None:
    """The eStargz index of ``digest`` from ``blob``'s own TOC, its files copied to ``scratch``.

    None when no TOC the layer was read by is the blob's own, or it differs
    from the blob's tar (``estargz_agree.hold``: the blob inflated once, the
    verdict kept). Which one is decided by the verified blob (``_built_from``),
    never by the TOC digest an image gave. Copied, not moved: mounts reading
    the layer remotely keep theirs.
    """
    from lazyfs.index.estargz_agree import hold
    from lazyfs.index.estargz_store import TOCS_DIR  # loads the TOC parser: eStargz only

    for where in sorted((home / TOCS_DIR).glob("*")):
        index = load_index(where, digest)
        if index is None or index.compression != ESTARGZ.name:
            continue
        try:
            data = check_data_present(where, blob, index)
        except BadImage:
            continue
        if _built_from(data.path, blob, index):
            verdict = hold(home, data.path, blob, index.entries, limits=limits)
            if not verdict.agrees:
                log.error("layer %s: its eStargz TOC differs from its tar (%s): indexed from"
                          " the tar", digest, verdict.why)  # fmt: skip
                return None  # a blob has one TOC: this was it
            for name in ESTARGZ.stored_files:
                # Made private: shutil.copyfile's copy is 0666 less the umask.
                with (
                    (data.path.parent / name).open("rb") as src,
                    private_file(scratch / name) as dst,
                ):
                    shutil.copyfileobj(src, dst)
            return index
    return None


def _built_from(table: Path, blob: Path, index: LayerIndex) -> bool:
    """Whether the chunk table ``table`` of ``index`` was built from the TOC of ``blob``.

    The same TOC digest and blob size: a blob has one TOC, so the index is
    the one ``blob``'s TOC gives.
    """
    try:
        with table.open(encoding="utf-8") as stream:
            toc, size = source_of(stream.readline())
        with blob.open("rb") as stream:
            json = _local_toc(stream, size, str(index.digest))
    except (BadImage, OSError, ValueError):
        return False
    return json is not None and digest_bytes(json, algorithm(toc)) == toc


def _local_toc(stream: BinaryIO, size: int, layer: str) -> bytes | None:
    """The TOC's JSON in the eStargz blob open as ``stream``, which must have ``size`` bytes.

    None when it has another size or ends in no footer.  Raises BadImage for
    a TOC member refused, and OSError.
    """
    from lazyfs.index.estargz import TocLimits, parse_footer, toc_json, toc_member

    if os.fstat(stream.fileno()).st_size != size:
        return None
    start = max(0, size - SUGGESTED_TAIL_SIZE)
    stream.seek(start)
    tail = stream.read()
    footer = parse_footer(tail, size)
    if footer is None:
        return None
    member = toc_member(tail, size, footer)
    if member is None:
        length = footer.toc_end - footer.toc_offset
        if length > 2 * TocLimits().max_json_bytes:
            return None  # no member that long holds a TOC the parser takes
        stream.seek(footer.toc_offset)
        member = stream.read(length)
    return toc_json(member, layer=layer)


def layer_format(index: LayerIndex) -> LayerFormat:
    """The format ``index`` was built for; BadImage for a name not known here (built again)."""
    return format_named(index.compression)


def layer_data(layers_dir: Path, blob: Path, index: LayerIndex) -> LayerData:
    """What the index's offsets point into, for the layer blob ``blob``; no I/O.

    BadImage for an index of a format not known here.
    """
    return layer_format(index).layer_data(layers_dir / hex_part(index.digest), blob)


def check_data_present(layers_dir: Path, blob: Path, index: LayerIndex) -> LayerData:
    """``layer_data``, refusing an index whose blob, tar copy or checkpoint file is unusable.

    Cheap (a stat, an open): a tar copy must have ``tar_size`` bytes, a
    checkpoint file or chunk table must open for reading and have
    ``checkpoints_size``.  An eStargz index ignores ``blob`` (any path will
    do): its blob is read through a ``BlobSource``.
    """
    kind = layer_format(index)
    data = kind.layer_data(layers_dir / hex_part(index.digest), blob)
    kind.check_data(index, data)
    return data
