"""Image GC: one pass (``gc_pass``), ``images prune`` (``prune``), ``images rm`` (``remove``).

What a layer is in the store: its blob ``blobs/<algo>/<hex>`` and its
directory ``layers/<hex>/`` (diff_id record, index and what it points into,
extracted trees, merged trees kept for images whose top layer it is).  An
image is its record ``images/<key>.json``, whose mtime is its last use
(``lazyfs.store.disk``).

A pass, under the store's usage lock held exclusively (no provision is
between looking at the store and writing its record meanwhile:
``lazyfs.store.usage_lock``):

1. finishes what a killed pass left in ``gc/``, and ``tmp/`` files of
   processes that are gone; removes the lock files of blobs, images and
   adoptions no process holds (``lazyfs.store.lock_sweep``);
2. removes stale leftovers (``lazyfs.gc.stale``), whatever the room;
3. while the store's filesystem has less than the headroom free, removes,
   one at a time: layers no image record names (oldest first), then images
   by their last use, oldest first, each with its layers that no other
   record names.  Never an image a container uses (rootfs or volume), nor
   one the config excludes, nor a layer any of those has or a live mount
   serves (``lazyfs.gc.uses``), nor anything while what some mount uses
   is unknown; a layer whose directory is locked (being
   extracted or indexed) is left for the next pass.

It stops as soon as there is room.  An image record goes before its
layers: a pass killed in between leaves layers no record names, which the
next pass takes first, and never a record whose layers are half gone.
Every removal is a move into ``gc/`` first (``lazyfs.gc.trash``).
``prune`` is a pass that does not stop for room; ``remove`` takes the
named images (refusing, before removing anything, one that is used or not
there) and the layers no other record names.  Blocking.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.gc.config import GcConfig, reference_forms
from lazyfs.gc.stale import remove_stale
from lazyfs.gc.trash import Trash
from lazyfs.gc.uses import InUse, in_use
from lazyfs.store.disk import Store
from lazyfs.store.lock_sweep import sweep_locks
from lazyfs.store.usage_lock import collecting
from providers.digest import Digest, is_digest
from providers.errors import Conflict, NotFound
from providers.fslock import try_exclusive_lock
from providers.manifest import ImageManifest
from providers.private_dir import private_dir

StaleTree = Callable[[str], bool]
_ALGORITHMS = {64: "sha256", 128: "sha512"}


@dataclass(frozen=True)
class Space:
    """The store's filesystem: bytes free (to unprivileged users, as df shows) and in all."""

    free: int
    total: int

    def has(self, headroom: float) -> bool:
        return self.free >= headroom * self.total


def space(root: Path) -> Space:
    stats = os.statvfs(root)
    return Space(stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize)


@dataclass
class Report:
    """What a pass (or rm, prune) removed, and the room before and after."""

    before: Space
    after: Space | None = None
    headroom: float | None = None
    images: list[str] = field(default_factory=list)  # "REFERENCE (PLATFORM)"
    layers: list[tuple[Digest, int]] = field(default_factory=list)  # and bytes freed
    stale: list[str] = field(default_factory=list)  # store-relative paths
    skipped: list[Digest] = field(default_factory=list)  # locked layers, for the next pass
    freed: int = 0

    @property
    def reached(self) -> bool:
        return self.headroom is None or (self.after or self.before).has(self.headroom)


@dataclass(frozen=True)
class StoredImage:
    path: Path
    manifest: ImageManifest
    used: float  # mtime: last use

    @property
    def name(self) -> str:
        platform = self.manifest.platform
        return f"{self.manifest.reference} ({platform})" if platform else self.manifest.reference

    @property
    def key(self) -> tuple[str, str]:
        return self.manifest.reference, self.manifest.platform


