"""What the registry fixtures hand to tests: the seeded storage, the credentials, token auth.

``Seed`` is the storage a plain registry was seeded with once per session
(every configured registry serves a copy), with the manifest digests it
holds.  The basic-auth and token registries accept ``USER``/``PASSWORD``;
the multi-arch indexes list ``OTHER_ARCH`` besides the host's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from providers.oci_layout import host_arch
from tests.support.registry_servers import Registry, TokenServer

USER, PASSWORD = "alice", "s3cret-pa55"
OTHER_ARCH = "s390x" if host_arch() != "s390x" else "arm64"


@dataclass(frozen=True)
class Seed:
    storage: Path
    layout: Path
    rich_v2s2: str  # manifest digests
    rich_oci: str
    other_oci: str


@dataclass(frozen=True)
class TokenSetup:
    registry: Registry
    tokens: TokenServer
