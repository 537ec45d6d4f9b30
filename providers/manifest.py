"""What a provider hands on: an image's ordered layers and its runtime config.

Parsing here is pure (bytes in, values out) so both the local puller and the
registry client share it and tests can feed it tables of documents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from providers import untrusted_json
from providers.config_text import checked
from providers.digest import Digest, parse_digest
from providers.errors import BadImage

log = logging.getLogger(__name__)

# Media types, from the OCI image spec and Docker's image manifest v2 schema 2.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
# Appc images carry their rootfs in a tar under "rootfs/".
APPC_LAYER = "application/vnd.appc.image.aci"
# lazyfs' own layer annotation: the digest of the index blob published beside
# the image that the layer is read through.  Set only by lazyfs once it has
# fetched and kept that index (a registry's manifest never carries it in).
INDEX_BLOB_ANNOTATION = "dev.lazyfs.index.blob"
# An eStargz layer's table of contents digest (stargz-snapshotter's annotation).
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"

# Manifests, indexes, configs and token answers are read into memory whole.
METADATA_LIMIT = 16 << 20

LAYER_TYPES = frozenset(
    {
        OCI_LAYER_TAR,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDIST_TAR,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_FOREIGN,
        APPC_LAYER,
    }
)
ZSTD_TYPES = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_ZSTD})
# Layers an image may name without its registry holding them (Windows base
# layers): the manifest gives ``urls`` to fetch them from instead.  lazyfs
# never fetches those: they point anywhere the image's author chose.
NONDISTRIBUTABLE_TYPES = frozenset(
    {OCI_LAYER_NONDIST_TAR, OCI_LAYER_NONDIST_GZIP, OCI_LAYER_NONDIST_ZSTD, DOCKER_LAYER_FOREIGN}
)


@dataclass(frozen=True)
class Layer:
    """One layer blob as the image describes it.

    ``digest`` and ``size`` are those of the blob as stored (compressed or
    not); ``diff_id`` is the digest of the uncompressed tar when known;
    ``annotations`` are the descriptor's, as (key, value) pairs sorted by key
    (``layer_annotations``): eStargz's TOC digest travels there.
    """

    digest: Digest
    media_type: str
    size: int
    diff_id: Digest | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # eStargz is gzip. stargz-snapshotter's zstd:chunked layers carry its TOC digest
        # too, of a TOC in other framing (zstd frames, a zstd footer) that lazyfs does
        # not read: such a layer is an ordinary zstd layer here, pulled whole.
        if self.media_type in ZSTD_TYPES and self.annotation(TOC_DIGEST_ANNOTATION) is not None:
            kept = tuple(a for a in self.annotations if a[0] != TOC_DIGEST_ANNOTATION)
            object.__setattr__(self, "annotations", kept)

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


def layer_annotations(raw: object) -> tuple[tuple[str, str], ...]:
    """A descriptor's ``annotations`` as ``Layer`` keeps them: string pairs, sorted by key.

    The spec makes them a map of strings; pairs that are not strings, or a
    value that is not a map, are left out rather than refusing an image
    for metadata it does not need.  What is read from them (a TOC digest)
    is checked where it is used.
    """
    if not isinstance(raw, dict):
        return ()
    return tuple(
        sorted((k, v) for k, v in raw.items() if isinstance(k, str) and isinstance(v, str))
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """The parts of an image config a container runtime needs."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": list(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeConfig:
        return cls(
            entrypoint=tuple(data.get("entrypoint", ())),
            cmd=tuple(data.get("cmd", ())),
            # As the pull keeps them (``_environment``): a record an older lazyfs stored
            # may hold what runc refuses.
            env=tuple(
                e for e in data.get("env", ()) if e.partition("=")[0] and "=" in e and "\0" not in e
            ),
            working_dir=data.get("working_dir", ""),
            user=data.get("user", ""),
        )


@dataclass(frozen=True)
class ImageManifest:
    """A resolved image: the layers bottom first, and the runtime config.

    ``digest`` identifies the image: the manifest digest where the format has
    one, else the config digest (legacy ``docker save``), else the layer chain.
    """

    reference: str
    digest: Digest
    layers: tuple[Layer, ...]
    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    # As a source resolves it: the os/arch[/variant] a single image's config states
    # ("" for one picked from an index for the platform asked for, or where the config
    # states none). As stored: the platform it is recorded under, one reference naming
    # one image per platform (lazyfs.images.docker).
    platform: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "layers": [
                {
                    "digest": layer.digest,
                    "media_type": layer.media_type,
                    "size": layer.size,
                    "diff_id": layer.diff_id,
                    # Only when there are some: records without them stay as they were.
                    **({"annotations": dict(layer.annotations)} if layer.annotations else {}),
                }
                for layer in self.layers
            ],
            "config": self.config.to_json(),
            "platform": self.platform,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageManifest:
        return cls(
            reference=data["reference"],
            digest=Digest(data["digest"]),
            layers=tuple(
                Layer(
                    digest=Digest(item["digest"]),
                    media_type=item["media_type"],
                    size=int(item["size"]),
                    diff_id=Digest(item["diff_id"]) if item.get("diff_id") else None,
                    annotations=layer_annotations(item.get("annotations")),
                )
                for item in data["layers"]
            ),
            config=RuntimeConfig.from_json(data.get("config", {})),
            platform=str(data.get("platform", "")),
        )


def load_json(data: bytes, what: str) -> Any:
    """Parse JSON or raise BadImage naming ``what``."""
    try:
        return untrusted_json.loads(data)
    except ValueError as exc:
        raise BadImage(f"{what} is not valid JSON: {exc}") from exc


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        # Docker accepts a bare string for Cmd/Entrypoint in some old configs.
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadImage(f"image config field {what} is not a list of strings")
    return tuple(checked(v, f"{what} entry") for v in value)


def _string(value: Any, what: str, *, path: bool = False) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadImage(f"image config field {what} is not a string")
    return checked(value, what, path=path)


def _environment(entries: tuple[str, ...]) -> tuple[str, ...]:
    """An image's ``Env``, as a runtime can take it: ``NAME=VALUE`` entries only.

    An entry without ``=`` is dropped with a warning, as Docker and containerd
    drop it (their replace-or-append of the image's Env onto the defaults reads
    ``NAME`` alone as "unset NAME"); handed on, runc refuses it ("invalid
    environment variable").  An entry with no name (``=x``) Docker and
    containerd pass on, and runc refuses: it is refused here, at the pull, as
    is one holding a NUL byte (``_strings``).
    """
    kept = []
    for entry in entries:
        name, eq, _ = entry.partition("=")
        if not eq:
            log.warning("image config Env entry %r is not NAME=VALUE: left out", entry)
        elif not name:
            raise BadImage(f"bad image config: Env entry {entry!r} is not NAME=VALUE")
        else:
            kept.append(entry)
    return tuple(kept)


def parse_image_config(data: bytes) -> tuple[RuntimeConfig, tuple[Digest, ...]]:
    """Parse a Docker or OCI image config: runtime config and rootfs diff_ids."""
    doc = load_json(data, "image config")
    if not isinstance(doc, dict):
        raise BadImage("image config is not a JSON object")
    conf = doc.get("config") or doc.get("container_config") or {}
    if not isinstance(conf, dict):
        raise BadImage("image config field config is not an object")
    runtime = RuntimeConfig(
        entrypoint=_strings(conf.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(conf.get("Cmd"), "Cmd"),
        env=_environment(_strings(conf.get("Env"), "Env")),
        working_dir=_string(conf.get("WorkingDir"), "WorkingDir", path=True),
        user=_string(conf.get("User"), "User"),
    )
    rootfs = doc.get("rootfs") or {}
    if not isinstance(rootfs, dict):
        raise BadImage("image config field rootfs is not an object")
    raw_ids = rootfs.get("diff_ids") or []
    if not isinstance(raw_ids, list) or not all(isinstance(d, str) for d in raw_ids):
        raise BadImage("image config field rootfs.diff_ids is not a list of strings")
    diff_ids = tuple(parse_digest(d) for d in raw_ids)
    return runtime, diff_ids


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    # Where else the blob may be had (non-distributable layers); lazyfs fetches none.
    urls: tuple[str, ...] = ()


def parse_descriptor(item: Any, what: str) -> Descriptor:
    if not isinstance(item, dict):
        raise BadImage(f"{what} is not a JSON object")
    if "digest" not in item:
        raise BadImage(f"{what} has no digest")
    digest = parse_digest(str(item["digest"]))
    try:
        size = untrusted_json.size(item.get("size"))
    except ValueError as exc:
        raise BadImage(f"{what} has no valid size: {exc}") from None
    urls = item.get("urls")
    return Descriptor(
        media_type=str(item.get("mediaType", "")),
        digest=digest,
        size=size,
        platform=item.get("platform"),
        annotations=item.get("annotations"),
        urls=tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else (),
    )


def nondistributable(desc: Descriptor, source: str) -> str | None:
    """Why a layer whose blob ``source`` lacks cannot be had, if it is non-distributable.

    None for any other layer: its blob is simply missing.  The first of its
    ``urls`` is named (without credentials or query) so the user knows where it lives.
    """
    if desc.media_type not in NONDISTRIBUTABLE_TYPES:
        return None
    where = ""
    if desc.urls:
        url = urlsplit(desc.urls[0])
        host = url.netloc.rpartition("@")[2]
        where = f" (only at {url.scheme}://{host}{url.path})"
    return (
        f"layer {desc.digest} is non-distributable{where}: lazyfs fetches layers from {source} only"
    )


@dataclass(frozen=True)
class ParsedManifest:
    """An OCI or Docker v2 schema 2 image manifest: config and layer descriptors."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


# Layers per image, from a registry or a local form.  Docker chains at most 125
# (moby's maxLayerDepth, for the 127 some graph drivers stack); 1000 is far past
# any image Docker can build or run, and still bounds the per-layer work (a legacy
# docker save chain reads a JSON file per layer, and its layer.tar members may all
# be hardlinks to one, 1.5 KiB of tar each; a registry's manifest is a request each).
LAYER_LIMIT = 1000

# The config media types of container images.  "": a config descriptor without
# one says nothing of an artifact, and lazyfs has always read such manifests.
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG, ""})


def _artifact_type(declared: object, config_type: str) -> str:
    """The type of the artifact a manifest describes; "" when it describes an image.

    The OCI image spec (v1.1, manifest.md) gives ``artifactType`` as "the type
    of an artifact when the manifest is used for an artifact", required when
    the config is the empty descriptor (``application/vnd.oci.empty.v1+json``);
    an image has no artifact type, so a manifest that states one is not an
    image, whatever its config.  Without it, an artifact's type is its config's
    media type (the spec's rule for the referrers API): a Helm chart's
    ``application/vnd.cncf.helm.config.v1+json``.  ``subject`` is no sign of
    an artifact: an image may refer to another too.  lazyfs' own artifacts
    (lazyfs.index, lazyfs.publish) are read by their own parsers, not this one.
    """
    if declared not in (None, ""):
        return repr(str(declared)[:200])
    return "" if config_type in IMAGE_CONFIG_TYPES else repr(config_type)


def parse_image_manifest(data: bytes, media_type: str = "") -> ParsedManifest:
    """Parse an image manifest (not an index); ``media_type`` is a fallback."""
    doc = load_json(data, "image manifest")
    if not isinstance(doc, dict):
        raise BadImage("image manifest is not a JSON object")
    kind = doc.get("mediaType") or media_type or OCI_MANIFEST
    if kind in (OCI_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in doc:
        raise BadImage(f"expected an image manifest, got an index ({kind})")
    if kind not in (OCI_MANIFEST, DOCKER_MANIFEST):
        raise BadImage(f"unsupported manifest media type {kind!r}")
    if doc.get("schemaVersion") != 2:
        raise BadImage(f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    config = parse_descriptor(doc.get("config"), "manifest config descriptor")
    artifact = _artifact_type(doc.get("artifactType"), config.media_type)
    if artifact:
        raise BadImage(f"not a container image: an OCI artifact of type {artifact}")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise BadImage("image manifest has no layers list")
    if len(layers_doc) > LAYER_LIMIT:
        raise BadImage(f"image manifest lists {len(layers_doc)} layers, over {LAYER_LIMIT}")
    layers = tuple(parse_descriptor(item, f"layer {i}") for i, item in enumerate(layers_doc))
    kinds = [layer.media_type for layer in layers if layer.media_type not in LAYER_TYPES]
    if kinds and len(kinds) == len(layers):
        # An image's config, but not one filesystem layer: a signature (cosign's
        # simplesigning), an attestation (in-toto) stored as an image.
        raise BadImage(
            f"not a container image: an OCI artifact (unsupported layer media type {kinds[0]!r})"
        )
    if kinds:
        raise BadImage(f"unsupported layer media type {kinds[0]!r}")
    return ParsedManifest(media_type=kind, config=config, layers=layers)
