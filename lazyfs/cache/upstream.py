"""Where the cache daemon fetches what it does not have: the registries its reads name.

``Origins`` is the daemon's ``resolve`` (see ``lazyfs.cache.daemon``). A
registry origin (host and repository, as a mount names the image its layer
came from) becomes a BlobSource over one ``RegistryClient``, built from the
same registry flags as pulls: credentials (``--docker_config``), mirrors,
TLS and deadlines are the daemon's own, never sent by a mount. Every origin
has a client of its own, since a client knows one home per blob digest and
two repositories may hold the same blob (the last one named would win, and
reads of the other would go to a repository that may not let us in); the
clients share one HTTP layer, so bearer tokens are still kept and renewed in
one place.
A handle origin names a source the daemon was configured with (tests).

A registry client serves only blobs it knows the size of, which a pull
learns from the image's manifest. A mount says the size in its read
(``blob_size``): the daemon hands it on through ``note_size``
(``lazyfs.cache.daemon.SizeHints``)
before fetching. A read of a blob never sized is NotFound.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from lazyfs.cache.messages import BadRequest, HandleOrigin, Origin, RegistryOrigin
from providers.digest import Digest
from providers.registry import RegistryClient, RegistryOptions
from providers.source import BlobSource


class Origins:
    """The daemon's upstreams by origin; callable as ``lazyfs.cache.daemon.Resolve``."""

    def __init__(
        self, options: RegistryOptions, handles: Mapping[str, BlobSource] | None = None
    ) -> None:
        self.options = options
        self.client = RegistryClient(options)
        self.handles = dict(handles or {})
        self._repositories: dict[RegistryOrigin, RegistryBlobs] = {}

    def __call__(self, origin: Origin) -> BlobSource:
        if isinstance(origin, HandleOrigin):
            source = self.handles.get(origin.handle)
            if source is None:
                raise BadRequest(f"this cache daemon has no source called {origin.handle!r}")
            return source
        found = self._repositories.get(origin)
        if found is None:
            client = RegistryClient(self.options)
            # One HTTP layer (sessions, tokens, retries) for every origin.
            client.http, client.ranges = self.client.http, self.client.ranges
            found = self._repositories[origin] = RegistryBlobs(client, origin)
        return found


class RegistryBlobs:
    """The blobs of one registry repository, read through the shared client."""

    def __init__(self, client: RegistryClient, origin: RegistryOrigin) -> None:
        self.client = client
        self.repository = f"{origin.host}/{origin.repository}"
        self._lock = threading.Lock()
        self._sizes: dict[Digest, int] = {}
        self._added: set[Digest] = set()

    def note_size(self, digest: Digest, size: int) -> None:
        with self._lock:
            self._sizes.setdefault(digest, size)

    def _known(self, digest: Digest) -> None:
        """Tell the client where ``digest`` is, once: that may ask the registry (a ping)."""
        with self._lock:
            size = self._sizes.get(digest)
            if size is None or digest in self._added:
                return
        # Two threads may both add it: the same facts twice, harmless.
        self.client.add_blob(self.repository, digest, size)
        with self._lock:
            self._added.add(digest)

    def open(self, digest: Digest) -> BinaryIO:
        self._known(digest)
        return self.client.open(digest)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self._known(digest)
        return self.client.read_range(digest, offset, length)

    def stream_range(self, digest: Digest, offset: int, length: int) -> Iterator[tuple[int, bytes]]:
        """The range as it arrives (``providers.source.StreamingBlobSource``)."""
        self._known(digest)
        return self.client.stream_range(digest, offset, length)
