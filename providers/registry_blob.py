"""A registry blob as a stream that survives broken connections.

``BlobStream`` reads ``GET /v2/NAME/blobs/DIGEST``. When the connection
breaks midway (reset, timeout, a body shorter than its Content-Length) it
asks again from where it stopped with ``Range: bytes=N-``; a registry that
ignores the range and answers 200 with the whole body has its first N bytes
skipped. Consecutive failures without progress are bounded by the HTTP
options' ``attempts``; then TemporaryFailure.

The stream is not verified: callers wrap it in providers.digest.VerifyingReader
(Store.ingest does), so a corrupted byte is caught at EOF and nothing is kept.
"""

from __future__ import annotations

import io
import re
from typing import Any

import requests
import urllib3

from providers.errors import TemporaryFailure
from providers.registry_http import RegistryHttp, redact

# What a broken body looks like from requests' and urllib3's side.
_BROKEN = (urllib3.exceptions.HTTPError, requests.RequestException, OSError)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_SKIP_CHUNK = 1 << 20


class BlobStream(io.RawIOBase):
    """Blocking, read-only, not seekable; ``size`` (when known) ends the body."""

    def __init__(
        self, http: RegistryHttp, url: str, *, image: str, scope: str, size: int | None
    ) -> None:
        super().__init__()
        self._http = http
        self._url = url
        self._image = image
        self._scope = scope
        self._size = size
        self._pos = 0
        self._failures = 0
        self._response: requests.Response | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if len(view) == 0 or (self._size is not None and self._pos >= self._size):
            return 0
        while True:
            try:
                if self._response is None:
                    self._response = self._open()
                data = self._response.raw.read(len(view), decode_content=False)
                if not data and self._size is not None and self._pos < self._size:
                    # The server closed cleanly but early: treat it as a cut.
                    raise OSError(f"body ended at {self._pos} of {self._size} bytes")
            except _BROKEN as exc:
                self._broken(exc)
                continue
            self._failures = 0
            view[: len(data)] = data
            self._pos += len(data)
            return len(data)

    def _broken(self, exc: BaseException) -> None:
        self._drop()
        self._failures += 1
        options = self._http.options
        if self._failures >= options.attempts:
            raise TemporaryFailure(
                f"{self._image}: blob download from {redact(self._url)} broke at byte "
                f"{self._pos}: {exc}"
            ) from exc
        self._http.wait_before_retry(self._failures, None, f"{redact(self._url)}: {exc}")

    def _open(self) -> requests.Response:
        headers = {"Range": f"bytes={self._pos}-"} if self._pos else {}
        response = self._http.get(
            self._url,
            image=self._image,
            scope=self._scope,
            headers=headers,
            stream=True,
            ok=(200, 206),
        )
        if self._pos and response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != self._pos:
                response.close()
                raise OSError(f"registry answered a range other than bytes={self._pos}-")
        elif self._pos:
            self._skip(response, self._pos)
        return response

    @staticmethod
    def _skip(response: requests.Response, count: int) -> None:
        """Drop the first ``count`` bytes of a full-body answer to a range request."""
        left = count
        while left:
            data = response.raw.read(min(left, _SKIP_CHUNK), decode_content=False)
            if not data:
                response.close()
                raise OSError("full-body answer ended before the resume point")
            left -= len(data)

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        self._drop()
        super().close()
