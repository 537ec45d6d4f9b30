"""The two ``docker save`` tar forms that are not OCI layouts.

- ``manifest.json`` (docker 1.10+, ``skopeo copy ... docker-archive:``):
  ``[{"Config": "<hex>.json", "RepoTags": [...], "Layers": [...]}]``.
- legacy (docker before 1.10): ``repositories`` maps repo -> tag -> image id,
  and ``<id>/json`` + ``<id>/layer.tar`` form a chain through ``parent``.

Neither gives blob digests, so a layer's digest is whatever its member name
encodes (``<hex>.tar``, ``blobs/sha256/<hex>``) or else the sha256 of its bytes,
hashed in place in the tar at resolve time. What is checked when:

- the config's sha256 against the digest in its name, at resolve;
- an uncompressed layer's digest against the config's diff_id (for a plain tar
  they are the same thing), at resolve;
- a layer whose name encodes its digest is hashed by the caller's
  VerifyingReader while it streams; one named otherwise was hashed here;
- a compressed layer's diff_id is handed on; the store checks it while it
  ingests the blob (``providers.diff_id``).
"""

from __future__ import annotations

import re
from typing import Any

from providers.compression import sniff
from providers.digest import Digest, digest_bytes, digest_stream
from providers.errors import BadImage, DigestMismatch, NotFound
from providers.manifest import (
    DOCKER_LAYER_GZIP,
    LAYER_LIMIT,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    ImageManifest,
    Layer,
    load_json,
    parse_image_config,
)
from providers.oci_layout import BlobLocation, TarFiles, open_location, read_file
from providers.platforms import config_platform

DEFAULT_DOMAIN = "docker.io"
_HEX_NAME = re.compile(r"^(?:.*/)?(?:sha256[:/])?([0-9a-f]{64})(?:\.tar|\.json)?$")
_IMAGE_ID = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_MEDIA_TYPES = {"none": OCI_LAYER_TAR, "gzip": DOCKER_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}


