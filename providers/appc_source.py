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

- ``AppcStoreSource`` finds the image in the store only: by id (refused
  when its name, or a label asked for, is not the one written), or by name
  and labels with the spec's defaults.
- ``AppcDiscoverySource`` fetches it by simple discovery (an http(s) URL
  prefix or a directory) and adds it to the store; an image whose id,
  name or labels (with the store's defaults for os and arch) are not those
  asked for is refused. Its ``resolve`` reads the whole
  ACI: simple discovery has no metadata apart from the image. Over HTTP, a
  fetch that fails temporarily (connection, 429, 5xx, a body that broke
  off or crawled) is tried again from its start, through providers.retry,
  under the registry's ``HttpOptions`` (attempts, backoff, the body's speed
  floor, ``blob_timeout`` for the whole fetch); one that fails for good (a
  redirect loop, a refused certificate, another status) is not.

Blocking; each call is independent, so both are safe to share between
threads.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast
from urllib.parse import urlparse

import requests
import urllib3

from providers.aci import AciInfo
from providers.appc_manifest import AciManifest, check_image_id
from providers.appc_store import CHUNK, AppcStore, discovery_location, label_mismatch, shown
from providers.digest import Digest
from providers.errors import BadImage, DigestMismatch, NotFound, TemporaryFailure
from providers.http_body import body_chunks
from providers.http_session import new_session, redact, send, tls_failure
from providers.manifest import ImageManifest, Layer
from providers.registry_options import HttpOptions
from providers.retry import (
    Again,
    Backoff,
    Deadline,
    Retries,
    SpeedFloor,
    TooSlow,
    is_temporary,
    retrying,
    seconds,
    short_cause,
)

# Seconds for an answer's headers to arrive.
HTTP_TIMEOUT = 60
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
    """The ImageManifest of the stored ACI ``image_id``: itself as its one layer.

    NotFound when the store has no usable ``image.aci`` for it (gone since it
    was looked up): discovery may bring it again.
    """
    digest = Digest("sha512:" + image_id.removeprefix("sha512-"))
    try:
        size = store.aci_path(image_id).stat().st_size
    except OSError as error:
        raise NotFound(
            f"appc image {image_id}: its image.aci in the store: {error.strerror}"
        ) from None
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


def check_named(manifest: AciManifest, ref: AppcRef, where: str) -> None:
    """Refuse (BadImage) an image found by id whose name, or a label ``ref`` asks
    for, is not the one written: it would be recorded and listed under them.

    Only the labels asked for: an id names one image, whatever the defaults.
    For the image asked for only (``lazyfs.images.appc``): a dependency pinned
    by id is taken by its id, as Mesos takes it, and recorded nowhere.
    """
    if manifest.name != ref.name:
        raise BadImage(f"appc image {where} is named {manifest.name!r}, not {ref.name!r}")
    wrong = label_mismatch(manifest, dict(ref.labels), implied=())
    if wrong is not None:
        key, got, value = wrong
        raise BadImage(f"appc image {where} has the label {key}={got!r}, not {value!r}")


class AppcDiscoverySource:
    """Simple discovery under ``prefix`` (an http(s) URL prefix or a directory) into ``store``."""

    def __init__(self, store: AppcStore, prefix: str, options: HttpOptions | None = None) -> None:
        self.store = store
        self.prefix = prefix
        self.options = options or HttpOptions()

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
            # With the defaults the store looks it up by for os and arch, not only the labels
            # asked for: an image for another arch was kept, never found again, and fetched
            # anew by every provision. Not version's: a publisher's "latest" is as a rule a
            # link to an ACI labelled with its own version, which is what was asked for.
            wrong = label_mismatch(info.manifest, dict(ref.labels), implied=("os", "arch"))
            if wrong is not None:
                key, got, value = wrong
                raise BadImage(
                    f"appc image {shown(location)} has the label {key}={got!r}, not {value!r}"
                )

        if urlparse(location).scheme in ("http", "https"):
            # A fetch that broke is tried again whole: the store keeps no partial ACI.
            options = self.options
            backoff = Backoff(options.backoff, options.max_backoff)
            retries = Retries(options.attempts, backoff, Deadline(options.blob_timeout))
            info = retrying(retries, lambda: self._fetch(location, wanted, retries.deadline))
        else:
            info = self._add(location, wanted, Deadline(0))
        return aci_image(self.store, reference, info.image_id, info.manifest)

    def _add(self, location: str, wanted: Callable[[AciInfo], None], deadline: Deadline) -> AciInfo:
        with open_location(location, self.options, deadline) as stream:
            return self.store.add(stream, shown(location), wanted)

    def _fetch(
        self, location: str, wanted: Callable[[AciInfo], None], deadline: Deadline
    ) -> AciInfo:
        try:
            return self._add(location, wanted, deadline)
        except TemporaryFailure as exc:
            raise Again(str(exc), exc) from exc


