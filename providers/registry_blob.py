"""A registry blob as a stream that survives broken connections.

``BlobStream`` reads ``GET /v2/NAME/blobs/DIGEST``. When the connection
breaks midway (reset, a body shorter than its Content-Length, a body slower
than the speed floor or silent for its window) it asks again from where it
stopped with ``Range: bytes=N-``; a registry that ignores the range and
answers 200 with the whole body has its first N bytes skipped. Failures are
counted by one providers.retry.Retries (through ``retrying``): ``attempts``
in a row without progress (a speed window's worth of bytes, so a trickle that brings a byte
per resume does not count as progress), or the blob's deadline
(``blob_timeout``), end the download with TemporaryFailure.

Range reads for lazy pulling are providers.registry_range's.

The stream is not verified: callers wrap it in providers.digest.VerifyingReader
(Store.ingest does), so a corrupted byte is caught at EOF and nothing is kept.
Each read checks for trio cancellation (providers.retry.checkpoint), so a
cancelled or interrupted pull stops within one chunk or one silent window.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import requests

from providers.errors import NotFound, TemporaryFailure
from providers.registry_checks import parse_content_range
from providers.registry_http import RegistryHttp, redact
from providers.retry import Again, Deadline, is_temporary, retrying, seconds, short_cause


class BlobStream(io.RawIOBase):
    """Blocking, read-only, not seekable; ``size`` (when known) ends the body.

    ``missing``: what to say, instead of the registry's 404, when it does not
    have the blob (providers.manifest.nondistributable: a layer it need not hold).
    """

    def __init__(
        self,
        http: RegistryHttp,
        url: str,
        *,
        image: str,
        scope: str,
        size: int | None,
        missing: str | None = None,
    ) -> None:
        super().__init__()
        self._missing = missing
        self._http = http
        self._url = url
        self._image = image
        self._scope = scope
        self._size = size
        self._pos = 0
        options = http.options
        self._retries = http.retries(Deadline(options.blob_timeout))
        self._floor = http.speed_floor()
        # Bytes a resume must bring before earlier failures stop counting.
        self._progress = max(1, int(options.min_speed * options.min_speed_time))
        self._since_failure = 0
        self._response: requests.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if len(view) == 0 or (self._size is not None and self._pos >= self._size):
            return 0
        data = retrying(self._retries, self._attempt)
        count = min(len(view), len(data))
        view[:count] = data[:count]
        self._pending = data[count:]
        self._pos += count
        self._since_failure += count
        if self._since_failure >= self._progress:
            self._retries.progressed()
        return count

    def _attempt(self) -> bytes:
        """The next bytes, opening or resuming as needed; Again when the transfer broke."""
        deadline = self._retries.deadline
        if deadline.expired():
            self._drop()
            raise TemporaryFailure(
                f"{self._image}: blob download from {redact(self._url)} did not finish "
                f"within {seconds(deadline.seconds)} s (at byte {self._pos})",
                url=redact(self._url),
                image=self._image,
            )
        try:
            return self._next()
        except Exception as exc:
            if not is_temporary(exc):
                raise
            self._drop()
            self._since_failure = 0
            late = f" (deadline of {seconds(deadline.seconds)} s)" if deadline.seconds > 0 else ""
            failed = TemporaryFailure(
                f"{self._image}: blob download from {redact(self._url)} broke at byte "
                f"{self._pos}: {short_cause(exc)}{late if deadline.expired() else ''}",
                url=redact(self._url),
                image=self._image,
            )
            raise Again(f"{redact(self._url)}: {short_cause(exc)}", failed) from exc

    def _next(self) -> bytes:
        """The next bytes of the body (at least one unless at its end); opens as needed."""
        if self._pending:
            return self._pending
        if self._chunks is None:
            self._chunks = self._open()
            if self._pending:
                return self._pending
        data = next(self._chunks, b"")
        if not data and self._size is not None and self._pos < self._size:
            # The server closed cleanly but early: treat it as a cut.
            raise OSError(f"body ended at {self._pos} of {self._size} bytes")
        return data

    def _open(self) -> Iterator[bytes]:
        headers = {"Range": f"bytes={self._pos}-"} if self._pos else {}
        try:
            response = self._http.get(
                self._url,
                image=self._image,
                scope=self._scope,
                headers=headers,
                ok=(200, 206),
            )
        except NotFound as exc:
            if self._missing is None:
                raise
            raise NotFound(
                f"{self._image}: {self._missing}", url=exc.url, image=self._image
            ) from exc
        self._response = response
        if self._pos and response.status_code == 206:
            parsed = parse_content_range(response.headers.get("Content-Range", ""))
            if parsed is None or parsed[0] != self._pos:
                raise OSError(f"registry answered a range other than bytes={self._pos}-")
        chunks = self._http.body(response, self._floor)
        if self._pos and response.status_code != 206:
            self._pending = _skip(chunks, self._pos)
        return chunks

    def _drop(self) -> None:
        self._chunks = None
        self._pending = b""
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        self._drop()
        super().close()


def _skip(chunks: Iterator[bytes], count: int) -> bytes:
    """Drop the first ``count`` bytes of a full-body answer to a range request.

    Returns what the last chunk held past them.
    """
    left = count
    for data in chunks:
        if len(data) > left:
            return data[left:]
        left -= len(data)
        if not left:
            return b""
    raise OSError("full-body answer ended before the resume point")
