"""Taking a container's directory down: each rootfs by its backend, then the rest.

``remove_container`` is what ``destroy`` and ``recover`` do. Before it
removes anything it marks the container as being destroyed, durably
(``mark_destroying``): a destroy killed halfway, or one that failed, leaves a
container nothing takes for a provisioned one any more.  ``recover``
destroys it, named in ``--keep`` or not, as the agent that asked for the
destroy would ask again; ``lazyfs ps`` shows it ``destroying``.  After a
failed provision, ``remove_failed`` does it without raising over the
provision's own error: a clean-up that fails too leaves a half-done
container for ``destroy`` or ``recover``, and says so in the log.

``recover`` destroys many in one pass: it gives each ``remove_container``
one ``MountLook`` (``destroy_pass``), so the mount table is read once for
the pass and again only after it changed (an unmount of the container
before: once per container that had a mount), not several times for each.
The delete still never reaches through a mount: every look is current
(the kernel says whether the table changed since it was read), and
``remove_tree`` refuses a mount of another filesystem even one made after
the look.  A bind mount from the same filesystem made after it cannot be
told by ``remove_tree``; that was so with a read per container too.
``finish_recover`` sweeps what a pass leaves: lock files and partial writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from backends.base import Backend
from backends.mounts import MountLook, looking_through, unmount_all_under
from lazyfs.provision.container_locks import ContainerLocks
from lazyfs.provision.usage import DESTROYING
from lazyfs.store.atomic import sync_directory
from lazyfs.store.disk import Store
from lazyfs.store.lock_sweep import sweep_locks
from providers.errors import LazyfsError
from providers.fstree import remove_tree

log = logging.getLogger(__name__)


def remove_container(
    home: Path, backend_for: Callable[[str], Backend], look: MountLook | None = None
) -> None:
    """Destroy every rootfs under ``home`` with its backend, then ``home``. Blocking.

    ``home`` is marked first (``mark_destroying``): once this starts, the
    container is only ever destroyed, whatever stops it halfway.
    ``look``: the mount table of a pass over many (``destroy_pass``); None, read here.
    """
    with looking_through(look):
        _remove_container(home, backend_for)


def destroy_pass() -> MountLook:
    """The one look at the mount table a pass destroying many containers shares
    (``remove_container``); closed by the caller (a context manager)."""
    return MountLook()


def finish_recover(locks: ContainerLocks, store: Store) -> None:
    """What a ``recover`` pass sweeps last: containers' lock files no one holds, the
    store's (``sweep_locks``: one per blob, image or adoption ever locked, as GC
    sweeps them), and partial writes whose writers are gone. Blocking."""
    locks.sweep()
    sweep_locks(store.locks)
    store.clean_tmp()


def _remove_container(home: Path, backend_for: Callable[[str], Backend]) -> None:
    mark_destroying(home)
    backends_dir = home / "backends"
    if backends_dir.is_dir():
        for backend_dir in backends_dir.iterdir():
            rootfses = backend_dir / "rootfses"
            if not rootfses.is_dir():
                continue
            try:
                backend: Backend | None = backend_for(backend_dir.name)
            except LazyfsError:
                backend = None  # a name this version does not know: unmount only
            for rootfs in rootfses.iterdir():
                if backend is None:
                    unmount_all_under(rootfs)
                else:
                    backend.destroy(rootfs)
    # Whatever a backend missed (or a runtime left) is unmounted before the
    # delete, which must never reach through a mount into shared data.
    unmount_all_under(home)
    remove_tree(home)


def mark_destroying(home: Path) -> None:
    """Mark the container at ``home`` as being destroyed, durably, before any of it goes.

    Its record, ``info.json``, is renamed to ``destroying`` (atomic, so the
    container is provisioned or being destroyed, never both), and ``home``
    is fsynced, so the mark outlives a power cut as much as the removals
    after it.  Without a record (its provision died first) ``destroying``
    is an empty file.  The record moved stays readable where ``ps`` and
    image GC look (``lazyfs.provision.usage``): until the destroy is done,
    its rootfs may still be mounted over the images it names.  Idempotent.
    """
    marker = home / DESTROYING
    try:
        os.rename(home / "info.json", marker)
    except FileNotFoundError:
        marker.touch(mode=0o600)  # none, or a destroy before this one moved it
    sync_directory(home)


def remove_failed(home: Path, backend_for: Callable[[str], Backend], error: BaseException) -> None:
    """``remove_container`` after its provision failed with ``error``, which stays the one told.

    The record goes first, so that whatever the removal cannot take is
    half-done work to ``recover``, never a container that looks provisioned.
    """
    with contextlib.suppress(OSError):  # then the removal still tries
        (home / "info.json").unlink(missing_ok=True)
    try:
        remove_container(home, backend_for)
    except Exception as other:
        log.warning(
            "container %s is left half done (destroy or recover removes it): removing it after"
            " its provision failed (%s) failed too: %s",
            home.name,
            type(error).__name__,
            other,
        )
