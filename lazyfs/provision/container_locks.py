"""Containers' lock files: one process at a time works on a container.

``locks/<cid>.lock`` is held while a process provisions or destroys the
container, and for its whole life by the process that runs it
(``Provisioner.hold``). Its holder removes it once the container is gone,
and ``sweep`` removes the ones no one holds: one per container ever made
would stay otherwise, thousands a day on an agent. Removing a lock file
its holder is done with is safe (``providers.fslock``): a process that
opened it before and locks it after opens the path again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from lazyfs.store.disk import locked_async
from providers.fslock import exclusive_lock, remove_lock, try_exclusive_lock
from providers.private_dir import write_private


class ContainerLocks:
    """The lock files in ``locks`` of the containers in ``containers``."""

    def __init__(self, locks: Path, containers: Path) -> None:
        self.locks = locks
        self.containers = containers

    def path(self, container_id: str) -> Path:
        return self.locks / f"{container_id}.lock"

    @contextlib.contextmanager
    def held(self, container_id: str) -> Iterator[None]:
        """The container's lock for the block, waited for, noted as a run's (``running``).
        Blocking."""
        with exclusive_lock(self.path(container_id)):
            note = self._note(container_id)
            try:
                write_private(note, f"{os.getpid()}\n".encode())
                yield
            finally:
                note.unlink(missing_ok=True)
                self._forget(container_id)

    def running(self, container_id: str) -> int | None:
        """The pid of the process that holds the container to run it (``held``); None if none
        does (a provision or destroy may hold its lock: for a while, not for a run's life)."""
        try:
            pid = int(self._note(container_id).read_text())
        except (OSError, ValueError):
            return None
        with self.tried(container_id) as free:
            if free:
                return None  # a run killed left its note
        # Held: by a run only if its note is still there (the lock's other holders
        # remove a killed run's as they take it, maybe since it was read above).
        return pid if self._note(container_id).exists() else None

    @contextlib.asynccontextmanager
    async def taken(self, container_id: str) -> AsyncIterator[None]:
        """``held`` for trio code: the wait ends at once when cancelled."""
        async with locked_async(self.path(container_id)):
            self._note(container_id).unlink(missing_ok=True)  # held now: a killed run's
            try:
                yield
            finally:
                self._forget(container_id)

    @contextlib.contextmanager
    def tried(self, container_id: str) -> Iterator[bool]:
        """The container's lock if it is free: yields whether it was (and is held)."""
        with try_exclusive_lock(self.path(container_id)) as free:
            if free:
                self._note(container_id).unlink(missing_ok=True)  # a killed run's
            try:
                yield free
            finally:
                if free:
                    self._forget(container_id)

    def sweep(self) -> None:
        """Remove the lock files no one holds (an older lazyfs kept one per container)."""
        for path in self.locks.glob("*.lock"):
            with try_exclusive_lock(path) as free:
                if free:
                    path.with_suffix(".run").unlink(missing_ok=True)  # a killed run's note
                    remove_lock(path)

    def _note(self, container_id: str) -> Path:
        """Where ``held`` notes the pid of the run that holds the container."""
        return self.locks / f"{container_id}.run"

    def _forget(self, container_id: str) -> None:
        """Remove the container's lock file, held, once the container is gone."""
        if not (self.containers / container_id).exists():
            remove_lock(self.path(container_id))
