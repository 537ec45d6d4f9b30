"""The backends lazyfs knows, by the names the CLI and Mesos use."""

from __future__ import annotations

from pathlib import Path

from backends.base import Backend
from backends.bind import BindBackend
from backends.copy import CopyBackend
from providers.errors import BackendError

NAMES = ("copy", "bind")


def make_backend(name: str, layers_dir: Path, tmp_dir: Path) -> Backend:
    """The backend called ``name``.

    ``layers_dir`` holds per-layer data backends share between containers;
    ``tmp_dir`` is scratch space on the same filesystem, cleaned by recover.
    """
    if name == "copy":
        return CopyBackend()
    if name == "bind":
        return BindBackend(layers_dir, tmp_dir)
    raise BackendError(f"unknown backend {name!r}; known: {', '.join(NAMES)}")


def default_backend_name() -> str:
    """What provision uses when no backend is named: copy, until overlay exists."""
    return "copy"