def normalize_repository(name: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox``, as Docker expands names."""
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return name
    if not sep:
        return f"{DEFAULT_DOMAIN}/library/{name}"
    return f"{DEFAULT_DOMAIN}/{name}"


def split_tag(name: str) -> tuple[str, str | None]:
    """``repo:tag`` -> (repo, tag); a colon in the domain's port is not a tag."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, None


def _named_digest(name: str) -> Digest | None:
    match = _HEX_NAME.match(name)
    return Digest(f"sha256:{match.group(1)}") if match else None


def _hash(files: TarFiles, where: BlobLocation) -> Digest:
    key = (where.offset, where.size)
    if key not in files.digests:
        with open_location(where) as stream:
            files.digests[key] = digest_stream(stream)[0]
    return files.digests[key]


def _layer(files: TarFiles, name: str, diff_id: Digest | None) -> tuple[Layer, BlobLocation]:
    where = files.location(name)
    if where is None:
        raise BadImage(f"{files.label}: layer {name!r} is missing")
    with open_location(where) as stream:
        kind = sniff(stream.read(min(8, where.size)))
    if kind not in _MEDIA_TYPES:
        raise BadImage(f"{files.label}: layer {name!r} is {kind}-compressed, which is unsupported")
    digest = _named_digest(name) or _hash(files, where)
    if kind == "none":
        if diff_id is not None and digest != diff_id:
            raise DigestMismatch(
                f"{files.label}: uncompressed layer {name!r} vs config diff_id",
                expected=diff_id,
                actual=digest,
            )
        diff_id = digest
    return Layer(digest, _MEDIA_TYPES[kind], where.size, diff_id), where


def _matches(repo_tag: str, full_ref: str, tag: str | None) -> tuple[bool, bool]:
    """(full reference matches, tag matches) for one RepoTags item."""
    repo, its_tag = split_tag(repo_tag)
    its_tag = its_tag or "latest"
    return f"{normalize_repository(repo)}:{its_tag}" == full_ref, its_tag == tag


def _pick(
    candidates: list[tuple[list[str], Any]],
    label: str,
    full_ref: str,
    tag: str | None,
    strict: bool = False,
) -> Any:
    """The candidate whose names match ``full_ref``, else (unless ``strict``) its tag
    alone, else the only one."""
    given = candidates
    full = [c for names, c in candidates if any(_matches(n, full_ref, tag)[0] for n in names)]
    if full:
        return full[0]
    if strict:
        candidates = []
    by_tag = [c for names, c in candidates if any(_matches(n, full_ref, tag)[1] for n in names)]
    if len(by_tag) == 1:
        return by_tag[0]
    if len(candidates) == 1:
        return candidates[0][1]
    offered = sorted(n for names, _ in given for n in names)
    raise NotFound(f"{label}: no image for {full_ref} (has {', '.join(offered) or 'no tags'})")


def resolve_manifest_json(
    files: TarFiles, reference: str, full_ref: str, tag: str | None, strict: bool = False
) -> tuple[ImageManifest, dict[Digest, BlobLocation]]:
    """Resolve a reference in a tar with ``manifest.json``; ``strict``: only by its RepoTags."""
    doc = load_json(read_file(files, "manifest.json", "manifest"), f"{files.label}: manifest.json")
    if not isinstance(doc, list) or not doc:
        raise BadImage(f"{files.label}: manifest.json is not a non-empty list")
    candidates: list[tuple[list[str], dict[str, Any]]] = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise BadImage(f"{files.label}: manifest.json entry {i} is not an object")
        tags = item.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadImage(f"{files.label}: manifest.json entry {i} RepoTags is not a string list")
        candidates.append((tags, item))
    entry = _pick(candidates, files.label, full_ref, tag, strict)
    config_name = entry.get("Config")
    layer_names = entry.get("Layers")
    if not isinstance(config_name, str):
        raise BadImage(f"{files.label}: manifest.json entry has no Config name")
    if not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
        raise BadImage(f"{files.label}: manifest.json entry Layers is not a string list")
    if len(layer_names) > LAYER_LIMIT:
        raise BadImage(f"{files.label}: {len(layer_names)} layers, over {LAYER_LIMIT}")
    config_bytes = read_file(files, config_name, "image config")
    config_digest = digest_bytes(config_bytes)
    named = _named_digest(config_name)
    if named is not None and named != config_digest:
        raise DigestMismatch(
            f"{files.label}: config {config_name}", expected=named, actual=config_digest
        )
    runtime, diff_ids = parse_image_config(config_bytes)
    if len(diff_ids) != len(layer_names):
        raise BadImage(
            f"{files.label}: manifest.json lists {len(layer_names)} layers "
            f"but the config has {len(diff_ids)} diff_ids"
        )
    layers: list[Layer] = []
    blobs: dict[Digest, BlobLocation] = {}
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        layer, where = _layer(files, name, diff_id)
        layers.append(layer)
        blobs[layer.digest] = where
    image = ImageManifest(
        reference, config_digest, tuple(layers), runtime, config_platform(config_bytes)
    )
    return image, blobs


def _image_id(value: Any, label: str) -> str:
    match = _IMAGE_ID.match(value) if isinstance(value, str) else None
    if match is None:
        raise BadImage(f"{label}: {value!r} is not an image id")
    return match.group(1)


def resolve_legacy(
    files: TarFiles, reference: str, full_ref: str, tag: str | None, strict: bool = False
) -> tuple[ImageManifest, dict[Digest, BlobLocation]]:
    """Resolve a reference in a pre-1.10 ``docker save`` tar; ``strict``: only by its names."""
    doc = load_json(
        read_file(files, "repositories", "repositories"), f"{files.label}: repositories"
    )
    if not isinstance(doc, dict):
        raise BadImage(f"{files.label}: repositories is not a JSON object")
    candidates: list[tuple[list[str], str]] = []
    for repo, tags in doc.items():
        if not isinstance(tags, dict):
            raise BadImage(f"{files.label}: repositories entry {repo!r} is not an object")
        for its_tag, image_id in tags.items():
            candidates.append(([f"{repo}:{its_tag}"], _image_id(image_id, files.label)))
    if not candidates:
        raise BadImage(f"{files.label}: repositories names no image")
    top = _pick(candidates, files.label, full_ref, tag, strict)
    chain: list[str] = []
    seen: set[str] = set()  # a list scan per layer made a long chain quadratic
    top_json = b""
    current: str | None = top
    while current is not None:
        if current in seen:
            raise BadImage(f"{files.label}: image {current} is its own ancestor")
        if len(chain) == LAYER_LIMIT:
            # Refused before the next JSON is read: the chain is walked one file at a time.
            raise BadImage(f"{files.label}: image {top} has more than {LAYER_LIMIT} layers")
        data = read_file(files, f"{current}/json", "image json")
        meta = load_json(data, f"{files.label}: {current}/json")
        if not isinstance(meta, dict):
            raise BadImage(f"{files.label}: {current}/json is not a JSON object")
        if not chain:
            top_json = data
        chain.append(current)
        seen.add(current)
        parent = meta.get("parent")
        current = _image_id(parent, f"{files.label}: {current}/json parent") if parent else None
    runtime, _ = parse_image_config(top_json)
    layers: list[Layer] = []
    blobs: dict[Digest, BlobLocation] = {}
    for image_id in reversed(chain):
        layer, where = _layer(files, f"{image_id}/layer.tar", None)
        layers.append(layer)
        blobs[layer.digest] = where
    platform = config_platform(top_json)
    return ImageManifest(reference, digest_bytes(top_json), tuple(layers), runtime, platform), blobs