class _Pass:
    """The state of one pass, rm or prune, under the exclusive usage lock."""

    def __init__(
        self,
        store: Store,
        work_dir: Path,
        stale_tree: StaleTree,
        on_move: Callable[[str], None] | None,
    ) -> None:
        self.store = store
        private_dir(store.gc_dir)
        self.trash = Trash(store.root, store.gc_dir, on_move)
        self.report = Report(space(store.root))
        left = self.trash.empty()
        if left:
            self.report.stale.append(f"gc/ ({left} entries a stopped pass left)")
        store.clean_tmp()
        self.uses: InUse = in_use(work_dir, store.root)
        self.report.stale += remove_stale(store, self.trash, stale_tree, self.uses.images)
        sweep_locks(store.locks)  # not reported: lock files of images pulled or adopted
        self.images = [
            StoredImage(path, manifest, _mtime(path))
            for path, manifest in store.records()
            if manifest is not None
        ]
        self.named = Counter(d for image in self.images for d in _digests(image.manifest))

    def kept_layers(self, config: GcConfig | None) -> set[Digest]:
        kept = set(self.uses.layers)
        for image in self.images:
            if self.protects(image, config):
                kept.update(_digests(image.manifest))
        return kept

    def protects(self, image: StoredImage, config: GcConfig | None) -> bool:
        users = self.uses.image_users(*image.key, _digests(image.manifest))
        return bool(users) or (
            config is not None and config.excludes(image.manifest.reference, image.manifest.digest)
        )

    def orphans(self, kept: set[Digest]) -> list[Digest]:
        """Layers present that no image record names and nothing keeps, oldest first."""
        if self.uses.unknown:
            return []  # a user whose layers are unknown may use any of them
        present: dict[Digest, float] = {}
        for algo_dir in self.store.blobs.iterdir():
            if not algo_dir.is_dir():
                continue  # not the store's (a note left there): neither a blob nor a reason to stop
            for blob in algo_dir.iterdir():
                if is_digest(digest := f"{algo_dir.name}:{blob.name}"):
                    present[Digest(digest)] = _mtime(blob)
        for home in self.store.layers.iterdir():
            algo = _ALGORITHMS.get(len(home.name))
            if algo is not None and home.is_dir():
                digest = Digest(f"{algo}:{home.name}")
                present[digest] = max(present.get(digest, 0.0), _mtime(home))
        found = [d for d in present if d not in kept and self.named[d] == 0]
        return sorted(found, key=lambda d: (present[d], d))

    def drop_image(self, image: StoredImage, kept: set[Digest]) -> None:
        """Remove ``image``'s record, then its layers no other record names and nothing keeps."""
        self.report.freed += self.trash.discard(image.path)
        self.report.images.append(image.name)
        self.images.remove(image)
        for digest in _digests(image.manifest):
            self.named[digest] -= 1
        for digest in dict.fromkeys(_digests(image.manifest)):
            if digest not in kept and self.named[digest] <= 0:
                self.drop_layer(digest)

    def drop_layer(self, digest: Digest) -> None:
        """Remove the blob and the directory of ``digest``, unless its directory is locked."""
        algo, _, hexdigest = digest.partition(":")
        home = self.store.layers / hexdigest
        blob = self.store.blobs / algo / hexdigest
        if home.is_dir():
            with try_exclusive_lock(home / "lock") as free:
                if not free:
                    self.report.skipped.append(digest)
                    return
                # Blob first: a layer directory without its blob is only a cache of it.
                freed = self.trash.discard(blob) + self.trash.discard(home)
        else:
            freed = self.trash.discard(blob)
        self.report.freed += freed
        self.report.layers.append((digest, freed))

    def finish(self, headroom: float | None) -> Report:
        self.report.after = space(self.store.root)
        self.report.headroom = headroom
        return self.report


# Given the digests of the layers a pass removed, before it lets go of the store: what else
# keeps their blobs (the cache daemon's chunks) goes before a start may want them again.
Removed = Callable[[list[Digest]], object]


def gc_pass(
    store: Store,
    work_dir: Path,
    config: GcConfig,
    *,
    stale_tree: StaleTree,
    on_move: Callable[[str], None] | None = None,
    removed: Removed | None = None,
) -> Report:
    """One GC pass (the module docstring): until ``config.headroom`` of the filesystem is free."""
    return _collect(store, work_dir, config, stale_tree, on_move, config.headroom, removed)


def prune(
    store: Store,
    work_dir: Path,
    config: GcConfig | None,
    *,
    stale_tree: StaleTree,
    on_move: Callable[[str], None] | None = None,
    removed: Removed | None = None,
) -> Report:
    """Remove every image and layer nothing uses (nor ``config`` excludes), and leftovers."""
    return _collect(store, work_dir, config, stale_tree, on_move, None, removed)


