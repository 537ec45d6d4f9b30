"""Where a registry sent a blob: storage URLs from redirects, kept until they expire. No I/O.

Registries backed by object storage (S3, GCS, Azure) answer a blob request
with a redirect (307 or 302) to a signed URL on another host. Asking the
registry for every range of a lazily read layer would cost a round trip and
an authenticated request each, so ``RedirectCache`` keeps the storage URL
per registry blob URL and hands it out until it expires.

When it expires: ``url_expiry`` reads the expiry a signed URL states, in
the forms storage services write it:

    X-Amz-Date + X-Amz-Expires      S3 (signature v4) and its imitators
    X-Goog-Date + X-Goog-Expires    Google Cloud Storage (v4)
    Expires (Unix seconds)          S3 (signature v2), CloudFront, GCS (v2)
    se (ISO 8601) with sig          Azure shared access signatures

A URL is used until ``EXPIRY_MARGIN`` seconds before that (or half its
remaining life, when that is shorter), so it does not die in flight. A URL
that states no expiry we recognise is kept ``DEFAULT_LIFETIME`` seconds:
short enough for any signed URL we cannot read, long enough to serve the
burst of reads a container start makes. A URL the storage refuses before
then (403, 404, 410) is dropped by the caller (``drop``), which asks the
registry again.

Thread-safe. Times are wall-clock (``time.time``): the URLs state them so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

# Seconds a storage URL that states no expiry is trusted for.
DEFAULT_LIFETIME = 60.0
# Stop using a URL this long before it says it expires.
EXPIRY_MARGIN = 30.0


def _amz_date(text: str) -> float | None:
    """``20240131T235959Z`` as Unix seconds, or None."""
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _iso_date(text: str) -> float | None:
    """``2024-01-31T23:59:59Z`` (or with an offset) as Unix seconds, or None."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # Azure writes UTC; a bare time means it too
    return when.timestamp()


def _number(text: str) -> float | None:
    try:
        value = float(int(text))
    except ValueError:
        return None
    return value if value >= 0 else None


def url_expiry(url: str) -> float | None:
    """When the signed ``url`` says it stops working, as Unix seconds; None if it does not say.

    Parameter names are matched without regard to case. A parameter that is
    there but unreadable counts as not said.
    """
    params: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        params.setdefault(name.lower(), value)
    for prefix in ("x-amz-", "x-goog-"):
        date, expires = params.get(prefix + "date"), params.get(prefix + "expires")
        if date is not None and expires is not None:
            start, lifetime = _amz_date(date), _number(expires)
            if start is not None and lifetime is not None:
                return start + lifetime
            return None
    if "expires" in params:
        return _number(params["expires"])
    if "se" in params and "sig" in params:
        return _iso_date(params["se"])
    return None


def usable_until(url: str, now: float) -> float:
    """Until when (Unix seconds) a storage URL got at ``now`` may be handed out again."""
    expiry = url_expiry(url)
    if expiry is None:
        return now + DEFAULT_LIFETIME
    left = expiry - now
    return now + left - min(EXPIRY_MARGIN, left / 2) if left > 0 else now


class RedirectCache:
    """Storage URLs by the registry blob URL that redirected to them, until they expire."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._urls: dict[str, tuple[str, float]] = {}

    def get(self, blob_url: str) -> str | None:
        """The storage URL ``blob_url`` redirected to, if it has not expired."""
        now = self._clock()
        with self._lock:
            entry = self._urls.get(blob_url)
            if entry is None:
                return None
            if entry[1] <= now:
                del self._urls[blob_url]
                return None
            return entry[0]

    def put(self, blob_url: str, storage_url: str) -> None:
        """Remember that ``blob_url`` redirected to ``storage_url`` just now."""
        now = self._clock()
        until = usable_until(storage_url, now)
        with self._lock:
            # Forget what has expired, so blobs read once do not pile up.
            for key in [k for k, (_, end) in self._urls.items() if end <= now]:
                del self._urls[key]
            if until > now:
                self._urls[blob_url] = (storage_url, until)

    def drop(self, blob_url: str, storage_url: str) -> None:
        """Forget ``storage_url`` (refused by the storage); a newer URL for the blob stays."""
        with self._lock:
            entry = self._urls.get(blob_url)
            if entry is not None and entry[0] == storage_url:
                del self._urls[blob_url]
