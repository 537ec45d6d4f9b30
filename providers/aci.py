"""ACI files: read and check one, and turn its ``rootfs/`` into a plain layer tar.

An ACI is a tar, plain or compressed with gzip, bzip2 or xz, holding a
``manifest`` file and a ``rootfs/`` directory (App Container spec, "Image
Archives").  Its image id is ``sha512-`` and the hex SHA-512 of the
uncompressed tar.

``read_aci`` streams an ACI once: it writes the uncompressed tar to ``out``,
hashes it, validates the manifest and checks every entry.  Entries other
than ``manifest`` and ``rootfs/...`` are ignored, as the spec allows;
entries whose names escape (``..``, absolute names) and hardlinks that point
outside ``rootfs/`` are refused with ``UnsafeLayer``.  So is a ``rootfs/``
entry with a component starting ``.wh.`` (``BadEntry``): appc has no
whiteouts, so such a file is an ordinary file there, but a layer tar cannot
carry that name (every backend would read it as a whiteout and delete a lower
image's file), and nothing in the layer format escapes it.

``write_layer`` copies the ``rootfs/`` entries of a checked, uncompressed ACI
into a new tar with the ``rootfs/`` prefix removed, filtered as the appc
reference renderer (``pkg/acirenderer``) filters one image of a dependency
tree: its own pathWhitelist drops its files (never its directories) not
listed, and the whitelist it inherits from above drops every entry neither
listed nor a directory above a listed path.  The result is an ordinary layer
tar every backend applies with its usual safety rules, so an ACI needs
nothing special downstream.  A GNU sparse file stays sparse (written as PAX
1.0, its holes not written), as every layer reader reads holes: the layer
holds no more data than the ACI.  Both are blocking.
"""

from __future__ import annotations

import copy
import hashlib
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from providers import layer_rules as rules
from providers.appc_manifest import AciManifest, image_id, parse_aci_manifest
from providers.compression import decompressed
from providers.digest import CHUNK
from providers.errors import BadEntry, BadImage, UnsafeLayer
from providers.layer_limits import LayerLimits
from providers.tar_sparse import BLOCK, FileLayout
from providers.tar_stream import MAX_ENTRIES, CheckedTarInfo, file_layout

MANIFEST = "manifest"
ROOTFS = "rootfs"
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class AciInfo:
    """What ``read_aci`` learnt: the id, the manifest's bytes and its meaning."""

    image_id: str
    manifest_bytes: bytes
    manifest: AciManifest


class _Counted:
    """``stream``, counting the bytes read from it; ``count``: the bound is judged on
    them, or on the size told (``told``) while that is more."""

    def __init__(self, stream: BinaryIO, told: int | None) -> None:
        self._stream = stream
        self._told = told or 0
        self._read = 0

    @property
    def count(self) -> int:
        return max(self._told, self._read)

    @property
    def partial(self) -> bool:
        """Whether ``count`` is what was read so far, not the ACI's size."""
        return self._read > self._told

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._read += len(data)
        return data


class _Tee:
    """Reads from ``stream``, hashing and copying every byte to ``out``, at most what
    ``limits`` let the compressed bytes read so far (``counted``) unpack to."""

    def __init__(
        self, stream: BinaryIO, out: BinaryIO, what: str, limits: LayerLimits, counted: _Counted
    ) -> None:
        self._stream = stream
        self._out = out
        self.hasher = hashlib.sha512()
        self._what, self._limits, self._counted = what, limits, counted
        self._written = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._written += len(data)
        most, why = self._limits.bound(self._counted.count)
        if self._written > most:
            if self._counted.partial:  # not its size: the bytes read so far
                why = why.replace("for its", "for the first", 1)
            raise BadImage(f"ACI {self._what}: unpacks to more than {most} bytes, {why}")
        self.hasher.update(data)
        self._out.write(data)
        return data


def _rooted(name: str, what: str) -> rules.RelPath | None:
    """Path of an entry relative to the ACI's ``rootfs/`` (``()`` for rootfs itself).

    None for names outside ``rootfs/``; UnsafeLayer for hostile names.
    """
    path = rules.normalize_name(name, layer=what)
    if not path or path[0] != ROOTFS:
        return None
    return path[1:]


