"""The Appc image store and simple discovery.

Layout under the store root (``--appc_store_dir``), as Mesos keeps it but
with the image as one uncompressed tar instead of an extracted ``rootfs/``
(layers are made from it, and extracted trees live in the shared store)::

    images/sha512-<hex>/manifest     the image's manifest, as in the ACI
    images/sha512-<hex>/image.aci    the ACI, uncompressed: its SHA-512 is the id
    tmp/                             partial writes, named <pid>.<random>

The root and these directories are closed to other users (``0700``, see
``providers.private_dir``): an ACI holds its image's setuid files.

An image directory is built in ``tmp/`` and renamed into place, so one that
is present is complete and never changes; two processes adding the same
image both succeed and one copy stays.

Lookup (``find``) is by id, or by name and labels with the spec's defaults
(``os`` linux, ``arch`` the host's in AC naming, ``version`` latest) for
labels the request leaves out; an image without an ``os``, ``arch`` or
``version`` label matches the default.  Simple discovery
(``discovery_location``) names ``<prefix><name>-<version>-<os>-<arch>.aci``
as the spec's template and Mesos do: prefix and file name joined as strings,
the name's slashes kept.  Blocking.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlparse

import requests
import urllib3

from providers.aci import AciInfo, read_aci
from providers.appc_manifest import AciManifest, parse_aci_manifest
from providers.errors import BadImage, LazyfsError, NotFound, TemporaryFailure
from providers.http_session import new_session, redact, send
from providers.layer_limits import LayerLimits
from providers.private_dir import private_dir, private_file
from providers.retry import checkpoint, short_cause

DEFAULTS_KEYS = ("os", "arch", "version")
# uname's machine to the App Container spec's Linux arch label.  The spec
# keeps the kernel's own names for ARM (aarch64, armv7l...), unlike OCI's
# arm64/arm: only the x86 names differ.
_ARCH = {"x86_64": "amd64", "i686": "i386", "i586": "i386"}
HTTP_TIMEOUT = 60


def host_arch() -> str:
    """The host's architecture as the App Container spec names it."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


# What a label may be to be spelled in a discovery location (semver's "+" included).
_LOCATION_WORD_RE = re.compile(r"[A-Za-z0-9._+~-]+")


