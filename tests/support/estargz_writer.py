"""A small eStargz writer for tests, written from the format's description.

It makes blobs the way the spec lays them out: tar headers in gzip members
of their own, every chunk of a regular file a new gzip member (or, with
``pack``, several small files' bytes sharing one member through
``innerOffset``), a landmark file, the TOC member, and the footer.  The
result is a valid gzip stream of a valid tar, as the spec requires, and a
test can change the TOC's JSON on its way out (``edit_toc``) to build
hostile layers whose TOC digest still matches.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

LANDMARK_DATA = b"\x0f"


@dataclass(frozen=True)
class File:
    """One entry: ``type`` as the TOC names it (reg, dir, symlink, hardlink, char,
    block, fifo); ``link`` the target of a link; ``modtime`` RFC 3339 or ""."""

    name: str
    data: bytes = b""
    type: str = "reg"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    modtime: str = "2020-09-13T12:26:40Z"
    link: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Blob:
    data: bytes
    toc_json: bytes
    toc_offset: int
    footer_size: int

    @property
    def toc_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.toc_json).hexdigest()

    def offset_of(self, name: str) -> int:
        """Where the entry ``name``'s compressed bytes start in the blob, as its TOC says."""
        toc = json.loads(self.toc_json)
        return int(next(e["offset"] for e in toc["entries"] if e["name"] == name))


_TAR_TYPES = {
    "reg": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def footer(toc_offset: int, *, legacy: bool = False) -> bytes:
    """The empty gzip member that ends a blob: 51 bytes, or stargz's 47."""
    field_ = b"%016xSTARGZ" % toc_offset
    extra = field_ if legacy else b"SG" + len(field_).to_bytes(2, "little") + field_
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + len(extra).to_bytes(2, "little")
    return header + extra + b"\x01\x00\x00\xff\xff" + bytes(8)


def _header(entry: File) -> bytes:
    info = tarfile.TarInfo(entry.name)
    info.type = _TAR_TYPES[entry.type]
    info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
    # The TOC's modtime, as ctr-remote writes the tar's (whole seconds); none, 0.
    if entry.modtime:
        info.mtime = int(datetime.datetime.fromisoformat(entry.modtime).timestamp())
    info.linkname = entry.link
    info.devmajor, info.devminor = entry.dev
    info.size = len(entry.data) if entry.type == "reg" else 0
    info.pax_headers = {
        f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in entry.xattrs.items()
    }
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _toc_entry(entry: File) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.name, "type": entry.type, "mode": entry.mode}
    for key, value in (("uid", entry.uid), ("gid", entry.gid), ("modtime", entry.modtime),
                       ("linkName", entry.link)):  # fmt: skip
        if value:
            out[key] = value
    if entry.type in ("char", "block"):
        out["devMajor"], out["devMinor"] = entry.dev
    if entry.xattrs:
        out["xattrs"] = {k: base64.b64encode(v).decode() for k, v in entry.xattrs.items()}
    if entry.type == "reg":
        out["size"] = len(entry.data)
        out["digest"] = "sha256:" + hashlib.sha256(entry.data).hexdigest()
    return out


class _Stream:
    """Concatenated gzip members; ``pending`` is the member being filled."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.pending = bytearray()

    def cut(self) -> int:
        """End the pending member (if any); returns where the next one starts."""
        if self.pending:
            self.blob += gzip.compress(bytes(self.pending), mtime=0)
            self.pending = bytearray()
        return len(self.blob)


def write_estargz(
    files: Sequence[File],
    *,
    chunk_size: int = 0,
    prefetch: int | None = None,
    pack: int = 0,
    legacy: bool = False,
    edit_toc: Callable[[dict[str, Any]], object] | None = None,
) -> Blob:
    """An eStargz blob of ``files``.

    ``chunk_size`` > 0 splits larger files into chunks of that size.
    ``prefetch`` = k puts ``.prefetch.landmark`` after the first k files;
    None starts the layer with ``.no.prefetch.landmark``.  ``pack`` > 0 lets
    file payloads share a gzip member until it holds that many bytes.
    ``edit_toc`` may change the TOC document in place before it is written.
    """
    landmark = File(".no.prefetch.landmark" if prefetch is None else ".prefetch.landmark",
                    LANDMARK_DATA, modtime="")  # fmt: skip
    ordered = list(files)
    ordered.insert(0 if prefetch is None else prefetch, landmark)
    stream = _Stream()
    toc: list[dict[str, Any]] = []
    for entry in ordered:
        stream.pending += _header(entry)
        record = _toc_entry(entry)
        toc.append(record)
        if entry.type != "reg" or not entry.data:
            continue
        pieces = [entry.data]
        if chunk_size:
            pieces = [entry.data[i : i + chunk_size] for i in range(0, len(entry.data), chunk_size)]
        done = 0
        for index, piece in enumerate(pieces):
            # Unpacked, every payload starts a member; packed, a member is
            # shared until it holds ``pack`` bytes (headers included).
            if not pack or len(stream.pending) >= pack:
                stream.cut()
            chunk: dict[str, Any] = {"name": entry.name, "type": "chunk"} if index else record
            if index:
                toc.append(chunk)
                chunk["chunkOffset"] = done
            chunk["offset"] = len(stream.blob)
            if pack:
                chunk["innerOffset"] = len(stream.pending)
            if index < len(pieces) - 1:
                chunk["chunkSize"] = len(piece)
            chunk["chunkDigest"] = "sha256:" + hashlib.sha256(piece).hexdigest()
            stream.pending += piece
            done += len(piece)
        stream.pending += bytes(-len(entry.data) % 512)
    doc: dict[str, Any] = {"version": 1, "entries": toc}
    if edit_toc is not None:
        edit_toc(doc)
    toc_json = json.dumps(doc).encode()
    toc_offset = stream.cut()
    info = tarfile.TarInfo("stargz.index.json")
    info.size = len(toc_json)
    member = info.tobuf(format=tarfile.USTAR_FORMAT) + toc_json + bytes(-len(toc_json) % 512)
    stream.pending += member + bytes(1024)
    stream.cut()
    data = bytes(stream.blob) + footer(toc_offset, legacy=legacy)
    return Blob(data, toc_json, toc_offset, 47 if legacy else 51)
