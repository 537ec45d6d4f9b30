"""An image's documents from a registry: its manifests and its config, checked.

``fetch_manifest`` asks ``/v2/<repository>/manifests/<tag or digest>`` and
checks the bytes against the registry's ``Docker-Content-Digest`` (when it
sends one) and against what named them: an index entry's digest and size,
or the digest the image was pulled by; ``manifest_head`` asks only the digest
a tag names, where a HEAD can say it. ``fetch_config`` reads the config
blob, bounded by its descriptor's size and checked against it. Both cap
what they hold at ``METADATA_LIMIT`` and ask once more for a body that did
not verify, as Store.ingest does for blobs: corruption on the way is seldom
repeated. Blocking.
"""

from __future__ import annotations

import contextlib

import requests

from providers.digest import Digest, is_digest
from providers.errors import BadImage, DigestMismatch, TemporaryFailure
from providers.manifest import DOCKER_MANIFEST, METADATA_LIMIT, OCI_MANIFEST, Descriptor
from providers.registry_blob import BlobStream
from providers.registry_checks import ACCEPT, again_on_mismatch, manifest_digest, once_more, verify
from providers.registry_http import RegistryHttp, redact
from providers.retry import Again, Deadline, is_temporary, retrying


def fetch_manifest(
    http: RegistryHttp,
    base: str,
    repository: str,
    tag_or_digest: str,
    image: str,
    scope: str,
    want: Descriptor | Digest | None = None,
    passing: bool = False,
    attempts: int | None = None,
) -> tuple[bytes, str]:
    """The bytes and media type of manifest ``tag_or_digest`` of ``base``'s ``repository``,
    checked against the registry's ``Docker-Content-Digest`` and ``want`` (an index entry,
    or the digest the image was named by). ``passing`` and ``attempts``: as
    ``RegistryHttp.get`` has them."""
    url = f"{base}/v2/{repository}/manifests/{tag_or_digest}"

    def once() -> tuple[bytes, str]:
        return _manifest_once(http, url, image, scope, want, passing, attempts)

    return retrying(once_more(), lambda: again_on_mismatch(once))


def _manifest_once(
    http: RegistryHttp,
    url: str,
    image: str,
    scope: str,
    want: Descriptor | Digest | None,
    passing: bool,
    attempts: int | None,
) -> tuple[bytes, str]:
    def attempt() -> tuple[requests.Response, bytes]:
        headers = {"Accept": ACCEPT}
        response = http.get(
            url, image=image, scope=scope, headers=headers, passing=passing, attempts=attempts
        )
        try:
            return response, _read_limited(http, response, image, url)
        except TemporaryFailure as exc:
            # The body broke after the headers: ask again, as for a failed request.
            raise Again(str(exc), exc) from exc

    response, data = retrying(http.retries(Deadline(0), attempts), attempt)
    media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    sent = response.headers.get("Docker-Content-Digest", "")
    if sent.startswith("sha256:"):
        actual = manifest_digest(data, media_type, image)
        if sent != actual:
            raise DigestMismatch(
                f"{image}: manifest at {redact(url)}", expected=sent, actual=actual, image=image
            )
    if isinstance(want, Descriptor):
        verify(data, want, image, f"manifest {want.digest}")
    elif want is not None:
        actual = manifest_digest(data, media_type, image)
        if actual != want:
            raise DigestMismatch(f"{image}: manifest", expected=want, actual=actual, image=image)
    return data, media_type


def manifest_head(
    http: RegistryHttp, base: str, repository: str, tag: str, image: str, scope: str,
    passing: bool = False,
) -> Digest | None:  # fmt: skip
    """The digest the registry says tag ``tag`` names, asked by HEAD, once, when it names
    a schema 2 or OCI image manifest and the registry says its digest; None for anything
    else (an index, a schema 1 manifest, no digest said), which takes a GET.

    Docker Hub counts a GET of a manifest against a pull limit, not a HEAD. Raises as
    ``RegistryHttp.get`` does: TemporaryFailure when the registry cannot be reached (with
    a ``status`` when it answered, which a GET may not: a server that has no HEAD).
    """
    url = f"{base}/v2/{repository}/manifests/{tag}"
    headers = {"Accept": ACCEPT}
    response = http.get(url, image=image, scope=scope, headers=headers, method="HEAD",
                        attempts=1, passing=passing)  # fmt: skip
    response.close()
    kind = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    sent = response.headers.get("Docker-Content-Digest", "")
    # sha256, as ``resolve`` names manifests: a digest by another algorithm is no match.
    if kind not in (OCI_MANIFEST, DOCKER_MANIFEST) or not sent.startswith("sha256:"):
        return None
    return Digest(sent) if is_digest(sent) else None


def fetch_config(
    http: RegistryHttp, base: str, repository: str, desc: Descriptor, image: str, scope: str
) -> bytes:
    """The image config ``desc`` names, from ``base``'s ``repository``, checked against it."""
    if desc.size > METADATA_LIMIT:
        raise BadImage(f"{image}: config {desc.digest} is larger than {METADATA_LIMIT} bytes")
    url = f"{base}/v2/{repository}/blobs/{desc.digest}"

    def attempt() -> bytes:
        # Read as a blob: its size is known, so a broken transfer resumes.
        stream = BlobStream(http, url, image=image, scope=scope, size=desc.size)
        with contextlib.closing(stream):
            data = stream.readall()
        verify(data, desc, image, f"config {desc.digest}")
        return data

    return retrying(once_more(), lambda: again_on_mismatch(attempt))


def _read_limited(http: RegistryHttp, response: requests.Response, image: str, url: str) -> bytes:
    try:
        data = http.read_capped(response, METADATA_LIMIT)
    except Exception as exc:
        if not is_temporary(exc):
            raise
        raise TemporaryFailure(
            f"{image}: reading {redact(url)} failed: {exc}", url=redact(url), image=image
        ) from exc
    if data is None:
        raise BadImage(f"{image}: {redact(url)} is larger than {METADATA_LIMIT} bytes")
    return data
