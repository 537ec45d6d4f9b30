"""Content digests (``algorithm:hex``) and a reader that checks them while streaming."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO, NewType

from providers.errors import BadImage, DigestMismatch

Digest = NewType("Digest", str)

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"(sha256|sha512):([0-9a-f]+)")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")  # nearly every digest
CHUNK = 1 << 20


def is_digest(text: str) -> bool:
    """Whether ``parse_digest`` takes ``text``; cheap for the commonest form, sha256."""
    if _SHA256.fullmatch(text):
        return True
    match = _DIGEST_RE.fullmatch(text)  # "$" would let a trailing newline through
    return match is not None and len(match.group(2)) == _HEX_LENGTH[match.group(1)]


def parse_digest(text: str) -> Digest:
    """Return ``text`` as a Digest, or raise BadImage naming what is wrong."""
    if not is_digest(text):
        raise BadImage(f"invalid digest {text!r}")
    return Digest(text)


def algorithm(digest: Digest) -> str:
    return digest.split(":", 1)[0]


def hex_part(digest: Digest) -> str:
    return digest.split(":", 1)[1]


def digest_bytes(data: bytes, algo: str = "sha256") -> Digest:
    return Digest(f"{algo}:{hashlib.new(algo, data).hexdigest()}")


def digest_stream(stream: BinaryIO, algo: str = "sha256") -> tuple[Digest, int]:
    """Hash ``stream`` to EOF; returns the digest and the number of bytes read."""
    hasher = hashlib.new(algo)
    size = 0
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return Digest(f"{algo}:{hasher.hexdigest()}"), size


class HashingWriter:
    """Writes through to ``out`` and hashes what passes: the digest of a file as it is made."""

    def __init__(self, out: BinaryIO, algo: str = "sha256") -> None:
        self._out = out
        self._algo = algo
        self._hasher = hashlib.new(algo)
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        self.size += len(data)
        return self._out.write(data)

    def digest(self) -> Digest:
        return Digest(f"{self._algo}:{self._hasher.hexdigest()}")


class VerifyingReader:
    """Wraps a stream and checks digest and size when the stream reaches EOF.

    ``read`` raises DigestMismatch at EOF (or as soon as more than ``size``
    bytes arrive) so a consumer that reads to the end never acts on bytes that
    were not what was promised. ``size`` may be None when the format gives none.
    """

    def __init__(self, stream: BinaryIO, digest: Digest, size: int | None, what: str) -> None:
        self._stream = stream
        self._digest = digest
        self._size = size
        self._what = what
        self._hasher = hashlib.new(algorithm(digest))
        self._seen = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._hasher.update(data)
        self._seen += len(data)
        if self._size is not None and self._seen > self._size:
            raise DigestMismatch(
                f"{self._what} size", expected=str(self._size), actual=f"more than {self._size}"
            )
        if not data or n < 0:
            self.verify()
        return data

    def verify(self) -> None:
        """Check what was read so far against the promise; idempotent."""
        if self._checked:
            return
        if self._size is not None and self._seen != self._size:
            raise DigestMismatch(
                f"{self._what} size", expected=str(self._size), actual=str(self._seen)
            )
        actual = f"{algorithm(self._digest)}:{self._hasher.hexdigest()}"
        if actual != self._digest:
            raise DigestMismatch(self._what, expected=self._digest, actual=actual)
        self._checked = True

    def close(self) -> None:
        self._stream.close()
