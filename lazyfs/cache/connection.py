"""One blocking connection to the cache daemon's socket, the status request over one, and
what a failure it answers means (``failure_error``).

Used by mount processes (``lazyfs.cache.client``) and by whoever asks whether
a daemon answers (``lazyfs.cache.spawn``, ``lazyfs cache``).
"""

from __future__ import annotations

import socket
from pathlib import Path

from lazyfs.cache.framing import FrameDecoder, ProtocolError, encode_frame
from lazyfs.cache.layout import socket_path
from lazyfs.cache.messages import (
    Failure,
    FailureKind,
    Read,
    Request,
    Response,
    Status,
    StatusOk,
    decode_response,
    encode_request,
)
from providers.errors import LazyfsError, NotFound, TemporaryFailure
from providers.unix_address import unix_address

_RECEIVE = 1 << 16


class DaemonError(LazyfsError):
    """The daemon answered a read with a failure (``kind``, ``reason``) other than NotFound."""

    def __init__(self, message: str, *, kind: FailureKind) -> None:
        super().__init__(message)
        self.kind = kind.name


class Connection:
    """One blocking connection to the daemon's socket: ``call`` sends a request, waits its answer.

    Raises OSError when the daemon is unreachable or hangs up, ProtocolError
    when it answers out of step. Not for two threads at once.
    """

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            with unix_address(path, "--cache_dir") as address:  # a deep one by a short path
                self._sock.connect(address)
        except BaseException:
            self._sock.close()
            raise
        self._decoder = FrameDecoder()
        self._frames: list[bytes] = []

    def call(self, request: Request) -> Response:
        self._sock.sendall(encode_frame(encode_request(request)))
        while not self._frames:
            data = self._sock.recv(_RECEIVE)
            if not data:
                raise ConnectionResetError("the cache daemon closed the connection")
            self._frames.extend(self._decoder.feed(data))
        response = decode_response(self._frames.pop(0))
        if response.id != request.id:
            raise ProtocolError(f"answer to request {response.id}, expected {request.id}")
        return response

    def close(self) -> None:
        self._sock.close()


def status(cache_dir: Path, timeout: float | None = 5.0) -> StatusOk:
    """The daemon's status, asked once; OSError when none answers at ``cache_dir``."""
    connection = Connection(socket_path(cache_dir), timeout)
    try:
        response = connection.call(Status(1))
    finally:
        connection.close()
    if not isinstance(response, StatusOk):
        raise ProtocolError(f"a status request answered with {response}")
    return response


def failure_error(request: Request, failure: Failure) -> LazyfsError:
    """The error a mount raises for the daemon's ``failure`` to answer ``request``."""
    what = "the cache daemon"
    if isinstance(request, Read):
        blob = request.range
        what = f"reading {blob.digest} bytes {blob.offset}+{blob.length} through the cache"
    if failure.kind is FailureKind.NOT_FOUND:
        digest = request.range.digest if isinstance(request, Read) else None
        return NotFound(f"{what}: {failure.reason}", digest=digest)
    if failure.kind is FailureKind.TEMPORARY:
        return TemporaryFailure(f"{what}: {failure.reason}")
    return DaemonError(f"{what}: {failure.reason} ({failure.kind.name})", kind=failure.kind)
