"""The errors lazyfs raises, in one tree.

    LazyfsError                  every error lazyfs means to raise
    ├── NotFound                 an image, tag, blob or container that is not there
    ├── Unauthorized             credentials missing or refused
    ├── DigestMismatch           bytes whose digest or size is not what was promised
    ├── BadImage                 an image, manifest, reference or layer we cannot use
    │   ├── InvalidReference     a reference that breaks the reference grammar
    │   └── UnsafeLayer          a layer entry that would escape the rootfs
    ├── TemporaryFailure         worth retrying: connection reset, 429, 5xx
    ├── Conflict                 a container id already provisioned
    ├── BackendError             a backend cannot do what was asked
    └── UsageError               an argument the caller got wrong (container id, flag)

Each error carries its facts as attributes and renders them as one line, so
the CLI can print ``str(error)`` and nothing else. Lower-level exceptions
(OSError, HTTP errors, JSON errors) are translated at one boundary each and
chained with ``raise ... from``.
"""

from __future__ import annotations


class LazyfsError(Exception):
    """Base of every error lazyfs raises on purpose."""


class NotFound(LazyfsError):
    pass


class Unauthorized(LazyfsError):
    pass


class DigestMismatch(LazyfsError):
    """Bytes that do not hash (or measure) to what the manifest promised."""

    def __init__(self, what: str, *, expected: str, actual: str) -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class BadImage(LazyfsError):
    pass


class InvalidReference(BadImage):
    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


class UnsafeLayer(BadImage):
    """A layer entry that would write or follow a link outside the rootfs."""

    def __init__(self, layer: str, entry: str, reason: str) -> None:
        super().__init__(f"unsafe layer {layer}: entry {entry!r} {reason}")
        self.layer = layer
        self.entry = entry
        self.reason = reason


class TemporaryFailure(LazyfsError):
    pass


class Conflict(LazyfsError):
    pass


class BackendError(LazyfsError):
    pass


class UsageError(LazyfsError):
    pass


def bad_entry(layer: str, entry: str, reason: str) -> BadImage:
    """BadImage for one entry of a layer, worded the same wherever a layer is read."""
    return BadImage(f"bad layer {layer}: entry {entry!r} {reason}")
