"""glibc's own libraries found by their sonames, without ``/sbin/ldconfig -p``.

``ctypes.util.find_library`` runs ``/sbin/ldconfig -p`` on Linux at every
call: a subprocess that prints the whole linker cache, some 30-100 ms.
trio calls it once as it is imported, for ``"pthread"``
(``trio/_core/_thread_cache.py``: it loads the library it names with
``ctypes.CDLL`` and looks up ``pthread_setname_np``, to name its worker
threads; with no answer it tries ``libc.so``, and with no library it names
no threads). So every lazyfs process that loads trio (the CLI, the cache
daemon, the mount server, each mount process and the process that adopts a
lazy start's layers) paid a subprocess at start.

glibc's sonames are part of its ABI: ``libc.so.6``, ``libpthread.so.0``
and the rest have been those since glibc 2.1. ``find_library`` here answers
the libraries glibc ships with their soname, once the running C library
says it is glibc (``confstr(_CS_GNU_LIBC_VERSION)``, which musl and the
others do not answer) and the dynamic linker loads that soname, which is
what a ``ctypes.CDLL`` of the name ``ldconfig`` gives would load. Anything
else (another name, another C library, a soname that does not load, as on
the few architectures where libc is ``libc.so.6.1``) is asked of the
standard ``find_library`` as before.

``install`` puts it in place of ``ctypes.util.find_library`` for the whole
process; the entry points of lazyfs' processes call it before anything
loads trio. Idempotent, and harmless to call anywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

__all__ = ["GLIBC_SONAMES", "find_library", "install", "is_glibc"]

# The sonames of the libraries glibc itself ships (its ABI; see the docstring).
GLIBC_SONAMES = {
    "c": "libc.so.6",
    "pthread": "libpthread.so.0",
    "m": "libm.so.6",
    "dl": "libdl.so.2",
    "rt": "librt.so.1",
    "util": "libutil.so.1",
    "resolv": "libresolv.so.2",
    "crypt": "libcrypt.so.1",
}

_standard: Callable[[str], str | None] = ctypes.util.find_library
_loaded: dict[str, bool] = {}


def is_glibc() -> bool:
    """Whether this process runs on glibc (which answers ``_CS_GNU_LIBC_VERSION``)."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # a name this platform's confstr does not know
        return False
    return version is not None and version.startswith("glibc ")


def find_library(name: str) -> str | None:
    """``ctypes.util.find_library(name)``, without a subprocess for glibc's own libraries."""
    soname = GLIBC_SONAMES.get(name)
    if soname is not None and is_glibc() and _loads(soname):
        return soname
    return _standard(name)


def install() -> None:
    """Answer ``ctypes.util.find_library`` with ``find_library`` in this process."""
    ctypes.util.find_library = find_library


def _loads(soname: str) -> bool:
    """Whether the dynamic linker loads ``soname`` (already loaded, for libc: no disk read)."""
    found = _loaded.get(soname)
    if found is None:
        try:
            ctypes.CDLL(soname)
            found = True
        except OSError:
            found = False
        _loaded[soname] = found
    return found
