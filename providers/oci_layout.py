"""Image files in a tar or a directory, and the OCI image layout read from them.

The local puller reads three tar forms (legacy ``docker save``, its
``manifest.json`` successor, OCI layout tars) and OCI layout directories. All
of them are "named files": this module gives one way to read those names from
a tar without extracting it (``TarFiles``: member offsets are indexed once, a
blob is a byte range of the tar) or from a directory (``DirFiles``), plus the
OCI layout walk (index -> manifest -> config -> layers) over either. Which
entry of a multi-platform index is taken is providers.platforms' choice.

Every descriptor's digest and size is checked when its manifest, index or
config is read; layer bytes are only located here, and checked by whoever
streams them through ``VerifyingReader``.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from providers.compression import sniff
from providers.digest import Digest, algorithm, digest_bytes, hex_part
from providers.errors import BadImage, DigestMismatch, NotFound
from providers.layout_dir import open_beneath
from providers.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    METADATA_LIMIT,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    Layer,
    layer_annotations,
    load_json,
    nondistributable,
    parse_image_config,
    parse_image_manifest,
)
from providers.platforms import Platform as Platform  # re-exported: older callers
from providers.platforms import annotation, config_platform, index_entries, select_platform
from providers.platforms import host_arch as host_arch  # re-exported: older callers

# A docker save of a large image has a few thousand members; a million is abuse.
MEMBER_LIMIT = 1_000_000
# Indexes may nest (an index entry pointing at another index); real ones nest once.
INDEX_DEPTH_LIMIT = 4
_LINK_HOPS = 16

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class BlobLocation:
    """Where a blob's bytes are: ``size`` bytes of ``path`` from ``offset``.

    ``layout_root``: ``path`` is a file of that layout directory, opened
    below it without following symlinks (providers.layout_dir), as when it
    was located: a symlink put there since is refused, not followed.
    """

    path: Path
    offset: int
    size: int
    layout_root: Path | None = None


class RangeReader(io.RawIOBase):
    """Reads one byte range of a file, as if it were the whole file.

    EOF comes at the end of the range. The file is opened lazily so that a
    reader that is never read holds no descriptor; ``close`` is idempotent.
    """

    def __init__(self, where: BlobLocation) -> None:
        super().__init__()
        self._where = where
        self._pos = 0
        self._fd: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed RangeReader")
        if self._fd is None:
            self._fd = self._open()
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._where.size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._where.offset + self._pos)
        # A file truncated under us ends early; VerifyingReader reports the size.
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _open(self) -> int:
        path, root = self._where.path, self._where.layout_root
        if root is not None:
            fd = open_beneath(root, path.relative_to(root).as_posix())
            if fd is None:
                raise NotFound(f"blob file {path} is gone")
            return fd
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFound(f"blob file {path} is gone") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


def open_location(where: BlobLocation) -> BinaryIO:
    return io.BufferedReader(RangeReader(where), buffer_size=1 << 20)


class Files(Protocol):
    """Named files of an image, from a tar or a directory."""

    label: str

    def location(self, name: str) -> BlobLocation | None:
        """Where ``name``'s bytes are; None if absent.

        A tar's symlinks and hardlinks are followed inside the tar, a
        directory's inside the directory; one that leads out is BadImage.
        """
        ...


def read_file(files: Files, name: str, what: str, limit: int = METADATA_LIMIT) -> bytes:
    """The bytes of ``name``, for small metadata files; BadImage when absent or too big."""
    where = files.location(name)
    if where is None:
        raise BadImage(f"{files.label}: {what} {name!r} is missing")
    if where.size > limit:
        raise BadImage(f"{files.label}: {what} {name!r} is {where.size} bytes, over {limit}")
    with open_location(where) as stream:
        data = stream.read()
    if len(data) != where.size:
        raise BadImage(f"{files.label}: {name!r} is truncated")
    return data


def _clean(name: str) -> str:
    # Tars name the same file "x", "./x" or "/x"; look them up alike.
    name = posixpath.normpath("/" + name).lstrip("/")
    return name


class TarFiles:
    """The members of an uncompressed tar, indexed once by name.

    Symlinked and hardlinked members (``skopeo`` writes ``<id>/layer.tar`` as
    a symlink to ``<digest>.tar``) resolve to the member they point at, inside
    the tar only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        self._regular: dict[str, tuple[int, int]] = {}
        self._links: dict[str, str] = {}
        # Layer digests hashed in place, by (offset, size): the docker save
        # forms give none, and hashing a layer twice per puller is waste.
        self.digests: dict[tuple[int, int], Digest] = {}
        # Here, not at the top: the registry client (and so the cache daemon)
        # imports this module for INDEX_DEPTH_LIMIT and loads no tar code.
        from providers.tar_stream import CheckedTarInfo

        try:
            with open(path, "rb") as raw:
                if sniff(raw.read(8)) in ("gzip", "zstd"):
                    raise BadImage(f"{path}: compressed image archives are not supported")
                raw.seek(0)
                # CheckedTarInfo, as for layers: it bounds pax and GNU long-name
                # headers, which plain tarfile reads whole into memory.
                with tarfile.open(fileobj=raw, mode="r:", tarinfo=CheckedTarInfo) as tar:
                    for count, member in enumerate(tar):
                        if count >= MEMBER_LIMIT:
                            raise BadImage(f"{path}: more than {MEMBER_LIMIT} members")
                        self._add(member)
        except (tarfile.TarError, EOFError) as exc:
            raise BadImage(f"{path}: not a readable tar archive: {exc}") from exc
        except OSError as exc:
            raise NotFound(f"{path}: cannot read: {exc}") from exc

    def _add(self, member: tarfile.TarInfo) -> None:
        name = _clean(member.name)
        # A later member of the same name wins, as when tar extracts.
        self._regular.pop(name, None)
        self._links.pop(name, None)
        if member.isreg() and not member.issparse():
            self._regular[name] = (member.offset_data, member.size)
        elif member.issym():
            target = member.linkname
            base = "" if target.startswith("/") else posixpath.dirname(name)
            self._links[name] = _clean(posixpath.join(base, target))
        elif member.islnk():
            self._links[name] = _clean(member.linkname)

    def location(self, name: str) -> BlobLocation | None:
        name = _clean(name)
        for _ in range(_LINK_HOPS):
            if name in self._regular:
                offset, size = self._regular[name]
                return BlobLocation(self.path, offset, size)
            if name not in self._links:
                return None
            name = self._links[name]
        raise BadImage(f"{self.path}: member {name!r} is a link loop")


