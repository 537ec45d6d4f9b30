"""The content-addressed store shared by every image and every container.

Layout under the store root::

    blobs/sha256/<hex>        verified blobs, written once, never changed
    images/<key>.json         resolved image metadata by reference; its mtime is
                              the image's last use (stored, or found for a provision)
    layers/<hex>/             per-layer data backends derive (extracted trees)
    layers/<hex>/diff_id      the checked digest of the blob's uncompressed tar
    locks/<name>.lock         flock(2) files: one writer per blob or reference
    tmp/                      partial writes, named <pid>.flock.<random>, flocked by their writer:
                              removed by it (``Temps``), or by a pull once unlocked (``clean_tmp``)
    gc/                       what image GC is removing (``lazyfs.gc``): moved here
                              whole first, so no trusted name is ever half removed

The root and these directories are closed to other users (``0700``, see
``providers.private_dir``): extracted layers hold images' setuid files.

Writes are atomic: bytes go to ``tmp/``, are verified and fsynced, then
renamed into place, so a crash never leaves a half blob at a trusted name.
A blob is fetched under an exclusive lock on its digest; a second process
that wants the same blob waits, then finds it present, so concurrent
provisions of one image pull it once.  A layer's diff_id (the image
config's digest of its uncompressed tar) is checked in the same pass as its
blob digest, and held against every image that names the blob.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import trio

from lazyfs.store.atomic import write_atomic
from lazyfs.store.usage_lock import in_use_async
from providers.digest import CHUNK, Digest, VerifyingReader, hex_part, parse_digest
from providers.errors import BadImage, DigestMismatch
from providers.fslock import exclusive_lock, remove_lock, try_exclusive_lock
from providers.locked_temps import locked_mkstemp, temp_prefix
from providers.manifest import ImageManifest, Layer
from providers.private_dir import private_dir

if TYPE_CHECKING:
    # Only ingesting needs the decompressors, tar limits and Temps, not a
    # mount process that finds its blobs here.
    from lazyfs.store.temps import Temps
    from providers.diff_id import DiffIdChecker
    from providers.tar_stream import LayerLimits

# The usage lock, where provisions take it with the other locks of the store.
__all__ = ["Progress", "Store", "StoredImage", "in_use_async", "locked_async"]

Progress = Callable[[int], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredImage:
    reference: str
    manifest: ImageManifest
    size: int


class Store:
    def __init__(self, root: Path, limits: LayerLimits | None = None) -> None:
        # Absolute: blob and layer paths go to mount processes and the kernel.
        root = root.absolute()
        self.root = root
        self._limits = limits
        self.blobs = root / "blobs"
        self.images_dir = root / "images"
        self.layers = root / "layers"
        self.locks = root / "locks"
        self.tmp = root / "tmp"
        for directory in (root, self.blobs, self.images_dir, self.layers, self.locks, self.tmp):
            private_dir(directory)
        # Where GC moves what it removes (``lazyfs.gc``), made here: GC may first run on a
        # full disk. An older store without it still opens there, or read-only.
        self.gc_dir = root / "gc"
        try:
            private_dir(self.gc_dir)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise

    @property
    def limits(self) -> LayerLimits:
        """A layer that would unpack past these is refused as it streams in."""
        if self._limits is None:
            from providers.tar_stream import LayerLimits

            self._limits = LayerLimits()
        return self._limits

    # -- blobs -------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        algo, hexdigest = digest.split(":", 1)
        return self.blobs / algo / hexdigest

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def ingest(
        self,
        layer: Layer,
        opener: Callable[[], BinaryIO],
        progress: Progress | None = None,
        temps: Temps | None = None,
    ) -> Path:
        """Make the blob ``layer.digest`` present, fetching it with ``opener`` if missing.

        Blocking. Idempotent. Bytes that are not what ``layer`` promises are
        fetched once more from their start (a fresh ``opener()``, an emptied
        temp file, a fresh hash), since a body corrupted on the way is seldom
        corrupted twice; a second mismatch raises DigestMismatch. Nothing
        unverified is ever stored. ``progress`` is told of both tries and
        takes back (a negative count) what the first one counted.
        ``temps``: the caller's, to give the fetch up from another thread
        (``Temps.abandon``: its temporary files go, and it stops at its next chunk).
        """
        from lazyfs.store.temps import Temps  # see TYPE_CHECKING above

        temps = temps or Temps()
        path = self.blob_path(layer.digest)
        if path.is_file():
            self._check_diff_id(layer, path, temps)
            return path
        with self.lock(f"blob-{hex_part(layer.digest)}", remove=True):
            if path.is_file():  # another process fetched it while we waited
                self._check_diff_id(layer, path, temps)
                return path
            private_dir(path.parent)
            log.debug("fetching blob %s (%d bytes)", layer.digest, layer.size)
            try:
                self._stage(layer, opener, progress, path, temps)
            except OSError as error:
                if error.filename is not None:
                    raise
                # A write's error names no file: "No space left on device" alone.
                raise OSError(
                    error.errno,
                    f"{error.strerror} while storing blob {layer.digest}",
                    str(self.tmp),
                ) from None
        return path

    def _stage(
        self,
        layer: Layer,
        opener: Callable[[], BinaryIO],
        progress: Progress | None,
        path: Path,
        temps: Temps,
    ) -> None:
        counted = temps.checking(progress)  # given up: no more copying into a removed file
        with temps.staged(self.tmp, mode=0o444, prefix=temp_prefix()) as staged:
            out = staged.file
            bound = self.limits.bound(layer.size)
            try:
                inflated = _copy_verified(layer, opener(), out, counted, bound)
            except DigestMismatch as exc:
                log.info("%s; fetching it again from its start", exc)
                if progress is not None:
                    progress(-out.tell())
                out.seek(0)
                out.truncate()
                inflated = _copy_verified(layer, opener(), out, counted, bound)
            # After the blob digest: its content, checked beside it, in the same pass.
            inflated.verify()
            self._record_diff_id(layer.digest, inflated.actual(), temps)
            staged.commit(path)

    def _diff_id_record(self, digest: Digest) -> Path:
        return self.layers / hex_part(digest) / "diff_id"

    def _record_diff_id(self, digest: Digest, diff_id: Digest, temps: Temps) -> None:
        record = self._diff_id_record(digest)
        private_dir(record.parent)
        with temps.staged(self.tmp, mode=0o600, prefix=temp_prefix()) as staged:
            staged.file.write(diff_id.encode())
            staged.commit(record)

    def _check_diff_id(self, layer: Layer, blob: Path, temps: Temps) -> None:
        """A stored blob must also be what *this* image's config says it is.

        Two images may share a blob and disagree about its diff_id; each is
        held to its own.  Blobs stored before diff_ids were recorded are
        read once to record theirs.
        """
        if layer.diff_id is None:
            return
        from providers.diff_id import diff_id_of

        try:
            known = Digest(self._diff_id_record(layer.digest).read_text())
        except FileNotFoundError:
            # No lock: the blob never changes, so racing readers write the same record.
            with blob.open("rb") as stream:
                bound = self.limits.bound(layer.size)
                known = diff_id_of(stream, f"layer {layer.digest}", bound)
            self._record_diff_id(layer.digest, known, temps)
        if known != layer.diff_id:
            raise DigestMismatch(
                f"layer {layer.digest} diff_id", expected=layer.diff_id, actual=known
            )

    # -- images ------------------------------------------------------------

    def _image_path(self, reference: str, platform: str) -> Path:
        key = reference if not platform else f"{reference}\n{platform}"
        return self.images_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def put_image(self, manifest: ImageManifest) -> None:
        """Record ``manifest`` by reference and platform, atomically replacing an older one."""
        data = json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode()
        target = self._image_path(manifest.reference, manifest.platform)
        write_atomic(target, data, mode=0o600, temp_dir=self.tmp, prefix=temp_prefix())

    def get_image(self, reference: str, platform: str = "") -> ImageManifest | None:
        """The stored manifest of ``reference`` for ``platform`` if it and its blobs are here.

        Found, it counts as used now (its record's mtime): image GC removes
        the images used longest ago first.
        """
        return self.find_image(reference, platform, lambda layer: self.has_blob(layer.digest))

    def find_image(
        self, reference: str, platform: str, present: Callable[[Layer], bool]
    ) -> ImageManifest | None:
        """``get_image``, but each layer need only be ``present``: a lazy start's own test
        (``lazyfs.images.docker_stored``), which takes what a mount reads by range."""
        path = self._image_path(reference, platform)
        try:
            manifest = _record(path.read_bytes())
        except FileNotFoundError:
            return None
        except DAMAGE as exc:
            raise BadImage(f"store record of {reference} is damaged: {exc}") from exc
        if not all(present(layer) for layer in manifest.layers):
            return None
        with contextlib.suppress(OSError):  # a read-only store still serves it
            os.utime(path)
        return manifest

    def image_record(self, reference: str, platform: str = "") -> Path:
        """Where the record of ``reference`` for ``platform`` is (or would be) kept."""
        return self._image_path(reference, platform)

    def records(self) -> list[tuple[Path, ImageManifest | None]]:
        """Every file under images/, with the image it records; None: damaged or stale.

        Stale: recorded under a key no lookup makes any more (``images`` skips it).
        """
        found: list[tuple[Path, ImageManifest | None]] = []
        for path in sorted(self.images_dir.glob("*.json")):
            try:
                manifest = _record(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, *DAMAGE):
                found.append((path, None))
                continue
            current = path == self._image_path(manifest.reference, manifest.platform)
            found.append((path, manifest if current else None))
        return found

    def images(self) -> list[StoredImage]:
        found = [
            StoredImage(manifest.reference, manifest, sum(layer.size for layer in manifest.layers))
            for _path, manifest in self.records()
            if manifest is not None
        ]
        return sorted(found, key=lambda image: image.reference)

    # -- plumbing ----------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, *, remove: bool = False) -> Iterator[None]:
        """Hold an exclusive flock named ``name``; released when the process dies.

        ``remove``: its file goes as it is released (``providers.fslock.remove_lock``),
        for a name seldom taken again, such as a blob's: one file per blob stayed.
        """
        path = self.locks / f"{name}.lock"
        with exclusive_lock(path):
            try:
                yield
            finally:
                if remove:
                    remove_lock(path)

    def lock_async(
        self, name: str, *, remove: bool = False
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """``lock`` for trio code: waiting for it yields, and a cancellation ends the wait."""
        return locked_async(self.locks / f"{name}.lock", remove=remove)

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A new file under tmp/, removed on exit unless renamed away."""
        fd, path = locked_mkstemp(self.tmp, temp_prefix())  # flocked: see clean_tmp
        with os.fdopen(fd, "wb") as out:
            try:
                yield path, out
            finally:
                # Removed before it is closed, which drops its lock.
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def clean_tmp(self) -> int:
        """Remove partial writes whose writers are gone, by their flocks
        (``lazyfs.store.temps.clean_tmp``); returns how many."""
        from lazyfs.store.temps import clean_tmp  # see TYPE_CHECKING above

        return clean_tmp(self.tmp)


# What a damaged image record raises as it is read (a field of the wrong JSON type too).
DAMAGE = (ValueError, KeyError, TypeError, AttributeError, BadImage)


def _record(data: bytes) -> ImageManifest:
    """The image a record holds; one of ``DAMAGE`` for a damaged one."""
    return manifest_of(json.loads(data))


def manifest_of(doc: dict[str, Any]) -> ImageManifest:
    """The image a record's JSON holds (``ImageManifest.to_json``'s, read back, in the store
    or a container's record); one of ``DAMAGE`` for a damaged one."""
    manifest = ImageManifest.from_json(doc)
    for layer in manifest.layers:
        parse_digest(layer.digest)  # named as a file of the store's blobs
    return manifest


def _copy_verified(
    layer: Layer,
    source: BinaryIO,
    out: BinaryIO,
    progress: Progress | None,
    bound: tuple[int, str],
) -> DiffIdChecker:
    """Copy ``source`` (closed after) to ``out``; DigestMismatch unless it is ``layer``'s blob.

    Returns the layer's diff_id check, fed every byte but not yet verified.
    """
    from providers.diff_id import DiffIdChecker

    inflated = DiffIdChecker(layer.diff_id, f"layer {layer.digest}", bound)
    with contextlib.closing(source) as raw:
        reader = VerifyingReader(raw, layer.digest, layer.size, f"blob {layer.digest}")
        while chunk := reader.read(CHUNK):
            out.write(chunk)
            inflated.feed(chunk)
            if progress is not None:
                progress(len(chunk))
        reader.verify()
    return inflated


# How often a wait for a lock another process holds looks again, at most.
_LOCK_POLL_MAX = 0.25


@contextlib.asynccontextmanager
async def locked_async(path: Path, *, remove: bool = False) -> AsyncIterator[None]:
    """``exclusive_lock(path)`` for trio code; ``remove`` as ``Store.lock``'s.

    The wait polls a non-blocking flock between trio sleeps, so Ctrl-C or
    SIGTERM end it at once, however long another process (a pull of the
    same image, a ``lazyfs run`` of the same container) keeps the lock.  A
    thread blocked in flock(2) could be neither cancelled nor abandoned
    without leaking the lock it might take later.
    """
    delay = 0.005
    while True:
        with try_exclusive_lock(path) as held:
            if held:
                try:
                    yield
                finally:
                    if remove:  # still held: a waiter that opened it opens the path again
                        remove_lock(path)
                return
        await trio.sleep(delay)
        delay = min(delay * 2, _LOCK_POLL_MAX)
