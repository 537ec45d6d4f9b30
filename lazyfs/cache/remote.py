"""What a mount needs to know of layers that are still in a registry: light values, no I/O.

A provisioner that leaves some layers of an image remote (eStargz layers on
the fuse backend, read through the cache daemon) hands the backend a blob
source that also has ``remote``: a ``Remote`` naming, per layer digest, the
registry host and repository the daemon fetches it from, and how to reach
or start the daemon (``DaemonSpec``). The mount API passes both on to the
mount process. A blob source without ``remote`` (or with None) has every
layer local.
"""

from __future__ import annotations

from collections.abc import Mapping
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


@runtime_checkable
class RemoteAware(Protocol):
    """A blob source that knows which of its layers are remote (None: none are)."""

    @property
    def remote(self) -> Remote | None: ...