class DirFiles:
    """Regular files below a directory; a symlink below it is followed only inside it.

    The layout is the image author's: a symlink in it could name any file on
    the host (see providers.layout_dir).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def location(self, name: str) -> BlobLocation | None:
        name = _clean(name)
        fd = open_beneath(self.root, name)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return BlobLocation(self.root / name, 0, size, layout_root=self.root)


def blob_name(digest: Digest) -> str:
    return f"blobs/{algorithm(digest)}/{hex_part(digest)}"


def read_blob(files: Files, desc: Descriptor, what: str) -> bytes:
    """A small blob of the layout, checked against its descriptor."""
    name = blob_name(desc.digest)
    if files.location(name) is None:
        raise BadImage(f"{files.label}: {what} blob {desc.digest} is missing")
    data = read_file(files, name, what)
    if len(data) != desc.size:
        raise DigestMismatch(
            f"{files.label}: {what} {desc.digest} size",
            expected=str(desc.size),
            actual=str(len(data)),
        )
    actual = digest_bytes(data, algorithm(desc.digest))
    if actual != desc.digest:
        raise DigestMismatch(f"{files.label}: {what}", expected=desc.digest, actual=actual)
    return data


def _unique(found: list[Descriptor], label: str, wanted: str) -> Descriptor | None:
    if not found:
        return None
    if len({d.digest for d in found}) > 1:
        raise BadImage(f"{label}: {len(found)} different images are named {wanted!r}")
    return found[0]


def select_entry(
    entries: list[Descriptor],
    label: str,
    full_ref: str,
    tag: str | None,
    digest: Digest | None,
    strict: bool = False,
) -> Descriptor:
    """Pick the index.json entry for a reference.

    Most specific first: the pinned digest; containerd's full image name
    (``docker save`` writes it); a ref.name equal to the full reference or to
    the tag (``umoci``, ``skopeo``); else, unless ``strict``, the only entry
    there is.
    """
    if digest is not None:
        for entry in entries:
            if entry.digest == digest:
                return entry
    tiers: list[list[Descriptor]] = [
        [e for e in entries if annotation(e, CONTAINERD_NAME) == full_ref],
        [e for e in entries if annotation(e, REF_NAME) == full_ref],
    ]
    if tag is not None:
        tiers.append([e for e in entries if annotation(e, REF_NAME) == tag])
    for tier in tiers:
        chosen = _unique(tier, label, full_ref)
        if chosen is not None:
            return chosen
    if len(entries) == 1 and not strict:
        return entries[0]
    names = sorted(
        {annotation(e, REF_NAME) or annotation(e, CONTAINERD_NAME) or e.digest for e in entries}
    )
    raise NotFound(f"{label}: no image for {full_ref} (has {', '.join(names) or 'nothing'})")


def _is_index(desc: Descriptor) -> bool:
    return desc.media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST)


def resolve_layout(
    files: Files,
    reference: str,
    full_ref: str,
    tag: str | None,
    digest: Digest | None,
    platform: Platform | None = None,
    strict: bool = False,
) -> tuple[ImageManifest, dict[Digest, BlobLocation]]:
    """Resolve a reference in an OCI layout; returns the image and where its layers are.

    From a multi-platform index, ``platform`` (default the host's) is taken.
    ``strict``: the reference must be named in the index, even if it holds one image.
    """
    if files.location("oci-layout") is None:
        raise BadImage(f"{files.label}: no oci-layout file")
    layout = load_json(read_file(files, "oci-layout", "oci-layout"), f"{files.label}: oci-layout")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise BadImage(f"{files.label}: oci-layout has no imageLayoutVersion")
    index = load_json(read_file(files, "index.json", "index"), f"{files.label}: index.json")
    entries = index_entries(index, "index.json")
    entry = select_entry(entries, files.label, full_ref, tag, digest, strict)
    pinned_ok = digest is None or entry.digest == digest
    depth, by_platform = 0, False
    while _is_index(entry):
        depth += 1
        if depth > INDEX_DEPTH_LIMIT:
            raise BadImage(f"{files.label}: image indexes nest deeper than {INDEX_DEPTH_LIMIT}")
        nested = load_json(read_blob(files, entry, "image index"), f"index {entry.digest}")
        children = index_entries(nested, f"index {entry.digest}")
        pinned = [c for c in children if digest is not None and c.digest == digest]
        entry = pinned[0] if pinned else select_platform(children, files.label, platform)
        pinned_ok = pinned_ok or bool(pinned)
        by_platform = not pinned
    named = f"{files.label}: {reference}"  # as the registry client names its errors
    if not pinned_ok:
        pin = DigestMismatch(named, expected=str(digest), actual=entry.digest)
        pin.args = (
            f"{named}: its manifest is {entry.digest}, not the {digest} the reference pins",
        )
        raise pin
    if entry.media_type not in ("", OCI_MANIFEST, DOCKER_MANIFEST):
        raise BadImage(f"{files.label}: {entry.digest} has unsupported type {entry.media_type!r}")
    # The parsers' errors do not know the image: named for it, as the registry client does.
    try:
        manifest = parse_image_manifest(read_blob(files, entry, "image manifest"), entry.media_type)
    except BadImage as exc:
        raise exc.for_image(named) from exc
    config = read_blob(files, manifest.config, "image config")
    try:
        runtime, diff_ids = parse_image_config(config)
        # One picked from an index is of the platform asked for; a single image says its own.
        stated = "" if by_platform else config_platform(config)
    except BadImage as exc:
        raise exc.for_image(named) from exc
    if len(diff_ids) != len(manifest.layers):
        raise BadImage(
            f"{named}: manifest has {len(manifest.layers)} layers "
            f"but config has {len(diff_ids)} diff_ids"
        )
    layers: list[Layer] = []
    blobs: dict[Digest, BlobLocation] = {}
    for desc, diff_id in zip(manifest.layers, diff_ids, strict=True):
        where = files.location(blob_name(desc.digest))
        if where is None:
            why = nondistributable(desc, "the layout") or f"layer blob {desc.digest} is missing"
            raise BadImage(f"{files.label}: {why}")
        if where.size != desc.size:
            raise DigestMismatch(
                f"{files.label}: layer {desc.digest} size",
                expected=str(desc.size),
                actual=str(where.size),
            )
        note = layer_annotations(desc.annotations)
        layers.append(Layer(desc.digest, desc.media_type, desc.size, diff_id, note))
        blobs[desc.digest] = where
    image = ImageManifest(reference, entry.digest, tuple(layers), runtime, stated)
    return image, blobs
