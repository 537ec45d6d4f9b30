"""The Docker local puller: images from a directory of ``docker save`` tars.

As the Mesos local puller does, ``--docker_registry=/dir`` (or
``file:///dir``) names a directory of images by file name. A reference maps to
a local name by dropping ``docker.io/`` and then ``library/``, and these are
tried in order (a name with ``/`` lives in subdirectories):

    <dir>/NAME:TAG.tar       any tar form below
    <dir>/NAME.tar           only when TAG is latest
    <dir>/NAME:TAG/          an OCI image layout directory

A reference pinned by digest alone (``NAME@sha256:...``) looks for
``NAME@sha256:....tar`` and ``NAME@sha256:.../``. A pinned digest is always
checked: against the manifest (or the index holding it) for OCI layouts, and
against the image id (the config digest, or the top json for legacy saves)
for the docker save forms, which keep no registry manifest.

A tar is read in the first form it has: an OCI layout (``index.json``, which
current ``docker save`` writes next to ``manifest.json``), then
``manifest.json``, then the legacy ``repositories`` form. Tars are never
extracted: their members are indexed once and blobs are byte ranges of them.

``open`` serves the layer blobs of images this puller has resolved.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from providers.digest import Digest, parse_digest
from providers.docker_archive import (
    normalize_repository,
    resolve_legacy,
    resolve_manifest_json,
    split_tag,
)
from providers.errors import BadImage, DigestMismatch, InvalidReference, NotFound, UsageError
from providers.manifest import ImageManifest
from providers.oci_layout import (
    BlobLocation,
    DirFiles,
    Platform,
    TarFiles,
    open_location,
    resolve_layout,
)
from providers.source import clamp_range

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]+$")


@dataclass(frozen=True)
class LocalName:
    """A reference as the local directory names it: ``busybox``, tag ``latest``."""

    name: str
    tag: str | None
    digest: Digest | None

    @property
    def full_reference(self) -> str:
        """The normalized ``repo:tag`` that RepoTags and index annotations are matched with."""
        repo = normalize_repository(self.name)
        return f"{repo}:{self.tag}" if self.tag is not None else repo

    def candidates(self, directory: Path) -> list[Path]:
        """The files and directories to look for, in order."""
        paths: list[Path] = []
        if self.tag is not None:
            paths.append(directory / f"{self.name}:{self.tag}.tar")
            if self.tag == "latest":
                paths.append(directory / f"{self.name}.tar")
            paths.append(directory / f"{self.name}:{self.tag}")
        if self.digest is not None:
            paths.append(directory / f"{self.name}@{self.digest}.tar")
            paths.append(directory / f"{self.name}@{self.digest}")
        return paths


def local_name(reference: str) -> LocalName:
    """Map a Docker reference to its local name; InvalidReference if it cannot be a path."""
    rest, at, digest_text = reference.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = parse_digest(digest_text)
        except BadImage as exc:
            raise InvalidReference(reference, str(exc)) from exc
    repo, tag = split_tag(rest)
    if tag is not None and not _TAG.match(tag):
        raise InvalidReference(reference, f"bad tag {tag!r}")
    for prefix in ("docker.io/", "library/"):
        repo = repo.removeprefix(prefix)
    # The name becomes a path below the image directory: no way out of it
    # (components start with a letter or digit, so "." and ".." are out).
    first, *others = repo.split("/")
    valid = (_COMPONENT.match(first) or (others and _HOST_PORT.match(first))) and all(
        _COMPONENT.match(p) for p in others
    )
    if not valid:
        raise InvalidReference(reference, f"repository {repo!r} is not a usable local name")
    if tag is None and digest is None:
        tag = "latest"
    return LocalName(repo, tag, digest)


def _directory(location: str | os.PathLike[str]) -> Path:
    text = os.fspath(location)
    if not text.startswith("file:"):
        return Path(text)
    parsed = urlparse(text)
    if parsed.netloc not in ("", "localhost"):
        raise UsageError(
            f"{text}: a file URI must name a local directory, not host {parsed.netloc}"
        )
    return Path(unquote(parsed.path))


class LocalPuller:
    """ImageSource and BlobSource over a directory of saved images.

    Safe to call from several threads: resolving one image while blobs of
    another stream. Blob locations stay valid while the files are unchanged;
    a file rewritten after resolve fails the caller's digest check.
    """

    def __init__(self, directory: str | os.PathLike[str], platform: Platform | None = None) -> None:
        self.directory = _directory(directory)
        # Taken from multi-platform OCI indexes; None: the host's.
        self.platform = platform
        self._lock = threading.Lock()
        self._blobs: dict[Digest, BlobLocation] = {}
        self._tars: dict[Path, tuple[tuple[int, ...], TarFiles]] = {}

    def resolve(self, reference: str) -> ImageManifest:
        wanted = local_name(reference)
        tried = wanted.candidates(self.directory)
        for path in tried:
            if path.is_file() or path.is_dir():
                return self.resolve_path(path, reference, wanted, wanted.full_reference)
        if not self.directory.is_dir():
            # Not the image missing: the place to look in (a typo, a mount not up).
            what = "is not a directory" if self.directory.exists() else "does not exist"
            raise NotFound(f"image {reference} not found: the directory {self.directory} {what}")
        raise NotFound(
            f"image {reference} not found in {self.directory}: "
            f"tried {', '.join(str(p) for p in tried)}"
        )

    def resolve_path(
        self, path: Path, reference: str, wanted: LocalName, full_ref: str, strict: bool = False
    ) -> ImageManifest:
        """Resolve the image ``wanted`` in the tar or layout directory ``path``.

        ``full_ref`` is what image names in the file are matched with;
        ``reference`` becomes the manifest's. ``strict``: the file must name
        it, even when it holds one image. Its blobs are served from then on.
        """
        if path.is_dir():
            image, blobs = resolve_layout(
                DirFiles(path),
                reference,
                full_ref,
                wanted.tag,
                wanted.digest,
                self.platform,
                strict,
            )
        else:
            image, blobs = self._resolve_tar(path, reference, wanted, full_ref, strict)
        with self._lock:
            self._blobs.update(blobs)
        return image

    def _resolve_tar(
        self, path: Path, reference: str, wanted: LocalName, full_ref: str, strict: bool
    ) -> tuple[ImageManifest, dict[Digest, BlobLocation]]:
        files = self._tar(path)
        tag = wanted.tag
        if files.location("index.json") is not None and files.location("oci-layout") is not None:
            return resolve_layout(
                files, reference, full_ref, tag, wanted.digest, self.platform, strict
            )
        if files.location("manifest.json") is not None:
            image, blobs = resolve_manifest_json(files, reference, full_ref, tag, strict)
        elif files.location("repositories") is not None:
            image, blobs = resolve_legacy(files, reference, full_ref, tag, strict)
        else:
            raise BadImage(f"{path}: has none of index.json, manifest.json, repositories")
        if wanted.digest is not None and image.digest != wanted.digest:
            raise DigestMismatch(f"{path}: image id", expected=wanted.digest, actual=image.digest)
        return image, blobs

    def _tar(self, path: Path) -> TarFiles:
        """The member index of ``path``, reused while the file is unchanged."""
        try:
            st = path.stat()
        except OSError as exc:
            raise NotFound(f"{path}: {exc.strerror}") from exc
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._tars.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        files = TarFiles(path)
        with self._lock:
            self._tars[path] = (key, files)
        return files

    def open(self, digest: Digest) -> BinaryIO:
        return open_location(self._where(digest))

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the blob from ``offset``; short only at its end."""
        where = self._where(digest)
        length = clamp_range(offset, length, where.size)
        # replace: keeps ``layout_root``, so the range too is opened without following links.
        part = dataclasses.replace(where, offset=where.offset + offset, size=length)
        with open_location(part) as stream:
            return stream.read()

    def _where(self, digest: Digest) -> BlobLocation:
        with self._lock:
            where = self._blobs.get(digest)
        if where is None:
            raise NotFound(
                f"blob {digest} is not in any image resolved from {self.directory}", digest=digest
            )
        return where
