"""skopeo's local image transports, as a user writes them, and the puller for one.

::

    oci:DIR[:REF]               an OCI image layout directory; REF is an
                                org.opencontainers.image.ref.name ("latest")
    oci-archive:FILE[:REF]      the same, as a tar
    docker-archive:FILE[:REF]   a ``docker save`` tar (manifest.json or the
                                legacy form); REF is a NAME:TAG of its RepoTags

Without REF the file must hold one image. As in skopeo, the path ends at
the first colon; a path that itself holds a colon (``busybox:1.0.tar``) is
taken whole when the part before its first colon does not exist. ``docker://``
is a registry reference and is not read here (``lazyfs.images.spec`` strips
it); skopeo's other transports are refused with one line.

``PathPuller`` reads the one file or directory a transport names with the
Docker local puller's readers, so every form and check of the local puller
applies; ``parse_transport`` is pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from providers.docker_archive import split_tag
from providers.docker_local import LocalName, LocalPuller
from providers.errors import BadImage, NotFound
from providers.manifest import ImageManifest
from providers.platforms import Platform

LOCAL_TRANSPORTS = ("oci", "oci-archive", "docker-archive")
# skopeo's other transports: named so that they get a clear refusal, not a
# registry lookup of an image called "dir" or "containers-storage".
_UNNAMED = "<no REF>"  # matches no name in a file: the only image there is taken
OTHER_TRANSPORTS = ("dir", "docker-daemon", "containers-storage", "ostree", "sif", "tarball")


@dataclass(frozen=True)
class LocalImage:
    """An image in one local file or directory, named by a skopeo transport."""

    transport: str
    path: str
    name: str | None = None

    def __str__(self) -> str:
        tail = f":{self.name}" if self.name is not None else ""
        return f"{self.transport}:{self.path}{tail}"

    def absolute(self) -> LocalImage:
        """The same image with its path made absolute (against the current directory)."""
        return LocalImage(self.transport, os.path.abspath(self.path), self.name)

    @property
    def wanted(self) -> LocalName:
        """The name the readers match against the image's own names."""
        if self.name is None:
            # Matches no name: the readers take the only image there is.
            return LocalName("", None, None)
        if self.transport == "docker-archive":
            repo, tag = split_tag(self.name)
            return LocalName(repo, tag or "latest", None)
        # An OCI ref.name is matched as written, whole or as a tag.
        return LocalName(self.name, self.name, None)


def parse_transport(text: str) -> LocalImage | None:
    """The local image ``text`` names, or None when it names no skopeo transport.

    Raises BadImage for a transport lazyfs does not read, or one without a
    path, or a docker-archive REF that is not NAME[:TAG].
    """
    transport, colon, rest = text.partition(":")
    if not colon:
        return None
    if transport in OTHER_TRANSPORTS:
        raise BadImage(
            f"{text}: skopeo's {transport}: transport is not supported; "
            f"use docker://, {', '.join(t + ':' for t in LOCAL_TRANSPORTS)}"
        )
    if transport not in LOCAL_TRANSPORTS:
        return None
    path, colon, name = rest.partition(":")
    if colon and not os.path.exists(path) and os.path.exists(rest):
        path, name, colon = rest, "", ""
    if not path:
        raise BadImage(f"{text}: no path: write {transport}:PATH[:REF]")
    if colon and not name:
        raise BadImage(f"{text}: empty REF after the path")
    if transport == "docker-archive" and colon:
        repo, _tag = split_tag(name)
        if name.startswith("@") or not repo:
            raise BadImage(f"{text}: want docker-archive:FILE[:NAME[:TAG]]")
    return LocalImage(transport, path, name if colon else None)


class PathPuller(LocalPuller):
    """ImageSource and BlobSource over the one file or directory ``image`` names.

    Resolving reads the file again each time (it may have changed); the
    reference passed to ``resolve`` becomes the manifest's reference.
    """

    def __init__(self, image: LocalImage, platform: Platform | None = None) -> None:
        self.image = image.absolute()
        super().__init__(Path(self.image.path).parent, platform)

    def resolve(self, reference: str) -> ImageManifest:
        where = Path(self.image.path)
        transport = self.image.transport
        if where.is_dir():
            if transport != "oci":
                raise BadImage(f"{self.image}: {where} is a directory; for one, write oci:{where}")
        elif where.is_file():
            if transport == "oci":
                raise BadImage(
                    f"{self.image}: {where} is a file; for a tar, write oci-archive:{where}"
                )
        elif where.exists():
            raise BadImage(f"{self.image}: {where} is neither a file nor a directory")
        else:
            raise NotFound(f"{self.image}: {where} does not exist")
        wanted = self.image.wanted
        full_ref = self._full_reference(wanted)
        try:
            # A REF the file does not name is an error even if it holds one image.
            strict = self.image.name is not None
            return self.resolve_path(where, reference, wanted, full_ref, strict)
        except NotFound as exc:
            found = str(exc).partition(f"no image for {_UNNAMED} (has ")[2]
            if not found:
                raise
            raise BadImage(
                f"{self.image}: holds several images ({found.rstrip(')')}); "
                f"name one as {transport}:{where}:REF"
            ) from None

    def _full_reference(self, wanted: LocalName) -> str:
        if self.image.name is None:
            return _UNNAMED
        if self.image.transport == "docker-archive":
            return wanted.full_reference
        return self.image.name
