"""The two interfaces every image provider implements.

Both are blocking: callers in trio run them through
``trio.to_thread.run_sync`` under a CapacityLimiter.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from providers.digest import Digest
from providers.manifest import ImageManifest


class ImageSource(Protocol):
    def resolve(self, reference: str) -> ImageManifest:
        """Find ``reference`` and return its manifest, layers bottom first.

        Raises NotFound when the image is not there, BadImage when it is there
        but unusable. Reads metadata only; layer bytes are left to BlobSource.
        Idempotent.
        """
        ...


class BlobSource(Protocol):
    def open(self, digest: Digest) -> BinaryIO:
        """Open the blob ``digest`` for reading from its start.

        The stream yields the blob's bytes as stored (compressed or not). It
        is not verified: wrap it in providers.digest.VerifyingReader. The
        caller closes it. Raises NotFound for an unknown digest.
        """
        ...
