"""Docker image manifest v2 schema 1, as old registries still serve it. Pure.

A schema 1 manifest lists ``fsLayers`` top layer first, each paired with a
``history`` entry whose ``v1Compatibility`` is a JSON string; the first
(top) one holds the image's runtime config. Entries marked ``throwaway``
are empty layers Docker skips. Layer sizes are not in the manifest: the
registry client asks for them (HEAD) so every blob is still checked for
size and digest while it streams.

A signed manifest (``+prettyjws``) is identified by the digest of its
payload without the signatures: the bytes up to ``formatLength`` followed
by the base64url-decoded ``formatTail`` of the first signature's protected
header, which is what registries put in ``Docker-Content-Digest``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from providers import untrusted_json
from providers.digest import Digest, digest_bytes, parse_digest
from providers.errors import BadImage
from providers.manifest import RuntimeConfig, load_json, parse_image_config
from providers.platforms import config_platform


@dataclass(frozen=True)
class Schema1:
    """Layer digests bottom first (throwaway ones dropped) and the runtime config."""

    layers: tuple[Digest, ...]
    config: RuntimeConfig
    platform: str = ""  # os/arch[/variant] as the top history entry states it, or ""


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def schema1_digest(data: bytes) -> Digest:
    """The digest a registry gives a schema 1 manifest: of its unsigned payload."""
    return digest_bytes(schema1_payload(data))


def schema1_payload(data: bytes) -> bytes:
    """What a signed schema 1 manifest's digest is of (``data`` when unsigned): the
    only bytes of it to read layers and config from. The signature header says
    where the payload ends and how it goes on, and the registry writes that
    header: read from the whole document, a manifest could list layers its
    digest never covered."""
    doc = load_json(data, "schema 1 manifest")
    signatures = doc.get("signatures") if isinstance(doc, dict) else None
    if not signatures:
        return data
    try:
        protected = untrusted_json.loads(_b64url(signatures[0]["protected"]))
        length = untrusted_json.size(protected["formatLength"])
        tail = _b64url(protected["formatTail"])
    except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as exc:
        raise BadImage("schema 1 manifest has an unreadable signature header") from exc
    if not 0 <= length <= len(data):
        raise BadImage("schema 1 manifest signature header has a bad formatLength")
    return data[:length] + tail


def parse_schema1(data: bytes) -> Schema1:
    doc = load_json(data, "schema 1 manifest")
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 1:
        raise BadImage("not a schema 1 manifest")
    fs_layers, history = doc.get("fsLayers"), doc.get("history")
    if not isinstance(fs_layers, list) or not isinstance(history, list):
        raise BadImage("schema 1 manifest lacks fsLayers or history")
    if len(fs_layers) != len(history) or not fs_layers:
        raise BadImage(
            f"schema 1 manifest has {len(fs_layers)} fsLayers and {len(history)} history entries"
        )
    compat = [_v1_compatibility(entry, i) for i, entry in enumerate(history)]
    layers: list[Digest] = []
    # Listed top first; a rootfs is built bottom first.
    for layer, info in reversed(list(zip(fs_layers, compat, strict=True))):
        if info.get("throwaway") is True:
            continue
        blob_sum = layer.get("blobSum") if isinstance(layer, dict) else None
        if not isinstance(blob_sum, str):
            raise BadImage("schema 1 manifest has an fsLayer without blobSum")
        layers.append(parse_digest(blob_sum))
    top = json.dumps(compat[0]).encode()
    runtime, _ = parse_image_config(top)
    return Schema1(tuple(layers), runtime, config_platform(top))


def _v1_compatibility(entry: Any, index: int) -> dict[str, Any]:
    text = entry.get("v1Compatibility") if isinstance(entry, dict) else None
    if not isinstance(text, str):
        raise BadImage(f"schema 1 manifest history entry {index} has no v1Compatibility")
    value = load_json(text.encode(), f"schema 1 history entry {index}")
    if not isinstance(value, dict):
        raise BadImage(f"schema 1 history entry {index} is not a JSON object")
    return value
