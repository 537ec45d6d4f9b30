"""Writable lazyfs mounts of test layers, and kernel overlayfs mounts of the same layers.

``CowMounts(tmp_path)`` builds layers from ``tests.support.images`` entries
and mounts them copy-on-write, each mount with an upper and work of its own
(``mount``; the blobs go into a store under ``tmp_path``), or mounts kernel
overlayfs over the same layers, extracted into that store, with a fresh
upper or one a lazyfs mount left (``overlay``), as the reference a writable
mount is compared with.  ``close`` takes every mount down, lazyfs' and the
kernel's, and checks that the mount processes are gone; a fixture calls it
whatever the test did.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.apply import LayerFile
from backends.extracted import extracted_layer
from backends.overlay import overlay_usable
from lazyfs.fs import mount as lazy_mount
from lazyfs.store.disk import Store
from providers.manifest import Layer
from tests.support.blob_sources import store_files
from tests.support.fuse_mounts import need_fuse, unmount_all
from tests.support.images import Entry, write_layer


@dataclass(frozen=True)
class Cow:
    """One writable lazyfs mount: where it is, its upper, its process, its layers."""

    root: Path
    upper: Path
    pid: int
    layers: list[LayerFile]
    work: Path
    descriptors: tuple[Layer, ...]


class CowMounts:
    """The mounts one test makes under ``tmp_path`` (see the module docstring)."""

    def __init__(self, tmp_path: Path) -> None:
        need_fuse()
        self.tmp_path = tmp_path
        self.store = Store(tmp_path / "store")
        self.log = tmp_path / "mount.log"
        self._made: list[tuple[Path, int]] = []
        self._overlays: list[Path] = []

    def mount(self, layers: Sequence[Sequence[Entry]], *, debug: bool = False) -> Cow:
        """``layers`` mounted writable, with a fresh upper and work; logs go to ``log``.

        Each layer's entries become a tar blob of its own in ``store``, bottom first.
        """
        blobs = [write_layer(entries, self._fresh("layer", ".tar")) for entries in layers]
        found = store_files(self.store, blobs)
        upper, work = self._fresh("upper"), self._fresh("work")
        upper.mkdir()
        work.mkdir()
        return self._mount(tuple(found), upper, work, debug=debug)

    def mount_again(self, cow: Cow) -> Cow:
        """``cow``'s layers mounted writable at a new place, over the upper and work it used."""
        return self._mount(cow.descriptors, cow.upper, cow.work, debug=False)

    def _mount(self, found: tuple[Layer, ...], upper: Path, work: Path, *, debug: bool) -> Cow:
        root = self._fresh("root")
        root.mkdir()
        pid = lazy_mount.mount(
            found,
            root,
            store=self.store.root,
            log_path=self.log,
            upper=upper,
            work=work,
            debug=debug,
        )
        self._made.append((root, pid))
        files = [LayerFile(layer.digest, self.store.blob_path(layer.digest)) for layer in found]
        return Cow(root, upper, pid, files, work, found)

    def unmount(self, cow: Cow) -> None:
        """Take ``cow`` down now (``close`` checks that it went)."""
        lazy_mount.unmount(cow.root, pid=cow.pid)

    def overlay(self, layers: Sequence[LayerFile], upper: Path | None = None) -> Path:
        """Kernel overlayfs over ``layers`` with ``upper`` (fresh if None), ``metacopy=on``.

        ``metacopy=on`` (which turns ``redirect_dir`` on) reads the
        metacopies and redirects a lazyfs upper holds.  Skips where
        overlayfs does not work.
        """
        probe = self._fresh("probe")
        probe.mkdir()
        if not overlay_usable(probe):
            pytest.skip("needs overlayfs")
        lowers = [
            str(extracted_layer(self.store.layers, self.store.tmp, layer, "overlay"))
            for layer in layers
        ]
        if upper is None:
            upper = self._fresh("kernel-upper")
            upper.mkdir()
        point, work = self._fresh("kernel"), self._fresh("kernel-work")
        point.mkdir()
        work.mkdir()
        options = f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work}"
        options += ",metacopy=on"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, point], check=True)
        self._overlays.append(point)
        return point

    def close(self) -> None:
        """Unmount everything made here; raise if a lazyfs mount or its process stayed."""
        for point in reversed(self._overlays):
            subprocess.run(["umount", point], check=False)
        unmount_all(self._made)

    def _fresh(self, stem: str, suffix: str = "") -> Path:
        """A name under ``tmp_path`` not taken yet."""
        n = 0
        while (self.tmp_path / f"{stem}{n}{suffix}").exists():
            n += 1
        return self.tmp_path / f"{stem}{n}{suffix}"
