"""The temporary files of work that may be given up while its threads still run.

A pull stores each layer in a worker thread, through a temporary file under
the store's ``tmp/`` that the thread removes itself on any error.  When the
pull ends early (Ctrl-C, SIGTERM, another layer's full disk), it does not
wait for those threads, which may be blocked in a network read for a long
time: it abandons them, and the process may exit before they get to their
clean-up.  ``Temps`` lets the side giving up remove their files instead.

Contract: ``staged`` makes a temporary file as ``staged_file`` does and
records it while it exists.  ``abandon`` (idempotent, from any thread)
removes every file recorded, and from then on every ``staged`` and ``check``
of that ``Temps`` raises ``Abandoned``, so a thread that runs on makes no
new file and stops copying at its next chunk.  A file is made and recorded
under one lock that ``abandon`` takes too: none escapes it.  A thread whose
file was removed under it fails to commit it (the rename finds nothing), so
nothing half written is ever published; a file committed already is at its
trusted name, where removing the temporary name finds nothing either.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from lazyfs.store.atomic import Staged, staged_file


class Abandoned(Exception):
    """Raised in a thread whose work was given up (``Temps.abandon``); nobody reads it."""


class Temps:
    """The temporary files one piece of work has open; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[Path] = set()
        self._abandoned = False

    def check(self) -> None:
        """Raise ``Abandoned`` if the work was given up."""
        if self._abandoned:
            raise Abandoned("the work was given up")

    def checking(self, progress: Callable[[int], None] | None) -> Callable[[int], None]:
        """``progress`` (None: nothing), after a ``check``: for a copy to call per chunk."""

        def counted(n: int) -> None:
            self.check()
            if progress is not None:
                progress(n)

        return counted

    @contextlib.contextmanager
    def staged(self, directory: Path, *, mode: int | None, prefix: str) -> Iterator[Staged]:
        """``staged_file(directory, ...)``, recorded for ``abandon`` while it exists."""
        made: list[Path] = []
        with contextlib.ExitStack() as stack:
            # Forgotten only after staged_file removed or committed it (exits run in reverse).
            stack.callback(self._forget, made)
            with self._lock:
                self.check()
                staged = stack.enter_context(staged_file(directory, mode=mode, prefix=prefix))
                made.append(staged.path)
                self._paths.add(staged.path)
            yield staged

    def _forget(self, made: list[Path]) -> None:
        with self._lock:
            self._paths.difference_update(made)

    def abandon(self) -> None:
        """Remove every temporary file open now, and refuse new ones; idempotent.

        Blocking, but a few unlinks: cheap enough for an event loop that is
        being cancelled and cannot wait for a thread.
        """
        with self._lock:
            self._abandoned = True
            paths, self._paths = self._paths, set()
        for path in paths:
            # Gone already (committed, or its thread removed it), or a filesystem
            # that went read-only: the next pull's clean-up (Store.clean_tmp) takes it.
            with contextlib.suppress(OSError):
                path.unlink()
