"""The backends lazyfs knows, by the names the CLI and Mesos use."""

from __future__ import annotations

from pathlib import Path

from backends.base import Backend
from backends.bind import BindBackend
from backends.copy import CopyBackend
from providers.errors import BackendError

NAMES = ("copy", "bind")


def make_backend(name: str, layers_dir: Path) -> Backend:
    """The backend called ``name``; ``layers_dir`` holds per-layer data it may share."""
    if name == "copy":
        return CopyBackend()
    if name == "bind":
        return BindBackend(layers_dir)
    raise BackendError(f"unknown backend {name!r}; known: {', '.join(NAMES)}")


def default_backend_name() -> str:
    """What provision uses when no backend is named: copy, until overlay exists."""
    return "copy"
