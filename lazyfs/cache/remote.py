"""What a mount needs to know of layers that are still in a registry: light values, no I/O.

A provisioner that leaves some layers of an image remote (eStargz layers on
the fuse backend, read through the cache daemon) hands the backend a blob
source that also has ``remote``: a ``Remote`` naming, per layer digest, the
registry host and repository the daemon fetches it from, and how to reach
or start the daemon (``DaemonSpec``), and the key of the learned prefetch
trace (``trace_key``) the mount records or replays, if any. The mount API
passes them on to the mount process. A blob source without ``remote`` (or
with None) has every layer local.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from lazyfs.cache.spawn import DaemonSpec
from providers.digest import Digest


@dataclass(frozen=True)
class RemoteOrigin:
    """A blob's registry: ``host`` as the image reference names it, and the repository."""

    host: str
    repository: str


@dataclass(frozen=True)
class Remote:
    """The remote layers of one mount, by digest, and the daemon that reads them."""

    daemon: DaemonSpec
    origins: Mapping[Digest, RemoteOrigin] = field(default_factory=dict)
    # The image and command the mount's reads are traced for (``trace_key``).
    trace: str | None = None
    # Where the command's executable may be, in PATH order (``executable_paths``): the mount
    # reads the first that is there, and what it loads, ahead (``lazyfs.fs.predict``).
    executable: tuple[str, ...] = ()


def trace_key(
    image: Digest, entrypoint: Sequence[str], command: Sequence[str], working_dir: str
) -> str | None:
    """The key of the prefetch trace of running ``entrypoint`` + ``command`` in
    ``working_dir`` of image ``image`` (a manifest digest): ``sha256:<hex>@<32 hex>``.

    None for an image not named by a sha256 digest. What runs is hashed as
    the container runtime gets it: the entrypoint, then the command given
    or else the image's Cmd (the caller decides which), and the directory,
    an absolute one tidied as ``run -w`` tidies it (``/app/`` is ``/app``):
    the image's ``WorkingDir`` and a ``-w`` naming the same directory are
    one trace.
    """
    if not image.startswith("sha256:"):
        return None
    if working_dir.startswith("/"):
        working_dir = tidy_dir(working_dir)
    spelled = json.dumps([list(entrypoint), list(command), working_dir or "/"])
    return f"{image}@{hashlib.sha256(spelled.encode()).hexdigest()[:32]}"


def tidy_dir(path: str) -> str:
    """Absolute ``path`` as docker tidies a working directory: ``/a/../b/`` is ``/b``
    (and ``//b`` too, which ``posixpath.normpath`` keeps)."""
    return "/" + posixpath.normpath(path).lstrip("/")


# What runc searches when the image's Env has no PATH (as Docker's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_CANDIDATES = 16
_MAX_PATH = 4096


def executable_paths(argv: Sequence[str], env: Sequence[str], working_dir: str) -> tuple[str, ...]:
    """Where in the image the program ``argv`` runs may be, in the order it is searched:
    ``argv[0]`` itself when it names a path (from ``working_dir`` when relative), else each
    absolute directory of the image's PATH. Only a hint: the mount checks each in its tree."""
    if not argv or not argv[0]:
        return ()
    program = argv[0]
    if "/" in program:
        found = [program if program.startswith("/") else f"{working_dir or '/'}/{program}"]
    else:
        path = next((e[5:] for e in reversed(env) if e.startswith("PATH=")), DEFAULT_PATH)
        found = [f"{d.rstrip('/')}/{program}" for d in path.split(":") if d.startswith("/")]
    # The image's config is hostile: what goes on the mount's command line is a path.
    usable = [p for p in found if p.startswith("/") and "\0" not in p and len(p) <= _MAX_PATH]
    return tuple(usable[:_MAX_CANDIDATES])


@runtime_checkable
class RemoteAware(Protocol):
    """A blob source that knows which of its layers are remote (None: none are)."""

    @property
    def remote(self) -> Remote | None: ...
