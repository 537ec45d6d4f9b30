"""The errors lazyfs raises, in one tree, and the facts each carries.

    LazyfsError                  every error lazyfs means to raise    image
    ├── NotFound                 an image, tag, blob or container     digest, url
    │                            that is not there
    ├── Unauthorized             credentials missing or refused       url, status
    ├── TlsFailure               a server whose TLS certificate       url, host, certificate
    │                            cannot be verified, or no TLS
    │                            handshake with it at all
    ├── DigestMismatch           bytes whose digest or size is not    what, expected, actual
    │                            what was promised
    ├── BadImage                 an image, manifest, reference or
    │   │                        layer we cannot use
    │   ├── InvalidReference     a reference that breaks the grammar  reference, reason
    │   └── BadEntry             one entry of a layer we refuse       layer, entry, reason
    │       └── UnsafeLayer      a layer entry that would escape      layer, entry, reason
    │                            the rootfs
    ├── TemporaryFailure         worth retrying: connection reset,    url, status,
    │   │                        429, 5xx, no answer in time          retry_after
    │   └── Unreached            a mirror that is not there: passed   url
    │                            over, asked again only if the
    │                            registry fails too (never raised
    │                            out of RegistryClient)
    ├── Conflict                 a container id already provisioned
    ├── BackendError             a backend cannot do what was asked
    └── UsageError               an argument the caller got wrong (container id, flag)

Each error renders its facts as one line, so the CLI can print
``str(error)`` and nothing else, and carries them as attributes, so code
never reads them back out of the message. Every error has ``image``: the
image its message starts with (``rich:oci: not found: ...``), or None when
the code that raised it did not know the image (the store checking a blob,
a pure parser). ``for_image`` names the image for such an error, once.
``url`` never holds credentials or a query (providers.registry_http.redact);
``status`` is the HTTP status that meant the error, when one did.
TemporaryFailure's ``retry_after`` is the wait in seconds the server asked
for with its last answer's ``Retry-After`` (a 429 or 5xx that the client's
own retries could not outwait); None when it asked none, or nothing
readable. Whoever tries again later decides how much of it to wait (the
cache daemon's background fetch: ``lazyfs.cache.origin_wait``).
DigestMismatch's ``expected`` is what was wanted, ``actual`` what was got.

Lower-level exceptions (OSError, HTTP errors, JSON errors) are translated
at one boundary each and chained with ``raise ... from``.
"""

from __future__ import annotations

from typing import Self


class LazyfsError(Exception):
    """Base of every error lazyfs raises on purpose."""

    def __init__(self, message: str = "", *, image: str | None = None) -> None:
        super().__init__(message)
        self.image = image

    def for_image(self, image: str) -> Self:
        """This error with its message starting with ``image``; itself if it already does.

        The copy keeps every fact and has this error as its cause.
        """
        if self.image == image:
            return self
        named = type(self).__new__(type(self))
        named.__dict__.update(self.__dict__)
        named.args = (f"{image}: {self}",)
        named.image = image
        named._renamed(image)
        named.__cause__ = self
        return named

    def _renamed(self, image: str) -> None:
        """Update facts that repeat the message's start; most errors have none."""


class NotFound(LazyfsError):
    def __init__(
        self,
        message: str,
        *,
        digest: str | None = None,
        url: str | None = None,
        image: str | None = None,
    ) -> None:
        super().__init__(message, image=image)
        self.digest = digest
        self.url = url


class Unauthorized(LazyfsError):
    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        image: str | None = None,
    ) -> None:
        super().__init__(message, image=image)
        self.url = url
        self.status = status


class TlsFailure(LazyfsError):
    """No trusted TLS connection to ``host``: not the credentials' fault, and not temporary.

    ``certificate`` is True when the server's certificate failed verification
    (an unknown CA, self-signed, expired, another host's name), False when
    the handshake failed otherwise (the server speaks no TLS, no common cipher).
    ``url`` is the URL asked when it failed: a redirect's, not the first one.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        host: str,
        certificate: bool,
        image: str | None = None,
    ) -> None:
        super().__init__(message, image=image)
        self.url = url
        self.host = host
        self.certificate = certificate


class DigestMismatch(LazyfsError):
    """Bytes that do not hash (or measure) to what the manifest promised."""

    def __init__(self, what: str, *, expected: str, actual: str, image: str | None = None) -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}", image=image)
        self.what = what
        self.expected = expected
        self.actual = actual

    def _renamed(self, image: str) -> None:
        self.what = f"{image}: {self.what}"


class BadImage(LazyfsError):
    pass


class InvalidReference(BadImage):
    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


class BadEntry(BadImage):
    """One entry of a layer that lazyfs refuses.

    ``layer`` names the layer as its reader does: its digest, where it has one.
    """

    WORD = "bad"

    def __init__(self, layer: str, entry: str, reason: str) -> None:
        super().__init__(f"{self.WORD} layer {layer}: entry {entry!r} {reason}")
        self.layer = layer
        self.entry = entry
        self.reason = reason


class UnsafeLayer(BadEntry):
    """A layer entry that would write or follow a link outside the rootfs."""

    WORD = "unsafe"


class TemporaryFailure(LazyfsError):
    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        image: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, image=image)
        self.url = url
        self.status = status
        # NaN and 0 ask no wait.
        self.retry_after = retry_after if retry_after is not None and retry_after > 0 else None


class Unreached(TemporaryFailure):
    """No connection to a mirror's host could be made (refused, no route, a name that does
    not resolve), and it was not tried again: the next endpoint is asked at once, and this
    one again, with retries, only if the last endpoint (the registry) fails too."""


class Conflict(LazyfsError):
    pass


class BackendError(LazyfsError):
    pass


class UsageError(LazyfsError):
    pass


def bad_entry(layer: str, entry: str, reason: str) -> BadEntry:
    """The error for one entry of a layer, worded the same wherever a layer is read."""
    return BadEntry(layer, entry, reason)
