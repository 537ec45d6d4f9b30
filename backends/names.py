"""The backends lazyfs knows, by the names the CLI and Mesos use, and the default.

``default_backend_name`` chooses as the Mesos agent does when no backend is
named: overlay where the kernel has overlayfs and the store's filesystem can
hold its layers and upper directories, file types in its listings included
(probed once per store tmp directory and process with a tiny trial mount),
else copy, or fuse where that filesystem is mounted noexec (a copied rootfs
there runs nothing).  bind is never chosen by itself: it refuses images of
more than one layer; nor is fuse, lazyfs' own backend, elsewhere.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import Backend
from providers.errors import BackendError

if TYPE_CHECKING:
    from providers.layer_limits import LayerLimits

NAMES = ("copy", "bind", "overlay", "fuse")


def make_backend(
    name: str,
    *,
    store: Path,
    layers_dir: Path,
    tmp_dir: Path,
    limits: LayerLimits | None = None,
) -> Backend:
    """The backend called ``name``.

    ``store`` is the store's root, which the fuse backend's mount process
    reads; ``layers_dir`` holds per-layer data backends share between
    containers; ``tmp_dir`` is scratch space on the same filesystem, cleaned
    by recover; ``limits`` bounds how far a layer unpacks (default:
    ``LayerLimits()``).
    """
    # Each loaded when asked for: a command uses one backend, and the fuse
    # one loads none of the tar code the others unpack layers with.
    if name == "copy":
        from backends.copy import CopyBackend

        return CopyBackend(limits)
    if name == "bind":
        from backends.bind import BindBackend

        return BindBackend(layers_dir, tmp_dir, limits)
    if name == "overlay":
        from backends.overlay import OverlayBackend

        return OverlayBackend(layers_dir, tmp_dir, limits)
    if name == "fuse":
        from backends.fuse import FuseBackend

        return FuseBackend(store, limits)
    raise BackendError(f"unknown backend {name!r}; known: {', '.join(NAMES)}")


def default_backend_name(store_tmp: Path) -> str:
    """What provision uses when no backend is named, for the store whose tmp is ``store_tmp``."""
    if _overlay_usable(str(store_tmp.resolve())):
        return "overlay"
    # A copied rootfs on a noexec filesystem would provision and then run nothing
    # (``backends.copy.refuse_noexec``); a FUSE mount is a filesystem of its own.
    return "fuse" if os.statvfs(store_tmp).f_flag & os.ST_NOEXEC else "copy"


@functools.cache
def _overlay_usable(store_tmp: str) -> bool:
    from backends.overlay import overlay_usable

    return overlay_usable(Path(store_tmp))
