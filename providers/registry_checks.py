"""What the registry client checks of what it is sent, as pure helpers.

A manifest's digest (a signed schema 1's leaves its signatures out), a
blob against its descriptor, parsers' errors named for the image, and the
one more try a body that did not match its digest gets (corruption on the
way is seldom repeated), through providers.retry like every other retry.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any, TypeVar

from providers.digest import Digest, VerifyingReader, digest_bytes
from providers.errors import BadImage, DigestMismatch
from providers.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
)
from providers.retry import Again, Backoff, Deadline, Retries
from providers.schema1 import schema1_payload

DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
# What a manifest request accepts. Schema 1 last and weighted down: only a registry with
# nothing newer sends it.
ACCEPT = ", ".join(
    [
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        f"{DOCKER_SCHEMA1_SIGNED};q=0.5",
        f"{DOCKER_SCHEMA1};q=0.5",
    ]
)
T = TypeVar("T")

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


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
    return digest_bytes(digested(data, media_type, image))


def digested(data: bytes, media_type: str, image: str) -> bytes:
    """The part of manifest ``data`` its digest covers (``schema1_payload``): all of it
    but for a signed schema 1."""
    if media_type == DOCKER_SCHEMA1_SIGNED:
        return named(image, schema1_payload, data)
    return data


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


def parse_content_range(header: str) -> tuple[int, int, int | None] | None:
    """``bytes FIRST-LAST/SIZE`` (SIZE may be ``*``) as (first, last, size); None if not that."""
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    size = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), size


def range_answer(
    status: int, content_range: str | None, content_length: str | None, first: int, last: int,
    size: int,
) -> int:  # fmt: skip
    """The blob offset where the body of an answer to ``Range: bytes=FIRST-LAST`` starts.

    ``size`` is the blob's. A 200 carries the whole blob, so its body starts
    at 0 (and its Content-Length, when sent, is ``size``); a 206 must carry
    exactly the range asked for, of a blob of ``size`` bytes. Raises
    BadImage (without the image's name) for any other answer: a server that
    sends other bytes than were asked for is not guessed at.
    """
    asked = f"Range: bytes={first}-{last}"
    if status == 200:
        if content_length is not None and content_length.strip() != str(size):
            why = f"answered 200 with {content_length.strip()} bytes for a blob of {size} bytes"
            raise BadImage(f"{why} to {asked}")
        return 0
    if status != 206:
        raise BadImage(f"answered HTTP {status} to {asked}")
    parsed = parse_content_range(content_range or "")
    if parsed is None or parsed[:2] != (first, last) or parsed[2] not in (size, None):
        raise BadImage(
            f"answered Content-Range {content_range!r} to {asked} (blob of {size} bytes)"
        )
    return first
