"""Backends load no FUSE, index or tree code: data flows one way (DESIGN.md, section 1).

Each module of ``backends`` is imported alone in a fresh interpreter and the
modules it loaded are read back.  No backend loads pyfuse3, ``lazyfs.index``,
``lazyfs.tree`` or ``lazyfs.blobs``; the fuse backend loads of lazyfs only the
light public mount API; every other backend loads nothing of lazyfs at all, nor
does ``backends.names``, which loads a backend when it is asked for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    f"backends.{path.stem}" for path in (ROOT / "backends").glob("*.py") if path.stem != "__init__"
)
# Those that start mounts through the mount API.
MOUNTING = {"backends.fuse"}
# The mount API, its unmount, its wire format, the client of the mount server it starts
# mount processes through, and the light values and start-up of the cache
# daemon it reads remote layers through (and where its socket is).
MOUNT_API = {
    "lazyfs",
    "lazyfs.fs",
    "lazyfs.fs.mount",
    "lazyfs.fs.mount_server_client",
    "lazyfs.fs.mount_server_wire",
    "lazyfs.fs.mount_peers",
    "lazyfs.fs.mount_wire",
    "lazyfs.fs.unmount",
    "lazyfs.cache",
    "lazyfs.cache.layout",
    "lazyfs.cache.remote",
    "lazyfs.cache.spawn",
}
HEAVY = ("pyfuse3", "lazyfs.index", "lazyfs.tree", "lazyfs.blobs")


def loaded_by(module: str) -> set[str]:
    """Every module a fresh interpreter has loaded after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_every_backend_module_is_checked() -> None:
    assert {"backends.copy", "backends.fuse", "backends.overlay", "backends.names"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_a_backend_module_loads_no_fuse_index_or_tree_code(module: str) -> None:
    loaded = loaded_by(module)
    assert module in loaded
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == []
    of_lazyfs = {m for m in loaded if m == "lazyfs" or m.startswith("lazyfs.")}
    assert of_lazyfs == (MOUNT_API if module in MOUNTING else set())
