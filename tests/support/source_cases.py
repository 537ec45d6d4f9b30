"""The cases of the image and blob source conformance suites: a source and what it holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from providers.digest import Digest
from providers.manifest import Layer, RuntimeConfig
from providers.source import BlobSource, ImageSource


@dataclass(frozen=True)
class ImageCase:
    """An ImageSource holding ``reference`` and not ``missing``."""

    source: ImageSource
    reference: str
    missing: str
    config: RuntimeConfig
    diff_ids: tuple[Digest, ...] | None  # None: the format has none
    blob: Callable[[Layer], bytes]  # the bytes a layer descriptor describes


@dataclass(frozen=True)
class BlobCase:
    """A BlobSource that serves ``digest``, whose bytes are ``data``."""

    source: BlobSource
    digest: Digest
    data: bytes
