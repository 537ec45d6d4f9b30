"""HTTP to a Docker registry: retries, authentication, TLS, and error translation.

``RegistryHttp.get`` is the one boundary where requests' exceptions and HTTP
statuses become providers.errors, each a one-line message naming the image,
the cause and the URL (never credentials):

    404                          NotFound
    401, 403 (after auth)        Unauthorized
    TLS handshake failure        TlsFailure, naming the host that failed it
                                 (a redirect's too) and whether its
                                 certificate is why; never retried
    429, 5xx, connection errors  TemporaryFailure, after bounded retries
    no answer within ``timeout`` TemporaryFailure, at once
    other 4xx                    BadImage

Retries (providers.retry) back off exponentially (``Retry-After`` is
honoured up to the cap, and carried by the TemporaryFailure given up with,
``retry_after``, for later tries) and end at the request's deadline: ``timeout``
seconds from the first try to the response's headers. That deadline holds
for the whole of each try, however the server dribbles its status line and
headers (providers.http_session), and for token requests as for registry
ones. A server that took the connection and did not answer in full has used
that deadline up, so it is not asked again. Bodies are read with ``body``, under the speed floor:
``min_speed`` bytes/s over each ``min_speed_time`` seconds.
Bodies are read by providers.http_body.
Authentication follows the registry's challenge: ``Bearer`` fetches a token
from the realm for the scope (providers.registry_token) and caches it per
scope until it expires or the registry answers 401 again; ``Basic`` sends the credentials for the
host. A redirect to another host loses the Authorization header (requests
strips it), so blob storage behind a redirect never sees registry secrets;
range reads take redirects themselves (``follow=False``) to reuse the
storage URL, and ask it with ``auth=False`` (providers.registry_range).

Blocking; safe to call from several threads (one requests.Session per thread).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import requests
import urllib3

from providers import untrusted_json
from providers.errors import (
    BadImage,
    LazyfsError,
    NotFound,
    TemporaryFailure,
    Unauthorized,
    Unreached,
)
from providers.http_body import body_chunks, read_capped
from providers.http_session import connection_pools, new_session, retry_after, send, tls_failure
from providers.http_session import redact as redact  # re-exported: the registry's callers use it
from providers.registry_auth import (
    Challenge,
    Credentials,
    TokenCache,
    normalize_host,
    parse_challenge,
)
from providers.registry_options import HttpOptions as HttpOptions  # re-exported
from providers.registry_token import fetch_token, token_key
from providers.retry import (
    TRANSIENT,
    Again,
    Backoff,
    Deadline,
    Retries,
    SpeedFloor,
    checkpoint,
    retrying,
    seconds,
    short_cause,
)

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 1 << 16  # a registry's JSON error says what it has to say in less


def _registry_message(body: bytes) -> str:
    """The first ``errors[]`` entry of a registry's JSON error body, if any."""
    try:
        doc = untrusted_json.loads(body)
        first = doc["errors"][0]
        text = str(first.get("message") or first.get("code") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return " ".join(text.split())[:200]


@dataclass(frozen=True)
class _How:
    """How ``RegistryHttp.get`` asks, beyond where and for what."""

    headers: Mapping[str, str] | None
    ok: tuple[int, ...]
    method: str
    auth: bool
    follow: bool
    data: bytes | None = None
    passing: bool = False  # a host no connection can be made to is not asked again


class RegistryHttp:
    """GETs against registries with auth, retries and translated errors."""

    def __init__(self, options: HttpOptions) -> None:
        self.options = options
        self.tokens = TokenCache()
        self._local = threading.local()  # each thread's session, over the shared pools
        self._pools = connection_pools()
        self._lock = threading.Lock()
        # The last challenge each registry host answered with, to authenticate
        # the next request up front instead of taking a 401 every time.
        self._challenges: dict[str, Challenge] = {}

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = new_session(self.options.ca_file or True, self._pools)
            self._local.session = session
        return session

    def credentials(self, url: str) -> Credentials | None:
        return self.options.credentials.get(normalize_host(urlsplit(url).netloc))

    def ping(self, base: str, *, image: str, attempts: int | None = None) -> None:
        """``GET BASE/v2/``: proves the endpoint speaks the API and learns its challenge."""
        url = f"{base}/v2/"
        response = self.get(url, image=image, scope=None, ok=(200, 401), attempts=attempts)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if challenge is not None:
                with self._lock:
                    self._challenges[urlsplit(url).netloc] = challenge
        response.close()

    def get(
        self,
        url: str,
        *,
        image: str,
        scope: str | None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        attempts: int | None = None,
        method: str = "GET",
        auth: bool = True,
        follow: bool = True,
        data: bytes | None = None,
        passing: bool = False,
    ) -> requests.Response:
        """GET (or ``method``) ``url``; returns a response whose status is in ``ok``, else raises.

        ``image`` names what the request is for in error messages; ``scope``
        is the bearer token scope (``repository:NAME:pull``) or None. The
        response's body is not read yet: the caller reads it with ``body`` or
        ``read_capped`` (which keep to the speed floor) or closes it.
        ``auth=False`` sends no Authorization and answers no challenge: for
        blob storage a registry redirected to, which must never see the
        registry's credentials. ``follow=False`` returns redirects (put
        their statuses in ``ok``) instead of following them. ``data``: the
        request's body (a push), sent again on each try. ``passing``: another
        endpoint comes after this one (a mirror), so a host that no connection
        can be made to (refused, no route, a name that does not resolve) is
        not tried again: Unreached is raised at once, for the caller to ask
        the next endpoint (and this one again, with retries, only if the
        last endpoint fails too). Any other failure is handled as at any
        endpoint.
        """
        retries = self.retries(Deadline(self.options.timeout), attempts)
        how = _How(headers, ok, method, auth, follow, data, passing)
        return retrying(retries, lambda: self._get_once(url, image, scope, how, retries.deadline))

    def _get_once(
        self, url: str, image: str, scope: str | None, how: _How, deadline: Deadline
    ) -> requests.Response:
        """One attempt of ``get``; raises Again when another may succeed."""
        host = urlsplit(url).netloc
        # Authenticating after a 401 is not a failed attempt: up to two per attempt.
        for auth_try in range(3):
            sent = dict(how.headers or {})
            authorization = self._authorization(host, url, image, scope) if how.auth else None
            if authorization is not None:
                sent["Authorization"] = authorization
            try:
                checkpoint()
                response = send(
                    self.session(),
                    how.method,
                    url,
                    seconds=deadline.remaining(),
                    headers=sent,
                    allow_redirects=how.follow,
                    data=how.data,
                )
            except requests.exceptions.SSLError as exc:
                # Not the credentials' fault, and no better on another try.
                raise tls_failure(exc, url, image) from exc
            except requests.Timeout as exc:
                # Connecting and waiting both got the rest of the deadline: asking
                # again would only wait past it.
                raise TemporaryFailure(
                    f"{image}: no answer from {redact(url)} within {seconds(deadline.seconds)} s",
                    url=redact(url),
                    image=image,
                ) from exc
            except TRANSIENT as exc:
                message = f"{image}: cannot reach {redact(url)}: {short_cause(exc)}"
                if how.passing and _unreached(exc):
                    raise Unreached(message, url=redact(url), image=image) from exc
                failed = TemporaryFailure(message, url=redact(url), image=image)
                raise Again(f"{redact(url)}: {short_cause(exc)}", failed) from exc
            except requests.exceptions.InvalidHeader:
                raise  # ours to send (a ValueError too): not where the answer led
            except (*_NOWHERE, ValueError) as exc:
                # The answer led nowhere a request can go (a redirect to another
                # scheme, a loop of them, a Location that is no URL, which the URL
                # parsers raise ValueError for). Not retried; BadImage, as for any
                # answer the registry gives that cannot be used: a mirror answering
                # so is passed over.
                raise BadImage(
                    f"{image}: {redact(url)} answered with nowhere to go: {short_cause(exc)}",
                    image=image,
                ) from exc
            status = response.status_code
            if status in how.ok:
                return response
            if (
                status == 401
                and how.auth
                and auth_try < 2
                and self._learn_challenge(host, response, url, image, scope, authorization)
            ):
                response.close()
                continue
            if status == 429 or status >= 500:
                raise Again(
                    f"{redact(url)}: HTTP {status}",
                    partial(self.error, response, url, image),
                    response.headers.get("Retry-After"),
                    response.close,
                )
            raise self.error(response, url, image)
        raise AssertionError("unreachable: the last authentication try returns or raises")

    def retries(self, deadline: Deadline, attempts: int | None = None) -> Retries:
        """A retry budget for one operation under these options."""
        options = self.options
        backoff = Backoff(options.backoff, options.max_backoff)
        return Retries(attempts or options.attempts, backoff, deadline)

    def speed_floor(self) -> SpeedFloor:
        return SpeedFloor(self.options.min_speed, self.options.min_speed_time)

    def body(
        self, response: requests.Response, floor: SpeedFloor, *, decode: bool = False
    ) -> Iterator[bytes]:
        """The body of ``response`` under ``floor`` (providers.http_body.body_chunks).

        A body goes silent for at most a window of the floor, or ``timeout``
        when the floor is off.
        """
        idle = floor.window if floor.enabled else self.options.timeout
        return body_chunks(response, floor, idle, decode=decode)

    def read_capped(self, response: requests.Response, limit: int) -> bytes | None:
        """The decoded body of ``response`` under the floor (providers.http_body.read_capped)."""
        return read_capped(response, limit, self.body(response, self.speed_floor(), decode=True))

    def discard(self, response: requests.Response) -> None:
        """Read and drop the body of an answer that says all in its status (a 404), and close it.

        Read to its end, the body leaves its connection to the pool for the
        next request; closed unread, the connection is closed with it, and
        the next request pays a round trip for a new one. A body over
        ``ERROR_BODY_LIMIT`` or that fails is left: the connection closes.
        """
        try:
            self.read_capped(response, ERROR_BODY_LIMIT)
        except Exception:
            response.close()  # the answer stands; only its connection is lost

    def error(self, response: requests.Response, url: str, image: str) -> LazyfsError:
        """The error an unwanted answer means; reads (a bounded part of) its body and closes it."""
        status = response.status_code
        try:
            # Under the speed floor: an error body that trickles ends too.
            detail = _registry_message(self.read_capped(response, ERROR_BODY_LIMIT) or b"")
        except Exception:
            # The body only adds detail: whatever is wrong with it, the status
            # says what happened.
            detail = ""
        cause = f"HTTP {status}" + (f" {detail}" if detail else "")
        clean = redact(url)
        where = f"({clean})"
        if status == 404:
            return NotFound(f"{image}: not found: {cause} {where}", url=clean, image=image)
        if status in (401, 403):
            return Unauthorized(
                f"{image}: access denied: {cause} {where}", url=clean, status=status, image=image
            )
        if status == 429 or status >= 500:
            return TemporaryFailure(
                f"{image}: registry failed: {cause} {where}",
                url=clean,
                status=status,
                image=image,
                retry_after=retry_after(response),  # for whoever tries again later
            )
        return BadImage(f"{image}: registry refused the request: {cause} {where}", image=image)

    # -- authentication ------------------------------------------------------

    def _authorization(self, host: str, url: str, image: str, scope: str | None) -> str | None:
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials(url)
            return creds.basic_header() if creds is not None else None
        if challenge.scheme == "bearer":
            key = token_key(host, challenge, scope)
            token = self.tokens.get(key)
            if token is None:
                creds = self.credentials(url)
                token, lifetime = fetch_token(self, key, creds, url=url, image=image)
                self.tokens.put(key, token, lifetime)
            return f"Bearer {token}"
        return None

    def _learn_challenge(
        self,
        host: str,
        response: requests.Response,
        url: str,
        image: str,
        scope: str | None,
        sent: str | None,
    ) -> bool:
        """Remember the 401's challenge; True if another try may now succeed."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            return False
        with self._lock:
            self._challenges[host] = challenge
        if challenge.scheme == "basic":
            # Credentials already sent and refused: another try changes nothing.
            return sent is None and self.credentials(url) is not None
        # A cached token the registry refused (expired early, revoked): drop it.
        self.tokens.forget(token_key(host, challenge, scope))
        if challenge.params.get("scope") and scope is None:
            self.tokens.forget(token_key(host, challenge, None))
        return True


# Where a redirect may lead that no request can follow.
_NOWHERE = (
    requests.exceptions.TooManyRedirects,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
)
# Why a connection to a host could not be made that says the host is not there, rather
# than this machine short of something (EMFILE, EADDRNOTAVAIL).
_UNREACHED = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
# A name that has no address, not a resolver that failed for now (EAI_AGAIN).
_NO_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


def _unreached(exc: BaseException) -> bool:
    """Whether ``exc`` (requests') says the host is not there: a connection refused, no
    route to it, or its name not resolved (urllib3 raises the connect's OSError as the
    cause of its NewConnectionError)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if not isinstance(reason, urllib3.exceptions.NewConnectionError):
        return False
    cause = reason.__cause__
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return isinstance(cause, socket.gaierror) and cause.errno in _NO_NAME
    return isinstance(cause, OSError) and cause.errno in _UNREACHED
