"""The Appc image store and simple discovery.

Layout under the store root (``--appc_store_dir``), as Mesos keeps it but
with the image as one uncompressed tar instead of an extracted ``rootfs/``
(layers are made from it, and extracted trees live in the shared store)::

    images/sha512-<hex>/manifest     the image's manifest, as in the ACI
    images/sha512-<hex>/image.aci    the ACI, uncompressed: its SHA-512 is the id
    tmp/                             partial writes, named <pid>.<random>

The root and these directories are closed to other users (``0700``, see
``providers.private_dir``): an ACI holds its image's setuid files.

An image directory is built in ``tmp/`` and renamed into place; two
processes adding the same image both succeed and one copy stays.  A record
is used only when its ``image.aci`` is there and its SHA-512 is the id
(checked once per file and store): one without it (as Mesos keeps images,
``manifest`` and an extracted ``rootfs/``), truncated or otherwise damaged
is passed over with a warning, so discovery fetches the image again, and
adding it replaces the record: exchanged with the new one in one rename
(``renameat2``'s RENAME_EXCHANGE) where the kernel and file system allow,
else moved aside into ``tmp/`` and the new one renamed in after it.

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
import ctypes
import errno
import hashlib
import io
import logging
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from providers.aci import AciInfo, read_aci
from providers.appc_manifest import AciManifest, parse_aci_manifest
from providers.appc_manifest import image_id as image_id_of
from providers.errors import BadImage, LazyfsError
from providers.http_session import redact
from providers.layer_limits import LayerLimits
from providers.private_dir import private_dir, private_file, write_private
from providers.retry import checkpoint

DEFAULTS_KEYS = ("os", "arch", "version")
# uname's machine to the App Container spec's Linux arch label.  The spec
# keeps the kernel's own names for ARM (aarch64, armv7l...), unlike OCI's
# arm64/arm: only the x86 names differ.
_ARCH = {"x86_64": "amd64", "i686": "i386", "i586": "i386"}
log = logging.getLogger(__name__)


def host_arch() -> str:
    """The host's architecture as the App Container spec names it."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


# What a label may be to be spelled in a discovery location (semver's "+" included).
_LOCATION_WORD_RE = re.compile(r"[A-Za-z0-9._+~-]+")


