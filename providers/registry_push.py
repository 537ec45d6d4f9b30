"""Pushing to a Docker registry: blobs (monolithic upload) and manifests.

``RegistryPush`` writes to one repository at one endpoint, through the
``RegistryHttp`` pulls use (authentication with a ``pull,push`` scope, TLS,
retries of what is temporary, errors translated there):

- ``push_blob``: ``HEAD`` the blob first (a registry that has it is not
  sent it again), else ``POST .../blobs/uploads/`` and one ``PUT`` of the
  whole body to the ``Location`` it answers, ``?digest=`` appended;
- ``put_manifest``: ``PUT .../manifests/REF`` with its media type; returns
  the answer's headers (``OCI-Subject`` tells a manifest with a subject was
  indexed by the registry's Referrers API);
- ``get_manifest``: the bytes and media type at a tag or digest, or None
  for 404, bounded as pulls bound manifests.

Blocking; thread-safe as ``RegistryHttp`` is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

from providers.digest import Digest, algorithm, digest_bytes
from providers.errors import BadImage, DigestMismatch
from providers.manifest import METADATA_LIMIT, Descriptor
from providers.registry_http import RegistryHttp, redact


@dataclass(frozen=True)
class RegistryPush:
    """Pushes to ``base`` (``https://host:port``), repository ``repository``.

    ``image`` names the work in error messages.
    """

    http: RegistryHttp
    base: str
    repository: str
    image: str

    @property
    def scope(self) -> str:
        return f"repository:{self.repository}:pull,push"

    @property
    def read_scope(self) -> str:
        """What reads ask for: a token server may grant it to whom it refuses a push."""
        return f"repository:{self.repository}:pull"

    def _url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repository}/{path}"

    def has_blob(self, digest: Digest) -> bool:
        response = self.http.get(
            self._url(f"blobs/{digest}"),
            image=self.image,
            scope=self.scope,
            method="HEAD",
            ok=(200, 404),
        )
        self.http.discard(response)  # a HEAD's: no body, but its connection is kept
        return response.status_code == 200

    def push_blob(self, data: bytes, media_type: str) -> Descriptor:
        """Upload ``data`` unless the repository has it; its descriptor."""
        digest = digest_bytes(data)
        if not self.has_blob(digest):
            start = self.http.get(
                self._url("blobs/uploads/"),
                image=self.image,
                scope=self.scope,
                method="POST",
                ok=(202,),
                data=b"",
            )
            start.close()
            location = start.headers.get("Location")
            if not location:
                raise BadImage(f"{self.image}: {redact(start.url)} gave no upload location")
            target = urljoin(self._url("blobs/uploads/"), location)
            joiner = "&" if "?" in target else "?"
            done = self.http.get(
                f"{target}{joiner}digest={digest}",
                image=self.image,
                scope=self.scope,
                method="PUT",
                ok=(201,),
                headers={"Content-Type": "application/octet-stream"},
                data=data,
            )
            done.close()
        return Descriptor(media_type, digest, len(data))

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> Mapping[str, str]:
        """PUT the manifest ``data`` at ``reference`` (a tag or digest); the answer's headers."""
        response = self.http.get(
            self._url(f"manifests/{reference}"),
            image=self.image,
            scope=self.scope,
            method="PUT",
            ok=(201,),
            headers={"Content-Type": media_type},
            data=data,
        )
        response.close()
        return dict(response.headers)

    def get_manifest(self, reference: str, accept: str) -> tuple[bytes, str] | None:
        """The manifest at ``reference`` and its media type; None when there is none."""
        url = self._url(f"manifests/{reference}")
        response = self.http.get(
            url, image=self.image, scope=self.read_scope, headers={"Accept": accept}, ok=(200, 404)
        )
        if response.status_code == 404:
            self.http.discard(response)
            return None
        data = self.http.read_capped(response, METADATA_LIMIT)  # closes it
        if data is None:
            raise BadImage(f"{self.image}: {redact(url)} is larger than {METADATA_LIMIT} bytes")
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        return data, media_type

    def get_blob(self, digest: Digest, limit: int) -> bytes:
        """The blob ``digest``, at most ``limit`` bytes, checked against its digest."""
        url = self._url(f"blobs/{digest}")
        response = self.http.get(url, image=self.image, scope=self.read_scope)
        with contextlib.closing(response):
            data = self.http.read_capped(response, limit)
        if data is None:
            raise BadImage(f"{self.image}: blob {digest} is larger than {limit} bytes")
        actual = digest_bytes(data, algorithm(digest))
        if actual != digest:
            raise DigestMismatch(
                f"{self.image}: blob at {redact(url)}",
                expected=digest,
                actual=actual,
                image=self.image,
            )
        return data