def with_defaults(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` plus the spec's defaults for os, arch and version."""
    return {"os": "linux", "arch": host_arch(), "version": "latest", **labels}


def matches(manifest: AciManifest, name: str, labels: Mapping[str, str]) -> bool:
    if manifest.name != name:
        return False
    have = dict(manifest.labels)
    for key, value in with_defaults(labels).items():
        got = have.get(key)
        if got is None and key in DEFAULTS_KEYS and key not in labels:
            continue
        if got != value:
            return False
    return True


class AppcStore:
    def __init__(self, root: Path, limits: LayerLimits | None = None) -> None:
        self.root = root
        self.limits = limits or LayerLimits()  # what an ACI may unpack to, as a layer
        self.images = root / "images"
        self.tmp = root / "tmp"
        # Parsed manifests by image id, in a ``for_one_fetch`` copy only.
        self._parsed: dict[str, AciManifest] | None = None
        for directory in (root, self.images, self.tmp):
            private_dir(directory)

    def for_one_fetch(self) -> AppcStore:
        """This store, but each stored manifest parsed once for as long as it is used.

        ``find`` parses every stored manifest; a fetch calls it per dependency
        (1,000 of them took 3,000 parses, a 1 MiB manifest each).  A stored image
        never changes, so its parse stays true; kept per fetch, not per store,
        so that a long-lived store holds no manifests.
        """
        copied = copy.copy(self)
        copied._parsed = {}
        return copied

    def aci_path(self, image_id: str) -> Path:
        return self.images / image_id / "image.aci"

    def manifest(self, image_id: str) -> AciManifest | None:
        """The manifest of the stored image ``image_id``, or None if absent."""
        if self._parsed is not None and image_id in self._parsed:
            return self._parsed[image_id]
        try:
            data = (self.images / image_id / "manifest").read_bytes()
        except FileNotFoundError:
            return None
        manifest = parse_aci_manifest(data)
        if self._parsed is not None:
            self._parsed[image_id] = manifest
        return manifest

    def find(self, name: str, labels: Mapping[str, str]) -> str | None:
        """The id of a stored image named ``name`` with ``labels`` (defaults added)."""
        for home in sorted(self.images.iterdir()):
            try:
                manifest = self.manifest(home.name)
            except LazyfsError:
                continue  # a damaged record is no match; adding the image replaces nothing
            if manifest is not None and matches(manifest, name, labels):
                return home.name
        return None

    def add(
        self, stream: BinaryIO, what: str, wanted: Callable[[AciInfo], None] | None = None
    ) -> AciInfo:
        """Read, check and keep the ACI ``stream``; returns what it is. Idempotent.

        ``wanted`` may refuse it (raise) before it is kept: a kept image is
        found by its name and labels (``find``), whoever asked for it.
        """
        scratch = Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{os.getpid()}."))
        try:
            # Made 0600, not 0666 less the umask: the store is private whatever it is.
            with private_file(scratch / "image.aci") as out:
                info = read_aci(stream, out, what, self.limits, _size_of(stream))
                out.flush()
                os.fsync(out.fileno())
            if wanted is not None:
                wanted(info)
            with private_file(scratch / "manifest") as out:
                out.write(info.manifest_bytes)
            target = self.images / info.image_id
            if not target.is_dir():
                try:
                    os.rename(scratch, target)
                except OSError as error:
                    # EEXIST, ENOTEMPTY: another process put it there first; same bytes.
                    # Anything else (EACCES, EXDEV...) left the image out of the store.
                    if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
                        raise OSError(
                            error.errno,
                            f"appc store: cannot keep {what}: {error.strerror}",
                            str(target),
                        ) from None
            return info
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def discovery_location(prefix: str, name: str, labels: Mapping[str, str]) -> str:
    """Where simple discovery finds ``name`` with ``labels``: a URL or a file path.

    BadImage when a value it spells in is not a plain word: a dependency's labels
    are the image's to choose, and ``/``, ``?``, ``#``, ``@`` or ``%`` in one would
    pick another file, path or host than the template's.
    """
    full = with_defaults(labels)
    for key in ("version", "os", "arch"):
        if not _LOCATION_WORD_RE.fullmatch(full[key]):
            raise BadImage(
                f"appc image {name}: the label {key}={full[key]!r} cannot be spelled"
                " in a discovery location"
            )
    file_name = f"{name}-{full['version']}-{full['os']}-{full['arch']}.aci"
    scheme = urlparse(prefix).scheme
    if scheme in ("http", "https"):
        return prefix + file_name
    local = prefix[len("file://") :] if scheme == "file" else prefix
    # Mesos joins prefix and file name as strings; a directory named without
    # its trailing slash is taken as meant.
    if not local.endswith("/") and Path(local).is_dir():
        local += "/"
    return local + file_name


def _size_of(stream: BinaryIO) -> int | None:
    """The compressed size of an ACI read from a file. None over HTTP: a server may
    claim any length, and the bound is judged on the bytes that came."""
    try:
        return os.fstat(stream.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


def shown(location: str) -> str:
    """``location`` as messages show it: a URL without credentials or query."""
    return redact(location) if urlparse(location).scheme in ("http", "https") else location


@contextlib.contextmanager
def open_location(location: str) -> Iterator[BinaryIO]:
    """Open a discovered ACI for reading: NotFound when it is not there.

    Over HTTP, the answer's headers must arrive within ``HTTP_TIMEOUT``
    seconds, and the body may go silent that long; TemporaryFailure (while
    opening, or from the stream's reads) says trying again may help. Not
    retried here: the caller retries the whole fetch (providers.appc_source).
    """
    if urlparse(location).scheme not in ("http", "https"):
        try:
            with open(location, "rb") as file:
                yield file
        except FileNotFoundError:
            raise NotFound(f"appc image {shown(location)} not found", url=location) from None
        return
    try:
        response = send(new_session(), "GET", location, seconds=HTTP_TIMEOUT)
    except requests.Timeout:
        raise TemporaryFailure(
            f"appc image {shown(location)}: no answer within {HTTP_TIMEOUT} s", url=redact(location)
        ) from None
    except requests.RequestException as error:
        raise TemporaryFailure(
            f"appc image {shown(location)}: {short_cause(error)}", url=redact(location)
        ) from None
    with contextlib.closing(response):
        status = response.status_code
        if status == 404:
            raise NotFound(
                f"appc image {shown(location)} not found (HTTP 404)", url=redact(location)
            )
        if status >= 500 or status == 429:
            raise TemporaryFailure(
                f"appc image {shown(location)}: HTTP {status}", url=redact(location), status=status
            )
        if status != 200:
            raise BadImage(f"appc image {shown(location)}: HTTP {status}")
        yield cast(BinaryIO, io.BufferedReader(_Body(response, location), CHUNK))


CHUNK = 1 << 16


class _Body(io.RawIOBase):
    """An HTTP answer's body as sent; a connection that breaks is a TemporaryFailure."""

    def __init__(self, response: requests.Response, location: str) -> None:
        super().__init__()
        self._raw = response.raw
        self._location = location

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        checkpoint()
        try:
            return int(self._raw.readinto(buffer))
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # Not an OSError: the ACI reader takes those for a damaged archive.
            raise TemporaryFailure(
                f"appc image {shown(self._location)}: {short_cause(error)}",
                url=redact(self._location),
            ) from error
