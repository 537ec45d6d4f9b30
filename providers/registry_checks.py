"""What the registry client checks of what it is sent, as pure helpers.

A manifest's digest (a signed schema 1's leaves its signatures out), a
blob against its descriptor, parsers' errors named for the image, and the
one more try a body that did not match its digest gets (corruption on the
way is seldom repeated), through providers.retry like every other retry.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

from providers.digest import Digest, VerifyingReader, digest_bytes
from providers.errors import BadImage, DigestMismatch
from providers.manifest import Descriptor
from providers.retry import Again, Backoff, Deadline, Retries
from providers.schema1 import schema1_digest

DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
T = TypeVar("T")


def once_more() -> Retries:
    """One more try at once: for bytes that did not match their digest."""
    return Retries(2, Backoff(0.0, 0.0), Deadline(0))


def again_on_mismatch(attempt: Callable[[], T]) -> T:
    try:
        return attempt()
    except DigestMismatch as exc:
        raise Again(f"{exc}; asking again", exc) from exc


def manifest_digest(data: bytes, media_type: str, image: str) -> Digest:
    """The digest that names a manifest; a signed schema 1's leaves out its signatures."""
    if media_type == DOCKER_SCHEMA1_SIGNED:
        return named(image, schema1_digest, data)
    return digest_bytes(data)


def named(image: str, parse: Callable[..., T], *args: Any) -> T:
    """Run a pure parser; its BadImage gains the image's name."""
    try:
        return parse(*args)
    except BadImage as exc:
        raise exc.for_image(image) from exc


def verify(data: bytes, desc: Descriptor, image: str, what: str) -> None:
    try:
        VerifyingReader(io.BytesIO(data), desc.digest, desc.size, f"{image}: {what}").read()
    except DigestMismatch as exc:
        exc.image = image  # named in ``what`` already
        raise
