"""Range reads of registry blobs, for lazy pulling: ``RangeReader``.

``stream(place, offset, length)`` asks ``GET .../blobs/DIGEST`` with
``Range: bytes=OFFSET-END`` and yields the bytes as they arrive, as
``(blob offset, bytes)`` pieces; ``read`` collects the wanted range from it.
What it shares with pulls (providers.registry_http): authentication
(tokens cached, renewed on 401), TLS, retries of failed requests, and the
deadline of each answer's headers; bodies are read under the speed floor,
and a body that breaks or ends early is asked for again from the first
byte not yet yielded, counted by one providers.retry.Retries under
``blob_timeout`` as a pull's resumes are.

Where it asks: ``BlobPlace.urls`` in order, as pulls try mirrors: the
endpoint that resolved the image first, then those after it. An endpoint
that fails (not found, refused, down, a wrong answer) passes the read on,
from where it stopped: after its retries, or at once when it is not there
(refused, no route, a name that does not resolve). Should the last fail
too, those passed over at once are asked again, with retries; then only
the last endpoint's error is raised. A mirror that failed a blob is held
(``MirrorHolds``): later reads of that blob do not ask it first for
``HOLD_FIRST`` seconds, twice as long if it fails again once asked again,
up to ``HOLD_MAX``, until it serves a whole range; reads that fail at once
count as one failure. Held, it is asked only as those passed over are, if
the last endpoint fails: a lazy mount's reads do not each wait out a
mirror that takes connections and never answers (the request's deadline,
30 s by default), and a machine whose only way out is the mirror is still
served.

Redirects: a registry backed by object storage answers 307 (or 302) with a
signed URL on another host. That URL is asked without the registry's
Authorization (another host never sees it) and is kept in a
providers.registry_redirects.RedirectCache until it expires, so later
ranges of the blob go straight to storage. When storage refuses a kept URL
(401, 403, 404, 410: expired, revoked, moved) or fails, it is dropped and
the registry is asked once more for a fresh one; a fresh URL that is
refused is an error.

Answers (providers.registry_checks.range_answer): a 206 must carry exactly
the range asked for; a 200 carries the whole blob, which a pull-through
cache sends for a blob it has not cached yet (DESIGN.md, section 4). A 200
is read as a stream, never held whole: ``stream`` yields the bytes before
and after the wanted range as they go by, ``read`` drops them as they come.

Blocking; thread-safe (the cache of storage URLs is shared). Each body
chunk checks for trio cancellation (providers.http_body).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from providers.errors import BadImage, LazyfsError, TemporaryFailure, Unreached
from providers.registry_checks import range_answer
from providers.registry_http import RegistryHttp, redact
from providers.registry_redirects import RedirectCache
from providers.retry import Deadline, Retries, is_temporary, seconds, short_cause

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
# How long a mirror that failed a blob is not asked first for it (MirrorHolds.failed).
HOLD_FIRST = 30.0
HOLD_MAX = 600.0
# What storage says of a signed URL that no longer works.
REFUSED = (401, 403, 404, 410)


@dataclass(frozen=True)
class BlobPlace:
    """Where to read one blob: its URL at each endpoint, in the order to try them."""

    urls: tuple[str, ...]
    image: str  # what errors name
    scope: str  # the bearer token scope: repository:NAME:pull
    size: int


class _Cursor:
    """How far one read has come: the wanted range and the end of what was yielded."""

    def __init__(self, offset: int, end: int) -> None:
        self.offset = offset
        self.end = end
        self.yielded: int | None = None  # blob offset just past the last byte yielded

    @property
    def need(self) -> int:
        """The first wanted byte not yielded yet."""
        return max(self.offset, self.yielded or 0)

    @property
    def done(self) -> bool:
        return self.need >= self.end


class MirrorHolds:
    """Mirror URLs of blobs that failed lately, and until when each is not asked first.

    Thread-safe. ``clock``: monotonic seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, tuple[float, float]] = {}  # url -> (held until, for how long)

    def __contains__(self, url: object) -> bool:
        """Whether ``url`` failed since it last served a range: held, or its hold remembered."""
        return url in self._held

    def held(self, url: str) -> bool:
        with self._lock:
            entry = self._held.get(url)
        return entry is not None and self._clock() < entry[0]

    def failed(self, url: str) -> float:
        """Hold ``url`` unless it is held: for HOLD_FIRST seconds, or twice its last hold if
        that ended less than HOLD_MAX ago; returns how long it is held from now. Reads
        that fail at the same time (a layer read in parallel) count as one failure."""
        with self._lock:
            now = self._clock()
            last = self._held.get(url)
            if last is not None and now < last[0]:
                return last[0] - now
            if last is None or now >= last[0] + HOLD_MAX:
                length = HOLD_FIRST
            else:
                length = min(2 * last[1], HOLD_MAX)
            self._held[url] = (now + length, length)
        return length

    def served(self, url: str) -> None:
        """``url`` served a whole range: asked first again, its next hold the shortest."""
        with self._lock:
            self._held.pop(url, None)


