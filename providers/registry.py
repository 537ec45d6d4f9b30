"""The Docker registry puller: Registry HTTP API v2 as ImageSource and BlobSource.

``RegistryClient.resolve(reference)`` asks for the manifest by tag or digest
accepting Docker v2 schema 2, OCI manifests, Docker manifest lists and OCI
indexes. From an index it picks the host's platform (or ``platform``),
skipping attestation entries, and follows it by digest. It fetches the image
config and returns the layers with their diff_ids. Checked on the way
(providers.registry_documents fetches and checks the documents): a
manifest pulled by digest hashes to that digest, a manifest named by an
index hashes to the index's digest and size, the ``Docker-Content-Digest``
header (when the registry sends one) matches the bytes, and the config
matches its descriptor. Layers are checked by the caller while streaming.
Docker schema 1 manifests (providers.schema1) are read too: their layer
sizes come from HEAD requests, their digest from the unsigned payload.

Where a reference goes:

- A reference on docker.io (``busybox``, ``library/busybox``) goes to each
  of ``mirrors`` in order, then to ``registry`` (the ``--docker_registry``
  URL), as Mesos and Docker do. A mirror that fails (not found, an error
  status, down) passes the request on, after whatever retries that failure
  gets, or at once when it is not there (refused, no route, a name that
  does not resolve: no retries, as containerd and Docker). Should the last
  endpoint fail too, the mirrors passed over at once are asked again, with
  retries; then only the last endpoint's error is raised.
- A reference naming its registry (``host:5000/app:1``) goes to that host
  over HTTPS. Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) and
  hosts in ``insecure_registries`` try HTTPS once and fall back to plain
  HTTP when the TLS handshake or the connection fails, as Docker does; not
  when the host's certificate fails verification (it does speak TLS: that
  failure is the one to report).

``open(digest)`` streams a layer of an image this client resolved, resuming
broken transfers (providers.registry_blob), from the endpoint that resolved
the image. ``read_range`` and ``stream_range`` read ranges of it for lazy
pulling (providers.registry_range): from that endpoint, then, should it
fail, from the endpoints after it, as ``resolve`` tries them; following a
redirect to blob storage and reusing it. Blocking; thread-safe.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from providers import registry_documents
from providers.digest import Digest
from providers.errors import (
    BadImage,
    LazyfsError,
    NotFound,
    TemporaryFailure,
    TlsFailure,
    Unreached,
)
from providers.manifest import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    Descriptor,
    ImageManifest,
    Layer,
    layer_annotations,
    load_json,
    nondistributable,
    parse_image_config,
    parse_image_manifest,
)
from providers.oci_layout import INDEX_DEPTH_LIMIT
from providers.platforms import config_platform, index_entries, select_platform
from providers.platforms import parse_platform as parse_platform  # re-exported: the CLI's
from providers.reference import DEFAULT_REGISTRY, Reference, parse_reference
from providers.registry_auth import is_loopback as is_loopback  # re-exported: tests use it
from providers.registry_blob import BlobStream
from providers.registry_checks import (
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    digested,
    manifest_digest,
    named,
)
from providers.registry_http import RegistryHttp, redact
from providers.registry_options import RegistryOptions as RegistryOptions  # re-exported
from providers.registry_range import BlobPlace, RangeReader
from providers.schema1 import parse_schema1
from providers.source import clamp_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _BlobHome:
    bases: tuple[str, ...]  # the endpoint that resolved the image, then those after it
    repository: str
    image: str
    size: int
    missing: str | None = None  # what a 404 for it means: a non-distributable layer

    def url(self, base: str, digest: Digest) -> str:
        return f"{base}/v2/{self.repository}/blobs/{digest}"


class RegistryClient:
    """ImageSource and BlobSource over Docker registries."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options
        self.http = RegistryHttp(options.http)
        self.ranges = RangeReader(self.http)
        self._lock = threading.Lock()
        self._blobs: dict[Digest, _BlobHome] = {}
        # The base URL each registry host answered on (https or http).
        self._bases: dict[str, str] = {}

    # -- where to ask -------------------------------------------------------

    def _endpoints(self, ref: Reference, image: str) -> list[str]:
        if ref.registry == DEFAULT_REGISTRY:
            return [u.rstrip("/") for u in (*self.options.mirrors, self.options.registry)]
        return [self._host_base(ref.registry, image)]

    def _host_base(self, host: str, image: str) -> str:
        with self._lock:
            known = self._bases.get(host)
        if known is not None:
            return known
        base = f"https://{host}"
        if is_loopback(host) or host in self.options.insecure_registries:
            configured = urlsplit(self.options.registry)
            if configured.netloc == host and configured.scheme in ("http", "https"):
                base = f"{configured.scheme}://{host}"  # as --docker_registry says: no probe
            else:
                try:
                    self.http.ping(base, image=image, attempts=1)
                except LazyfsError as exc:
                    if isinstance(exc, TlsFailure) and exc.certificate:
                        raise  # it speaks TLS: plain HTTP would answer 400, hiding why
                    log.info("%s: HTTPS failed (%s); trying plain HTTP", host, exc)
                    base = f"http://{host}"
        with self._lock:
            self._bases[host] = base
        return base

    # -- ImageSource --------------------------------------------------------

    def resolve(
        self, reference: str, seen: Callable[[Digest], None] | None = None
    ) -> ImageManifest:
        """``ImageSource.resolve``; ``seen(digest)`` is called, when given, once the image
        manifest's digest is known, before its config is asked for (it must not raise)."""
        ref = parse_reference(reference)
        endpoints = self._endpoints(ref, reference)
        unreached: list[int] = []  # mirrors passed over at once, asked again last
        for i, base in enumerate(endpoints[:-1]):
            try:
                return self._resolve_at(tuple(endpoints[i:]), ref, reference, seen)
            except LazyfsError as exc:  # any failure at a mirror passes the request on
                log.warning("mirror %s failed for %s: %s", redact(base), reference, exc)
                if isinstance(exc, Unreached):
                    unreached.append(i)
        try:
            return self._resolve_at((endpoints[-1],), ref, reference, seen)
        except LazyfsError as exc:
            if unreached:
                log.warning("%s failed for %s: %s; asking the mirrors passed over again",
                            redact(endpoints[-1]), reference, exc)  # fmt: skip
            for i in unreached:  # down for a moment, maybe: with retries this time
                try:
                    bases = tuple(endpoints[i:])
                    return self._resolve_at(bases, ref, reference, seen, passing=False)
                except LazyfsError as again:
                    log.warning("mirror %s failed again for %s: %s", redact(bases[0]),
                                reference, again)  # fmt: skip
            raise  # the upstream's failure is the one told

    def named_digest(self, reference: str) -> Digest:
        """The digest of the image manifest ``reference`` names now: through image
        indexes, the entry of this client's platform, as ``resolve`` picks it.

        Each request tried once, one manifest per endpoint (and each index on
        the way): a start that holds a stored image asks whether its tag still
        names it, and a registry that cannot be reached is told by
        TemporaryFailure at once, not after retries. Endpoints are asked in
        ``resolve``'s order; the last one's failure is raised.
        """
        ref = parse_reference(reference)
        endpoints = self._endpoints(ref, reference)
        for i, base in enumerate(endpoints):
            try:
                return self._named_at(base, ref, reference, passing=i < len(endpoints) - 1)
            except LazyfsError as exc:
                if i == len(endpoints) - 1:
                    raise
                log.info("mirror %s failed for %s: %s", redact(base), reference, exc)
        raise AssertionError("unreachable: a reference has at least one endpoint")

    def _named_at(self, base: str, ref: Reference, image: str, passing: bool) -> Digest:
        scope = f"repository:{ref.repository}:pull"
        if ref.digest is None:
            try:
                said = registry_documents.manifest_head(
                    self.http, base, ref.repository, ref.tag_or_digest, image, scope, passing
                )
            except TemporaryFailure as exc:
                if exc.status != 501:  # not there, overloaded: no GET is answered either
                    raise
                log.info("%s: HEAD of its manifest failed: %s", image, exc)
                said = None  # a server that has no HEAD
            except LazyfsError as exc:  # a registry that answers no HEAD: asked by GET
                log.info("%s: HEAD of its manifest failed: %s", image, exc)
                said = None
            if said is not None:
                return said
        data, media_type = registry_documents.fetch_manifest(
            self.http, base, ref.repository, ref.tag_or_digest, image, scope,
            want=ref.digest, passing=passing, attempts=1,
        )  # fmt: skip
        digest = manifest_digest(data, media_type, image)
        for _ in range(INDEX_DEPTH_LIMIT):
            doc = named(image, load_json, data, "manifest")
            kind = (doc.get("mediaType") if isinstance(doc, dict) else None) or media_type
            if kind not in (OCI_INDEX, DOCKER_MANIFEST_LIST) and not (
                isinstance(doc, dict) and "manifests" in doc
            ):
                return digest  # as ``_resolve_at`` tells an index from a manifest
            entry = named(image, self._pick, doc, image)
            if entry.media_type not in (OCI_INDEX, DOCKER_MANIFEST_LIST):
                return entry.digest  # not asked for: its digest is all a start compares
            data, media_type = registry_documents.fetch_manifest(
                self.http, base, ref.repository, entry.digest, image, scope,
                want=entry, attempts=1,
            )  # fmt: skip
            digest = entry.digest
        raise BadImage(f"{image}: image indexes nest deeper than {INDEX_DEPTH_LIMIT}")

    def _resolve_at(
        self,
        bases: tuple[str, ...],
        ref: Reference,
        image: str,
        seen: Callable[[Digest], None] | None,
        passing: bool = True,
    ) -> ImageManifest:
        base = bases[0]
        scope = f"repository:{ref.repository}:pull"
        # A mirror (an endpoint comes after it) that is not there is passed over (Unreached).
        passing = passing and len(bases) > 1
        data, media_type = registry_documents.fetch_manifest(
            self.http, base, ref.repository, ref.tag_or_digest, image, scope,
            want=ref.digest, passing=passing,
        )  # fmt: skip
        digest = manifest_digest(data, media_type, image)
        depth = 0
        while True:
            doc = named(image, load_json, data, "manifest")
            kind = (doc.get("mediaType") if isinstance(doc, dict) else None) or media_type
            if kind in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED) or (
                isinstance(doc, dict) and doc.get("schemaVersion") == 1
            ):
                if depth:
                    raise BadImage(f"{image}: an image index lists a schema 1 manifest")
                # Read from what the digest covers, never from the signatures around it.
                covered = digested(data, media_type, image)
                return self._schema1(bases, ref.repository, covered, digest, image, scope)
            if kind not in (OCI_INDEX, DOCKER_MANIFEST_LIST) and not (
                isinstance(doc, dict) and "manifests" in doc
            ):
                break
            depth += 1
            if depth > INDEX_DEPTH_LIMIT:
                raise BadImage(f"{image}: image indexes nest deeper than {INDEX_DEPTH_LIMIT}")
            entry = named(image, self._pick, doc, image)
            data, media_type = registry_documents.fetch_manifest(
                self.http, base, ref.repository, entry.digest, image, scope, want=entry
            )
            digest = entry.digest
        manifest = named(image, parse_image_manifest, data, media_type)
        if seen is not None:
            seen(digest)
        config = registry_documents.fetch_config(
            self.http, base, ref.repository, manifest.config, image, scope
        )
        runtime, diff_ids = named(image, parse_image_config, config)
        if len(diff_ids) != len(manifest.layers):
            raise BadImage(
                f"{image}: manifest has {len(manifest.layers)} layers "
                f"but config has {len(diff_ids)} diff_ids"
            )
        notes = [layer_annotations(desc.annotations) for desc in manifest.layers]
        layers = tuple(
            Layer(desc.digest, desc.media_type, desc.size, diff_id, note)
            for desc, diff_id, note in zip(manifest.layers, diff_ids, notes, strict=True)
        )
        why = {d.digest: nondistributable(d, "the registry") for d in manifest.layers}
        self._remember(layers, bases, ref.repository, image, why)
        # One picked from an index is of the platform asked for; a single image says its own.
        platform = "" if depth else named(image, config_platform, config)
        return ImageManifest(image, digest, layers, runtime, platform)

    def _remember(
        self,
        layers: tuple[Layer, ...],
        bases: tuple[str, ...],
        repository: str,
        image: str,
        missing: dict[Digest, str | None] | None = None,
    ) -> None:
        with self._lock:
            for layer in layers:
                why = (missing or {}).get(layer.digest)
                self._blobs[layer.digest] = _BlobHome(bases, repository, image, layer.size, why)

    def _schema1(
        self,
        bases: tuple[str, ...],
        repository: str,
        data: bytes,
        digest: Digest,
        image: str,
        scope: str,
    ) -> ImageManifest:
        base = bases[0]
        parsed = named(image, parse_schema1, data)
        layers = []
        for layer_digest in parsed.layers:
            # Schema 1 gives no sizes; the registry's answer bounds the download
            # and the digest still proves the bytes.
            url = f"{base}/v2/{repository}/blobs/{layer_digest}"
            response = self.http.get(url, image=image, scope=scope, method="HEAD")
            response.close()
            try:
                size = int(response.headers["Content-Length"])
            except (KeyError, ValueError):
                why = "gave no size for a schema 1 layer"
                raise BadImage(f"{image}: {redact(url)} {why}") from None
            layers.append(Layer(layer_digest, DOCKER_LAYER_GZIP, size))
        self._remember(tuple(layers), bases, repository, image)
        return ImageManifest(image, digest, tuple(layers), parsed.config, parsed.platform)

    def _pick(self, doc: object, image: str) -> Descriptor:
        entries = index_entries(doc, "image index")
        return select_platform(entries, image, self.options.platform)

    # -- BlobSource ---------------------------------------------------------

    def _home(self, digest: Digest) -> _BlobHome:
        with self._lock:
            home = self._blobs.get(digest)
        if home is None:
            raise NotFound(
                f"blob {digest} is not in any image this registry client resolved", digest=digest
            )
        return home

    def add_blob(self, repository: str, digest: Digest, size: int) -> None:
        """Serve blob ``digest`` of ``repository`` (``host:5000/app``) with no image resolved."""
        ref = parse_reference(repository)
        bases = tuple(self._endpoints(ref, repository))
        self._remember((Layer(digest, "", size),), bases, ref.repository, repository)

    def open(self, digest: Digest) -> BinaryIO:
        home = self._home(digest)
        raw = BlobStream(
            self.http,
            home.url(home.bases[0], digest),
            image=home.image,
            scope=f"repository:{home.repository}:pull",
            size=home.size,
            missing=home.missing,
        )
        return io.BufferedReader(raw, 1 << 20)

    def _place(self, digest: Digest) -> BlobPlace:
        home = self._home(digest)
        urls = tuple(home.url(base, digest) for base in home.bases)
        return BlobPlace(urls, home.image, f"repository:{home.repository}:pull", home.size)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the blob from ``offset``; short only at its end.

        One Range request (more if it breaks off); a registry that answers
        200 with the whole blob is read through to the range, never held
        whole. Raises as ``BlobSource.read_range`` says, and BadImage when
        the registry answers another range than was asked.
        """
        place = self._place(digest)
        length = clamp_range(offset, length, place.size)
        return self.ranges.read(place, offset, length) if length else b""

    def stream_range(self, digest: Digest, offset: int, length: int) -> Iterator[tuple[int, bytes]]:
        """The range as ``(blob offset, bytes)`` pieces as they arrive, bytes before and
        after it included when the registry sends the whole blob
        (providers.source.StreamingBlobSource states the contract)."""
        place = self._place(digest)
        return self.ranges.stream(place, offset, clamp_range(offset, length, place.size))