def _check_not_whiteout(rel: rules.RelPath, name: str, what: str) -> None:
    """Refuse a ``rootfs/`` entry a layer would read as a whiteout (or AUFS bookkeeping).

    In an ACI ``.wh.passwd`` is a plain file; in a layer tar it deletes the
    lower ``passwd``, and ``.wh..wh..opq`` empties its directory.  The layer
    format has no way to carry the name literally, so the ACI is refused
    rather than have its file delete another image's.
    """
    for part in rel:
        if part.startswith(rules.WHITEOUT_PREFIX):
            raise BadEntry(
                what,
                name,
                f"is named {part!r}: appc has no whiteouts, and a layer would "
                "take this file for one",
            )


def read_aci(
    stream: BinaryIO,
    out: BinaryIO,
    what: str,
    limits: LayerLimits | None = None,
    size: int | None = None,
) -> AciInfo:
    """Check the ACI ``stream`` and copy it, uncompressed, to ``out``.

    ``what`` (a file or URL) starts error messages.  Raises BadImage for a
    corrupt archive, a missing or invalid manifest or more bytes than
    ``limits`` let the ACI's ``size`` compressed bytes unpack to (unknown:
    those read so far; a bomb stops at the bound), UnsafeLayer for an entry
    escaping ``rootfs/``.  ``out`` is not flushed or closed.
    """
    counted = _Counted(stream, size)
    tee = _Tee(decompressed(counted), out, what, limits or LayerLimits(), counted)  # type: ignore[arg-type]
    manifest_bytes: bytes | None = None
    try:
        # CheckedTarInfo: a damaged header is damage, never the archive's end.
        archive = tarfile.open(fileobj=tee, mode="r|", tarinfo=CheckedTarInfo)  # type: ignore[call-overload]  # noqa: SIM115
        for count, member in enumerate(archive, 1):
            if count > MAX_ENTRIES:
                raise BadImage(f"ACI {what}: more than {MAX_ENTRIES} entries")
            path = rules.normalize_name(member.name, layer=what)
            if path == (MANIFEST,):
                # Any entry of that name: the last one would win in an unpacked copy, unsaid.
                if manifest_bytes is not None:
                    raise BadImage(f"ACI {what}: more than one manifest")
                if not member.isreg():
                    raise BadImage(f"ACI {what}: its manifest is no regular file")
                if member.size > MAX_MANIFEST_BYTES:
                    raise BadImage(
                        f"ACI {what}: manifest of {member.size} bytes, past the"
                        f" {MAX_MANIFEST_BYTES} taken"
                    )
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file always has data
                manifest_bytes = extracted.read()
                continue
            if not path or path[0] != ROOTFS:
                continue
            _check_not_whiteout(path[1:], member.name, what)
            if member.isreg():
                # As a layer's entries are judged: a size past MAX_ENTRY_SIZE (a sparse
                # file's holes count) or a damaged sparse map is refused here, once.
                file_layout(member, layer=what)
            if member.islnk():
                # Refused for its own reason (absolute, "..", too long), naming the link.
                target = rules.hardlink_target(member.linkname, layer=what, entry=member.name)
                if target[0] != ROOTFS or len(target) < 2:
                    shown = member.linkname if len(member.linkname) <= 200 else "a name"
                    raise UnsafeLayer(what, member.name, f"links to {shown!r}, outside rootfs/")
        while tee.read(CHUNK):  # the tar's padding counts for the id
            pass
    except (tarfile.TarError, EOFError, OSError) as error:
        raise BadImage(f"ACI {what}: corrupt or truncated archive: {error}") from error
    if manifest_bytes is None:
        raise BadImage(f"ACI {what}: no manifest file")
    try:
        manifest = parse_aci_manifest(manifest_bytes)
    except BadImage as error:
        raise BadImage(f"ACI {what}: {error}") from None
    return AciInfo(image_id(tee.hasher.hexdigest()), manifest_bytes, manifest)


_CARRIED = frozenset({"atime", "ctime", "mtime", "uid", "gid", "uname", "gname", "hdrcharset"})


def _carried(key: str) -> bool:
    return key in _CARRIED or key.startswith(("SCHILY.xattr.", "LIBARCHIVE.xattr."))


def _allowed(whitelist: Iterable[str]) -> tuple[frozenset[rules.RelPath], frozenset[rules.RelPath]]:
    """The whitelisted paths, and every directory above one of them."""
    paths = {tuple(p for p in entry.split("/") if p and p != ".") for entry in whitelist}
    parents = {path[:i] for path in paths for i in range(len(path))}
    return frozenset(paths), frozenset(parents)