@contextlib.contextmanager
def open_location(
    location: str, options: HttpOptions | None = None, deadline: Deadline | None = None
) -> Iterator[BinaryIO]:
    """Open a discovered ACI for reading: NotFound when it is not there.

    Over HTTP, the answer's headers must arrive within ``HTTP_TIMEOUT``
    seconds, and the body is held to ``options``' speed floor as a registry
    blob is (providers.http_body): ``min_speed`` bytes/s over each
    ``min_speed_time`` s, or, with the floor off, silent no longer than
    ``HTTP_TIMEOUT``; reads end when ``deadline`` has passed.  Each read
    returns what has arrived, and checks for cancellation first, so a
    trickle neither holds a read nor hides a SIGTERM.  TemporaryFailure
    (while opening, or from the stream's reads) says trying again may help:
    no answer, a connection refused, cut or reset, a body too slow, 429 or
    5xx.  A redirect loop, a redirect to another scheme or any other status
    is BadImage, a refused certificate TlsFailure.  Not retried here: the
    caller retries the whole fetch.
    """
    options = options or HttpOptions()
    if urlparse(location).scheme not in ("http", "https"):
        try:
            with open(location, "rb") as file:
                yield file
        except FileNotFoundError:
            raise NotFound(f"appc image {shown(location)} not found", url=location) from None
        return
    try:
        response = send(new_session(), "GET", location, seconds=HTTP_TIMEOUT)
    except requests.exceptions.SSLError as error:
        raise tls_failure(error, location, f"appc image {shown(location)}") from None
    except requests.Timeout:
        raise TemporaryFailure(
            f"appc image {shown(location)}: no answer within {HTTP_TIMEOUT} s", url=redact(location)
        ) from None
    except requests.RequestException as error:
        if not is_temporary(error):
            raise BadImage(f"appc image {shown(location)}: {short_cause(error)}") from None
        raise TemporaryFailure(
            f"appc image {shown(location)}: {short_cause(error)}", url=redact(location)
        ) from None
    with contextlib.closing(response):
        status = response.status_code
        if status == 404:
            raise NotFound(
                f"appc image {shown(location)} not found (HTTP 404)", url=redact(location)
            )
        if status >= 500 or status == 429:
            raise TemporaryFailure(
                f"appc image {shown(location)}: HTTP {status}", url=redact(location), status=status
            )
        if status != 200:
            raise BadImage(f"appc image {shown(location)}: HTTP {status}")
        body = _Body(response, location, options, deadline or Deadline(0))
        yield cast(BinaryIO, io.BufferedReader(body, CHUNK))


class _Body(io.RawIOBase):
    """An HTTP answer's body as it arrives; a connection that breaks or crawls is a
    TemporaryFailure."""

    def __init__(
        self, response: requests.Response, location: str, options: HttpOptions, deadline: Deadline
    ) -> None:
        super().__init__()
        self._location = location
        self._deadline = deadline
        floor = SpeedFloor(options.min_speed, options.min_speed_time)
        idle = floor.window if floor.enabled else HTTP_TIMEOUT
        self._slow = (
            f"sent less than {floor.min_speed} bytes/s for {seconds(floor.window)} s"
            if floor.enabled
            else f"sent nothing for {seconds(idle)} s"
        )
        self._chunks = body_chunks(response, floor, idle)  # checks for cancellation
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._pending:
            self._pending = self._next()
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _next(self) -> bytes:
        # Not an OSError: the ACI reader takes those for a damaged archive.
        what = f"appc image {shown(self._location)}"
        if self._deadline.expired():
            raise TemporaryFailure(
                f"{what}: did not arrive within {seconds(self._deadline.seconds)} s",
                url=redact(self._location),
            )
        try:
            return next(self._chunks, b"")
        except TooSlow as error:
            raise TemporaryFailure(f"{what}: {self._slow}", url=redact(self._location)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise TemporaryFailure(
                f"{what}: {short_cause(error)}", url=redact(self._location)
            ) from error