class RangeReader:
    """Reads ranges of registry blobs; see the module's docstring."""

    def __init__(self, http: RegistryHttp, redirects: RedirectCache | None = None) -> None:
        self.http = http
        self.redirects = redirects if redirects is not None else RedirectCache()
        self.holds = MirrorHolds()

    def read(self, place: BlobPlace, offset: int, length: int) -> bytes:
        """The ``length`` bytes from ``offset`` (in the blob: the caller clamped them)."""
        out = bytearray(length)
        end = offset + length
        stream = self.stream(place, offset, length)
        with contextlib.closing(stream):
            for at, data in stream:
                lo, hi = max(at, offset), min(at + len(data), end)
                if hi > lo:
                    out[lo - offset : hi - offset] = data[lo - at : hi - at]
                if at + len(data) >= end:
                    break  # the rest of a whole-blob answer is not wanted here
        return bytes(out)

    def stream(
        self, place: BlobPlace, offset: int, length: int
    ) -> Generator[tuple[int, bytes], None, None]:
        """``(blob offset, bytes)`` pieces covering the range; see RegistryClient.stream_range."""
        if length <= 0:
            return
        cursor = _Cursor(offset, offset + length)
        *mirrors, last = place.urls
        passed: list[str] = []  # mirrors passed over (held, not there), asked again last
        for url in mirrors:
            if self.holds.held(url):
                passed.append(url)
                continue
            try:
                yield from self._stream_at(url, place, cursor, passing=True)
                return
            except LazyfsError as exc:
                held = self.holds.failed(url)
                log.warning("mirror %s failed for %s: %s; not asked first for %s s",
                            redact(url), place.image, exc, seconds(round(held)))  # fmt: skip
                if isinstance(exc, Unreached):
                    passed.append(url)
        try:
            yield from self._stream_at(last, place, cursor, passing=False)
        except LazyfsError as exc:
            failure = exc
        else:
            return
        if passed:
            log.warning("%s failed for %s: %s; asking the mirrors passed over again",
                        redact(last), place.image, failure)  # fmt: skip
        for url in passed:  # down for a moment, maybe: with retries this time
            try:
                yield from self._stream_at(url, place, cursor, passing=False)
                return
            except LazyfsError as exc:
                self.holds.failed(url)
                log.warning("mirror %s failed again for %s: %s", redact(url), place.image, exc)
        raise failure

    def _stream_at(
        self, url: str, place: BlobPlace, cursor: _Cursor, *, passing: bool
    ) -> Generator[tuple[int, bytes], None, None]:
        options = self.http.options
        retries = self.http.retries(Deadline(options.blob_timeout))
        floor = self.http.speed_floor()
        # Bytes a resume must bring before earlier failures stop counting.
        progress = max(1, int(options.min_speed * options.min_speed_time))
        while True:
            response, where, pos = self._open(url, place, cursor, passing)
            passing = False  # it answered: a break later is retried there
            # A 206 carries the rest of the range; a 200 the blob to its end.
            stop = place.size if response.status_code == 200 else cursor.end
            gained = 0
            try:
                for data in self.http.body(response, floor):
                    piece, at = data[: max(0, stop - pos)], pos
                    pos += len(piece)
                    skip = max(0, (cursor.yielded or 0) - at)  # a repeated 200 restarts at 0
                    if skip < len(piece):
                        cursor.yielded = pos
                        gained += len(piece) - skip
                        if cursor.done and url in self.holds:
                            self.holds.served(url)  # before the yield: a reader stops there
                        yield at + skip, piece[skip:]
                    if gained >= progress:
                        retries.progressed()
                        gained = 0
                    if pos >= stop:
                        return
                    if not cursor.done and retries.deadline.expired():
                        raise self._late(where, place, retries, pos)
                if not cursor.done:
                    raise OSError(f"body ended at byte {pos}")
                return
            except Exception as exc:
                if not is_temporary(exc):
                    raise
                if cursor.done:
                    return  # what was asked for is all here; the rest was a bonus
                response.close()  # before waiting: the connection is of no more use
                self._again(exc, where, place, retries, pos)
            finally:
                response.close()

    def _again(
        self, exc: Exception, where: str, place: BlobPlace, retries: Retries, pos: int
    ) -> None:
        """Wait before asking again for a body that broke; raise if no try is left."""
        late = retries.deadline.expired() and retries.deadline.seconds > 0
        why = f"(deadline of {seconds(retries.deadline.seconds)} s)" if late else ""
        failed = TemporaryFailure(
            f"{place.image}: range read from {redact(where)} broke at byte {pos}: "
            f"{short_cause(exc)}{' ' + why if why else ''}",
            url=redact(where),
            image=place.image,
        )
        delay = retries.next_delay()
        if delay is None:
            raise failed from exc
        retries.wait(delay, f"{redact(where)}: {short_cause(exc)}")

    def _late(self, where: str, place: BlobPlace, retries: Retries, pos: int) -> TemporaryFailure:
        return TemporaryFailure(
            f"{place.image}: range read from {redact(where)} did not finish within "
            f"{seconds(retries.deadline.seconds)} s (at byte {pos})",
            url=redact(where),
            image=place.image,
        )

    # -- asking ----------------------------------------------------------------

    def _open(
        self, url: str, place: BlobPlace, cursor: _Cursor, passing: bool
    ) -> tuple[requests.Response, str, int]:
        """An answer for the rest of the range: (response, the URL that gave it, where its
        body starts in the blob). ``passing``: as ``RegistryHttp.get`` has it."""
        first, last = cursor.need, cursor.end - 1
        headers = {"Range": f"bytes={first}-{last}"}
        stored = self.redirects.get(url)
        if stored is not None:
            try:
                response = self._storage(stored, url, place, headers)
            except LazyfsError as exc:
                why = str(exc)  # unreachable, or failing: the registry may know better
            else:
                if response.status_code not in REFUSED:
                    return response, stored, self._start(response, stored, place, first, last)
                response.close()
                why = f"HTTP {response.status_code}"
            self.redirects.drop(url, stored)
            log.info(
                "%s: storage URL %s failed (%s); asking %s again",
                place.image, redact(stored), why, redact(url),
            )  # fmt: skip
        response = self.http.get(
            url,
            image=place.image,
            scope=place.scope,
            headers=headers,
            ok=(200, 206, *REDIRECTS),
            follow=False,
            passing=passing,
        )
        if response.status_code not in REDIRECTS:
            return response, url, self._start(response, url, place, first, last)
        location = response.headers.get("Location", "")
        response.close()
        if not location:
            why = f"redirected without a Location ({redact(url)})"
            raise BadImage(f"{place.image}: registry {why}", image=place.image)
        storage = urljoin(url, location)
        log.debug("%s: %s redirects to %s", place.image, redact(url), redact(storage))
        self.redirects.put(url, storage)
        response = self._storage(storage, url, place, headers)
        if response.status_code in REFUSED:
            self.redirects.drop(url, storage)
            raise self.http.error(response, storage, place.image)
        return response, storage, self._start(response, storage, place, first, last)

    def _storage(
        self, storage: str, url: str, place: BlobPlace, headers: dict[str, str]
    ) -> requests.Response:
        """Ask the URL a registry redirected to; with its credentials only on its own origin."""
        own = _origin(storage) == _origin(url)
        return self.http.get(
            storage,
            image=place.image,
            scope=place.scope if own else None,
            headers=headers,
            ok=(200, 206, *REFUSED),
            auth=own,
        )

    def _start(
        self, response: requests.Response, where: str, place: BlobPlace, first: int, last: int
    ) -> int:
        try:
            return range_answer(
                response.status_code,
                response.headers.get("Content-Range"),
                response.headers.get("Content-Length"),
                first,
                last,
                place.size,
            )
        except BadImage as exc:
            response.close()
            message = f"{place.image}: {redact(where)} {exc}"
            raise BadImage(message, image=place.image) from exc


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()
