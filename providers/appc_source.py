"""Appc images as ImageSources: the Appc store, and simple discovery into it.

An Appc reference is ``NAME[,LABEL=VALUE...][@sha512-HEX]``: the name and
labels that simple discovery and the store look an image up by, and an
optional image id that pins it (as ``Image.Appc``'s ``name``, ``labels`` and
``id``). ``AppcRef`` reads and writes that form.

Both sources describe one ACI, without its dependencies (the Appc provider
walks those, because their whitelists decide what each layer holds): the
image's digest is its id (``sha512:HEX``), its one layer is the ACI itself
(uncompressed, media type ``ACI_MEDIA_TYPE``, the same digest), its config
the manifest's ``app``. The ACI's manifest, dependencies included, is then
in the Appc store under that id.

- ``AppcStoreSource`` finds the image in the store only: by id, or by name
  and labels with the spec's defaults.
- ``AppcDiscoverySource`` fetches it by simple discovery (an http(s) URL
  prefix or a directory) and adds it to the store; an image whose id or
  name is not the one asked for is refused. Its ``resolve`` reads the whole
  ACI: simple discovery has no metadata apart from the image. Over HTTP, a
  fetch that fails temporarily (connection, 429, 5xx, a body that broke
  off) is tried again from its start, through providers.retry.

Blocking; each call is independent, so both are safe to share between
threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from providers.aci import AciInfo
from providers.appc_manifest import AciManifest, check_image_id
from providers.appc_store import AppcStore, discovery_location, open_location, shown
from providers.digest import Digest
from providers.errors import BadImage, DigestMismatch, NotFound, TemporaryFailure
from providers.manifest import ImageManifest, Layer
from providers.retry import Again, Backoff, Deadline, Retries, retrying

# Tries of one HTTP fetch, as for registries (providers.registry_http.HttpOptions).
ATTEMPTS = 5
# Not registered anywhere: it names an ACI blob in a Layer, nothing reads it from the wire.
ACI_MEDIA_TYPE = "application/vnd.appc.image.aci"


@dataclass(frozen=True)
class AppcRef:
    """What an Appc reference asks for; ``image_id`` is ``sha512-HEX`` or empty."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    image_id: str = ""

    def __str__(self) -> str:
        text = ",".join([self.name, *(f"{k}={v}" for k, v in self.labels)])
        return f"{text}@{self.image_id}" if self.image_id else text

    def reference(self) -> str:
        """The text form sources are given; BadImage if it would read back as another
        reference: a label value with "," or "@sha512-" in it (a dependency's may)."""
        text = str(self)
        if parse_appc_ref(text) != self:
            labels = ", ".join(f"{k}={v!r}" for k, v in self.labels)
            raise BadImage(f"appc image {self.name}: its labels ({labels}) cannot be spelled")
        return text

    def describe(self) -> str:
        """The id when there is one, else the name and labels: for messages."""
        return self.image_id or ",".join([self.name, *(f"{k}={v}" for k, v in self.labels)])


def parse_appc_ref(text: str) -> AppcRef:
    """``NAME[,LABEL=VALUE...][@sha512-HEX]`` as an AppcRef; BadImage if malformed."""
    rest, at, image_id = text.rpartition("@sha512-")
    if at:
        image_id = check_image_id("sha512-" + image_id, f"appc reference {text!r}")
    else:
        rest, image_id = text, ""
    name, *pairs = rest.split(",")
    if not name:
        raise BadImage(f"appc reference {text!r} has no name")
    labels = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise BadImage(f"appc reference {text!r}: label {pair!r} is not KEY=VALUE")
        labels.append((key, value))
    return AppcRef(name, tuple(labels), image_id)


def aci_image(
    store: AppcStore, reference: str, image_id: str, manifest: AciManifest
) -> ImageManifest:
    """The ImageManifest of the stored ACI ``image_id``: itself as its one layer."""
    digest = Digest("sha512:" + image_id.removeprefix("sha512-"))
    size = store.aci_path(image_id).stat().st_size
    layer = Layer(digest, ACI_MEDIA_TYPE, size)
    return ImageManifest(reference, digest, (layer,), manifest.config)


class AppcStoreSource:
    """The images already in an Appc store."""

    def __init__(self, store: AppcStore) -> None:
        self.store = store

    def resolve(self, reference: str) -> ImageManifest:
        ref = parse_appc_ref(reference)
        found = ref.image_id or self.store.find(ref.name, dict(ref.labels))
        manifest = self.store.manifest(found) if found else None
        if not found or manifest is None:
            raise NotFound(f"appc image {ref.describe()} is not in the store")
        return aci_image(self.store, reference, found, manifest)


class AppcDiscoverySource:
    """Simple discovery under ``prefix`` (an http(s) URL prefix or a directory) into ``store``."""

    def __init__(self, store: AppcStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def location(self, reference: str) -> str:
        """Where ``reference`` is looked for: a URL or a file path."""
        ref = parse_appc_ref(reference)
        return discovery_location(self.prefix, ref.name, dict(ref.labels))

    def resolve(self, reference: str) -> ImageManifest:
        ref = parse_appc_ref(reference)
        location = discovery_location(self.prefix, ref.name, dict(ref.labels))

        def wanted(info: AciInfo) -> None:
            # Before the store keeps it: a stored image answers for its own name later.
            if ref.image_id and info.image_id != ref.image_id:
                raise DigestMismatch(
                    f"appc image {shown(location)} id", expected=ref.image_id, actual=info.image_id
                )
            if info.manifest.name != ref.name:
                named = info.manifest.name
                raise BadImage(f"appc image {shown(location)} is named {named!r}, not {ref.name!r}")
            have = dict(info.manifest.labels)
            for key, value in ref.labels:  # those asked for (the location's defaults are not)
                if have.get(key) != value:
                    raise BadImage(
                        f"appc image {shown(location)} has the label {key}={have.get(key)!r},"
                        f" not {value!r}"
                    )

        if urlparse(location).scheme in ("http", "https"):
            # A fetch that broke is tried again whole: the store keeps no partial ACI.
            info = retrying(
                Retries(ATTEMPTS, Backoff(), Deadline(0)), lambda: self._fetch(location, wanted)
            )
        else:
            info = self._add(location, wanted)
        return aci_image(self.store, reference, info.image_id, info.manifest)

    def _add(self, location: str, wanted: Callable[[AciInfo], None]) -> AciInfo:
        with open_location(location) as stream:
            return self.store.add(stream, shown(location), wanted)

    def _fetch(self, location: str, wanted: Callable[[AciInfo], None]) -> AciInfo:
        try:
            return self._add(location, wanted)
        except TemporaryFailure as exc:
            raise Again(str(exc), exc) from exc