def write_layer(
    aci_tar: BinaryIO,
    out: BinaryIO,
    whitelist: tuple[str, ...],
    what: str,
    *,
    own: tuple[str, ...] = (),
) -> None:
    """Write the ``rootfs/`` of the uncompressed ACI ``aci_tar`` to ``out`` as a layer tar.

    ``whitelist`` is the pathWhitelist the image inherits (its topmost
    ancestor's): every entry it does not list is dropped, except the
    directories above listed paths (kept so that a listed file's parents keep
    the image's owner and mode).  ``own`` is the image's own pathWhitelist: it
    drops the image's files it does not list, but no directory, as the
    reference renderer does.  Empty means no such whitelist.  A hardlink
    whose target was dropped becomes nothing (its data went with the target).
    Raises BadEntry for an entry a layer would take for a whiteout.
    """
    paths, parents = _allowed(whitelist)
    own_paths, _ = _allowed(own)
    kept: set[rules.RelPath] = set()

    def keep(path: rules.RelPath, member: tarfile.TarInfo) -> bool:
        if own and not member.isdir() and path not in own_paths:
            return False
        return not whitelist or path in paths or path in parents

    try:
        source = tarfile.open(fileobj=aci_tar, mode="r|", tarinfo=CheckedTarInfo)  # noqa: SIM115
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as layer:
            for member in source:
                rel = _rooted(member.name, what)
                if rel is None:
                    continue
                # Checked here too: an ACI kept before read_aci refused such names.
                _check_not_whiteout(rel, member.name, what)
                if not keep(rel, member):
                    continue
                member.name = "/".join(rel) if rel else "./"
                if member.islnk():
                    target = _rooted(member.linkname, what)
                    if not target or target not in kept:
                        continue
                    member.linkname = "/".join(target)
                # Only the pax records of what a layer entry keeps: a path, linkpath or
                # GNU.sparse.name would win over the names given here (tarfile writes
                # them as they are), and a sparse file's map is written anew (_data).
                member.pax_headers = {
                    key: value for key, value in member.pax_headers.items() if _carried(key)
                }
                kept.add(rel)
                data = _data(source, member, what) if member.isreg() else None
                layer.addfile(member, data)
    except (tarfile.TarError, EOFError) as error:
        raise BadImage(f"ACI {what}: corrupt or truncated archive: {error}") from error


def _data(source: tarfile.TarFile, member: tarfile.TarInfo, what: str) -> IO[bytes]:
    """The data ``member`` gets in the layer; a sparse one becomes a PAX 1.0 sparse entry.

    Written whole, a sparse file's holes would be zeros in the layer: a 10 KiB
    ACI claiming a 1 TiB file would make 1 TiB of layer.  Its map and the
    bytes it stores instead, no more than the ACI has (``member`` is changed).
    """
    layout = file_layout(member, layer=what)  # read_aci judged it; the checks are cheap
    # Only its stored bytes, read from the archive as they are.
    stored = copy.copy(member)
    stored.size, stored.sparse = layout.stored, None
    raw = source.extractfile(stored)
    assert raw is not None  # a regular file always has data
    # An old GNU sparse entry's type S would have its map read from our pax header.
    member.type = tarfile.REGTYPE
    if layout.extents is None:
        return raw
    sparse_map = _map_10(layout)
    member.pax_headers = {
        **member.pax_headers,
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.realsize": str(layout.size),
    }
    member.size, member.sparse = len(sparse_map) + layout.stored, None
    return cast(IO[bytes], _Joined(sparse_map, raw))


def _map_10(layout: FileLayout) -> bytes:
    """The PAX 1.0 map of ``layout``'s extents: decimal lines, padded to a block.

    In the data, not a pax record: a map of many extents passes what a pax
    header may hold (``tar_stream.MAX_HEADER_BYTES``).
    """
    pairs = [(start, length) for start, length, _ in layout.extents or ()]
    if not pairs or sum(pairs[-1]) < layout.size:
        pairs.append((layout.size, 0))  # as GNU tar ends it: else its extraction is short
    lines = [str(len(pairs))] + [f"{start}\n{length}" for start, length in pairs]
    text = ("\n".join(lines) + "\n").encode()
    return text + bytes(-len(text) % BLOCK)


class _Joined:
    """``head``, then what ``rest`` reads; reads are full (tarfile's copy takes a short
    read for the end of the data)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        taken = self._head if n < 0 else self._head[:n]
        self._head = self._head[len(taken) :]
        if n < 0:
            return taken + self._rest.read()
        return taken + self._rest.read(n - len(taken)) if len(taken) < n else taken