def _collect(
    store: Store,
    work_dir: Path,
    config: GcConfig | None,
    stale_tree: StaleTree,
    on_move: Callable[[str], None] | None,
    headroom: float | None,
    removed: Removed | None,
) -> Report:
    with collecting(store.root):
        run = _Pass(store, work_dir, stale_tree, on_move)
        kept = run.kept_layers(config)

        def room() -> bool:
            return headroom is not None and space(store.root).has(headroom)

        def drop() -> None:
            for digest in run.orphans(kept):
                if room():
                    return
                run.drop_layer(digest)
            for image in sorted(run.images, key=lambda image: (image.used, image.name)):
                if room():
                    return
                if not run.protects(image, config):
                    run.drop_image(image, kept)

        drop()
        return _told(run.finish(headroom), removed)


def remove(
    store: Store,
    work_dir: Path,
    names: Sequence[str],
    *,
    stale_tree: StaleTree,
    on_move: Callable[[str], None] | None = None,
    removed: Removed | None = None,
) -> Report:
    """Remove the images ``names`` name (every platform of each) and their unused layers.

    A name is a reference as the command line gives it, or an image's
    manifest digest (``sha256:``, or an appc image's ``sha512:`` or its id
    ``sha512-``, and at least 12 hex digits): what ``images -q`` prints.  NotFound for
    a name no stored image has, Conflict for a digest prefix that names
    more than one image or for an image a container or a mount uses: then
    nothing is removed.
    """
    with collecting(store.root):
        run = _Pass(store, work_dir, stale_tree, on_move)
        chosen: dict[Path, StoredImage] = {}
        for name in names:
            for image in named(run.images, name):
                users = run.uses.image_users(*image.key, _digests(image.manifest))
                if users:
                    raise Conflict(
                        f"image {image.name} is used by {', '.join(users)}: "
                        "destroy (or unmount) it first; nothing was removed"
                    )
                chosen[image.path] = image
        kept = set(run.uses.layers)
        for image in run.images:
            if image.path not in chosen:
                kept.update(_digests(image.manifest))
        for image in chosen.values():
            run.drop_image(image, kept)
        return _told(run.finish(None), removed)


def _told(report: Report, removed: Removed | None) -> Report:
    """``report``, once ``removed`` was given the layers it removed (if any); the lock held."""
    if removed is not None and report.layers:
        removed([digest for digest, _ in report.layers])
    return report


def named(images: Sequence[StoredImage], name: str) -> list[StoredImage]:
    """The stored images ``name`` names; NotFound for none, Conflict for an ambiguous digest prefix.

    A reference names every platform stored under it, by design. A digest
    prefix names one manifest: two that share it are refused, as Docker
    refuses an ambiguous image ID, rather than removing both.
    """
    found = [image for image in images if _matches(image, name)]
    if not found:
        raise NotFound(f"no image {name} in the store")
    digests = sorted({image.manifest.digest for image in found})
    if _is_digest_prefix(name) and len(digests) > 1:
        raise Conflict(
            f"{name} is ambiguous: it starts {len(digests)} manifest digests "
            f"({', '.join(digests)}); give more of the digest; nothing was removed"
        )
    return found


def _is_digest_prefix(name: str) -> bool:
    # Both algorithms a stored image's digest has: an appc image's is its id
    # (``sha512:``), and ``images -q`` prints it for ``rm`` to take back.
    algorithm, colon, hex_digits = _as_digest(name).partition(":")
    return bool(colon) and algorithm in ("sha256", "sha512") and len(hex_digits) >= 12


def _as_digest(name: str) -> str:
    """``name``, with an appc image id (``sha512-HEX``, as appc and Mesos write it) as the
    digest it is stored by; a Docker repository so named would need to be all hex."""
    if name.startswith("sha512-") and all(c in "0123456789abcdef" for c in name[7:]):
        return "sha512:" + name[7:]
    return name


def _matches(image: StoredImage, name: str) -> bool:
    digest = image.manifest.digest
    if _is_digest_prefix(name):
        return digest.startswith(_as_digest(name))
    return image.manifest.reference in reference_forms(name)


def _digests(manifest: ImageManifest) -> tuple[Digest, ...]:
    return tuple(layer.digest for layer in manifest.layers)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