def with_defaults(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` plus the spec's defaults for os, arch and version."""
    return {"os": "linux", "arch": host_arch(), "version": "latest", **labels}


def label_mismatch(
    manifest: AciManifest, labels: Mapping[str, str], implied: Collection[str] = DEFAULTS_KEYS
) -> tuple[str, str | None, str] | None:
    """The first label by which ``manifest`` is not what ``labels`` (with the defaults
    ``implied`` added) ask for: (key, the manifest's value or None, the value asked);
    None if it is.

    Lookup and discovery both judge by it, so that an image discovery keeps is one
    a lookup finds again; discovery implies no version (``AppcDiscoverySource``).
    """
    have = dict(manifest.labels)
    for key, value in with_defaults(labels).items():
        if key not in labels and key not in implied:
            continue
        got = have.get(key)
        if got is None and key in DEFAULTS_KEYS and key not in labels:
            continue
        if got != value:
            return key, got, value
    return None


def matches(manifest: AciManifest, name: str, labels: Mapping[str, str]) -> bool:
    return manifest.name == name and label_mismatch(manifest, labels) is None


class AppcStore:
    def __init__(self, root: Path, limits: LayerLimits | None = None) -> None:
        self.root = root
        self.limits = limits or LayerLimits()  # what an ACI may unpack to, as a layer
        self.images = root / "images"
        self.tmp = root / "tmp"
        # Parsed manifests by image id, in a ``for_one_fetch`` copy only.
        self._parsed: dict[str, AciManifest] | None = None
        # Shared with ``for_one_fetch`` copies: the image.aci files whose
        # SHA-512 was found to be their id (id, device, inode, size, mtime),
        # and the broken records warned about once already.
        self._verified: set[tuple[str, str]] = set()
        self._warned: set[str] = set()
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

    def manifest(self, image_id: str, *, checked: bool = True) -> AciManifest | None:
        """The manifest of the stored image ``image_id``, or None if absent or unusable.

        Unusable: the record cannot be read, or (unless not ``checked``) has no
        ``image.aci`` whose SHA-512 is its id; a warning names it, and fetching
        the image again replaces it.  BadImage for a manifest that is not one.
        """
        manifest = self._parsed.get(image_id) if self._parsed is not None else None
        if manifest is None:
            try:
                data = (self.images / image_id / "manifest").read_bytes()
            except FileNotFoundError:
                return None
            except OSError as error:  # a file named like a record, a record closed to us
                self._passed_over(image_id, f"its manifest cannot be read: {error.strerror}")
                return None
            manifest = parse_aci_manifest(data)
            if self._parsed is not None:
                self._parsed[image_id] = manifest
        if checked and (problem := self._aci_problem(image_id)):
            self._passed_over(image_id, problem)
            return None
        return manifest

    def _aci_problem(self, image_id: str) -> str:
        """What is wrong with the stored ``image.aci`` of ``image_id``; empty if nothing.

        Hashed whole once, ever: a truncated ACI may still read as a shorter
        archive, and only its id tells. Then ``VERIFIED`` in the record notes
        the inode, size, mtime and ctime it had (``add`` writes it for what it
        hashed as it wrote), so later lookups, in any process, cost a stat.
        """
        mark = self.images / image_id / VERIFIED
        try:
            with self.aci_path(image_id).open("rb") as aci:
                stat = os.fstat(aci.fileno())
                key = (image_id, f"{stat.st_dev} {_note(stat)}")  # as the note, and the device
                if key in self._verified or _noted(mark) == _note(stat):
                    return ""
                hasher = hashlib.sha512()
                while chunk := aci.read(CHUNK):
                    checkpoint()
                    hasher.update(chunk)
        except FileNotFoundError:
            if (self.images / image_id / "rootfs").is_dir():
                return "it has no image.aci (an extracted rootfs/, as Mesos keeps it, is not read)"
            return "it has no image.aci"
        except OSError as error:
            return f"its image.aci cannot be read: {error.strerror}"
        if image_id_of(hasher.hexdigest()) != image_id:
            return "its image.aci is truncated or damaged (its SHA-512 is not the id)"
        self._verified.add(key)
        with contextlib.suppress(OSError):  # a store read-only to us: hashed again next time
            write_private(mark, _note(stat).encode())
        return ""

    def _passed_over(self, image_id: str, why: str) -> None:
        if image_id not in self._warned:  # one line per record, however often it is looked at
            self._warned.add(image_id)
            log.warning(
                "appc store: passing over %s: %s; fetching the image again replaces it",
                self.images / image_id,
                why,
            )

    def find(self, name: str, labels: Mapping[str, str]) -> str | None:
        """The id of a stored image named ``name`` with ``labels`` (defaults added)."""
        for home in sorted(self.images.iterdir()):
            try:
                if not home.is_dir():
                    continue  # a stray file (images/broken.aci) is no record
                # Matched first, checked after: a lookup hashes no other image's ACI.
                named = self.manifest(home.name, checked=False)
                if named is None or not matches(named, name, labels):
                    continue
                if self.manifest(home.name) is None:
                    continue
            except (LazyfsError, OSError):
                continue  # a damaged record is no match; adding the image replaces it
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
                written = os.fstat(out.fileno())
            write_private(scratch / VERIFIED, _note(written).encode())  # hashed as it was written
            if wanted is not None:
                wanted(info)
            with private_file(scratch / "manifest") as out:
                out.write(info.manifest_bytes)
            try:
                self._put(scratch, info.image_id)
                # Its SHA-512 was just taken as it was written: not hashed again on lookup.
                self._verified.add((info.image_id, f"{written.st_dev} {_note(written)}"))
            except OSError as error:
                # EACCES, EXDEV...: the image is not in the store.
                raise OSError(
                    error.errno,
                    f"appc store: cannot keep {what}: {error.strerror}",
                    str(self.images / info.image_id),
                ) from None
            return info
        finally:
            if scratch.is_dir() and not scratch.is_symlink():
                shutil.rmtree(scratch, ignore_errors=True)
            else:  # a stray file that was at the record's place, exchanged here
                with contextlib.suppress(OSError):  # never in place of what the add came to
                    scratch.unlink()

    def _put(self, scratch: Path, image_id: str) -> None:
        """Make the checked record ``scratch`` the record of ``image_id``.

        One already there may be broken (see ``manifest``): it is replaced,
        as a whole one is (same bytes), so that asking again always repairs.
        ``scratch`` ends up holding the old record, or nothing, for the caller
        to remove.
        """
        target = self.images / image_id
        try:
            os.rename(scratch, target)
            return
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
        if _exchange(scratch, target):
            return
        # No atomic exchange here: a whole record stays (same bytes, and
        # readers never see none); a broken one is moved aside, then ours
        # renamed in, with a moment between when there is none.
        with contextlib.suppress(LazyfsError):  # a manifest that is none: broken
            if self.manifest(image_id) is not None:
                return
        aside = Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{os.getpid()}.")) / "old"
        try:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                os.rename(target, aside)
            try:
                os.rename(scratch, target)
            except OSError as error:
                # Another process put its copy in between: same bytes.
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
                    raise
        finally:
            shutil.rmtree(aside.parent, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap the paths ``first`` and ``second`` in one step; False where that cannot be done.

    Linux's renameat2(RENAME_EXCHANGE), which Python's os lacks: a kernel or
    C library without it, a file system that refuses it (overlayfs: EXDEV for
    a record in a lower layer), a seccomp filter (EPERM), or a record gone
    meanwhile (ENOENT): False, whatever the reason, for the fallback to cope.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    return bool(done == 0)


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


CHUNK = 1 << 16
VERIFIED = "verified"  # in a record: the image.aci whose SHA-512 was its id, by size and mtime


def _note(stat: os.stat_result) -> str:
    # The ctime too: no one sets it, and any write or copy moves it (size and mtime
    # survive an in-place change put back with utime, and cp -a).
    return f"{stat.st_ino} {stat.st_size} {stat.st_mtime_ns} {stat.st_ctime_ns}\n"


def _noted(mark: Path) -> str | None:
    try:
        return mark.read_text()
    except (OSError, UnicodeDecodeError):
        return None
