"""requests sessions whose answers must arrive whole by a deadline.

requests' read timeout bounds each ``recv``, not the answer: a server that
sends its status line and headers a byte every few seconds restarts it on
every byte and holds a request forever. ``send`` closes that gap with a
watchdog per request: when the answer's status line and headers have not
all arrived by the deadline, it shuts down the request's socket, whatever
the request is doing (sending, waiting for or reading the headers), and
the request ends with ``HeadersTimeout``. A TLS handshake runs on a socket
the watchdog does not reach (made from the raw one's descriptor), as does
a connection still being made through an HTTPS proxy: the socket's own
timeout, the same seconds, bounds those (CPython's TLS calls count it for
the whole call).

The watchdog finds the request's sockets through the connection classes of
``new_session``'s pools: each registers the socket it opens or reuses with
the watch of the thread that sends on it. Bodies are not watched: once the
headers are in, the watch is disarmed and the caller bounds the body (see
providers.retry.SpeedFloor).

``tls_failure`` says what a failed TLS handshake means, for every caller
of ``send``: which host (the one actually asked, a redirect's included)
and whether its certificate was the reason.

Blocking; one session per thread, as requests wants, over pools of
connections the threads of one client may share (``connection_pools``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from providers.errors import TlsFailure
from providers.http_proxy import proxy_for
from providers.retry import parse_retry_after

# An answer cut off mid-headers (the watchdog's deadline, a server hanging up) leaves
# http.client half a header line: urllib3 logs it as a warning, with its traceback,
# before the request fails as it would anyway, and the caller says that in one line.
logging.getLogger("urllib3.connection").setLevel(logging.ERROR)

# Idle connections kept per host by ``connection_pools``: a client's threads at once
# (the cache daemon's readers, replays and background fetch) each leave one.
POOL_SIZE = 32


class HeadersTimeout(requests.Timeout):
    """The answer's status line and headers did not all arrive by the deadline."""


class Watch:
    """The deadline of one request's headers; shuts its sockets down when it passes.

    Thread-safe: the timer fires in its own thread. Once ``disarm`` has
    returned, the watch touches no socket again, so a body read after it is
    never cut by it.
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._armed = True
        self._fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    @property
    def fired(self) -> bool:
        with self._lock:
            return self._fired

    def add(self, sock: socket.socket) -> None:
        """Watch ``sock`` too; shut it down at once if the deadline has passed."""
        with self._lock:
            if self._fired:
                _shutdown(sock)
            elif self._armed:
                self._sockets.append(sock)

    def drop(self, sock: socket.socket) -> None:
        """Watch ``sock`` no more: its connection went back to the pools mid-request (the
        answer was a redirect), where another thread's request may take it."""
        with self._lock:
            self._sockets = [watched for watched in self._sockets if watched is not sock]

    def disarm(self) -> bool:
        """Stop watching; True if the deadline had passed first."""
        with self._lock:
            self._armed = False
            self._sockets = []
        self._timer.cancel()
        return self.fired

    def _fire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self._fired = True
            for sock in self._sockets:
                _shutdown(sock)
            self._sockets = []


def _shutdown(sock: Any) -> None:
    # socket.socket's own shutdown, also for an SSLSocket: its override drops
    # the TLS state, which the thread reading it may be using right now. Through
    # an HTTPS proxy, a connection's socket is urllib3's SSLTransport once it is
    # up: the socket it runs on is cut (a TypeError here ended the timer's thread).
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(raw, socket.SHUT_RDWR)


_local = threading.local()


def _watch(sock: socket.socket | None) -> None:
    watch: Watch | None = getattr(_local, "watch", None)
    if watch is not None and sock is not None:
        watch.add(sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    sent_on: Any = None  # a socket, or urllib3's SSLTransport in a proxy's tunnel: ``body_socket``

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)  # before the TLS handshake, which a silent server can stall too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)  # a kept-alive connection opens no new socket
        super().request(*args, **kwargs)
        self.sent_on = self.sock


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    sent_on: Any = None  # a socket, or urllib3's SSLTransport in a proxy's tunnel: ``body_socket``

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)
        super().request(*args, **kwargs)
        self.sent_on = self.sock


def body_socket(response: requests.Response) -> Any:
    """The socket ``response``'s body arrives on, from a pool of ``connection_pools``. Not always
    its connection's ``sock``: http.client lets go of that once the answer's headers say
    the connection ends with it (HTTP/1.0, ``Connection: close``), and reads on."""
    connection = response.raw.connection
    return getattr(connection, "sent_on", None) or getattr(connection, "sock", None)


def _unwatch(conn: Any) -> None:
    """Release ``conn``'s socket from the watch of the thread putting it back in the pools:
    shared (``connection_pools``), another thread's request may take it from there, and
    this thread's deadline must not shut it down under that one."""
    watch: Watch | None = getattr(_local, "watch", None)
    sock = getattr(conn, "sock", None)
    if watch is not None and sock is not None:
        watch.drop(sock)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection

    def _put_conn(self, conn: Any) -> None:
        _unwatch(conn)
        super()._put_conn(conn)


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        _unwatch(conn)
        super()._put_conn(conn)


_WATCHED_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    # requests makes a proxy's manager on first use, unlocked: shared by threads
    # (``connection_pools``), two could each make one, and one's pools be lost.
    _proxies = threading.Lock()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        # Connections through a proxy (plain, or a CONNECT tunnel) are watched too.
        with self._proxies:  # watched before another thread can make a pool of it
            manager = super().proxy_manager_for(proxy, **kwargs)
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def redact(url: str) -> str:
    """``url`` without user:password and without the query (tokens hide there)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def retry_after(response: requests.Response) -> float | None:
    """The seconds ``response``'s ``Retry-After`` asks to wait (seconds or an HTTP date, read
    now), for the TemporaryFailure it means; None when it asks none or is unreadable."""
    return parse_retry_after(response.headers.get("Retry-After", "")) or None


def _innermost_ssl(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl`` error under requests' and urllib3's wrappers, if there is one."""
    seen: BaseException | None = exc
    for _ in range(8):  # requests -> MaxRetryError -> urllib3 SSLError -> ssl's
        if seen is None or isinstance(seen, ssl.SSLError):
            break
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in seen.args if isinstance(a, BaseException)), None)
        seen = inner if inner is not None else seen.__cause__ or seen.__context__
    return seen if isinstance(seen, ssl.SSLError) else None


def tls_failure(
    exc: requests.exceptions.SSLError, url: str, image: str, *, peer: str = ""
) -> TlsFailure:
    """The one-line TlsFailure ``exc`` means, for ``image``; ``url``: what was asked.

    Names the host the handshake failed with: a redirect's target when the
    request had been redirected (blob storage), not ``url``'s. ``peer``
    says what that host is (``"token server "``), if not the registry.
    """
    asked = exc.request.url if exc.request is not None and exc.request.url else url
    clean = redact(asked)
    host = urlsplit(clean).netloc
    inner = _innermost_ssl(exc)
    if isinstance(inner, ssl.SSLCertVerificationError):
        why = (inner.verify_message or inner.reason or "rejected").rstrip(".")
        return TlsFailure(
            f"{image}: TLS certificate verification failed for {peer}{host}: {why} ({clean})",
            url=clean,
            host=host,
            certificate=True,
            image=image,
        )
    why = (inner.reason or inner.strerror or str(inner)) if inner is not None else str(exc)
    why = " ".join(str(why).split())[:200].replace("_", " ").lower()
    return TlsFailure(
        f"{image}: TLS handshake with {peer}{host} failed: {why} ({clean})",
        url=clean,
        host=host,
        certificate=False,
        image=image,
    )


class _Session(requests.Session):
    def rebuild_proxies(self, prepared_request: Any, proxies: Any) -> dict[str, str]:
        # A redirect is proxied as its own URL would be, not as the first one was.
        proxy = proxy_for(prepared_request.url or "")
        chosen = {} if proxy is None else {"http": proxy, "https": proxy}
        rebuilt: dict[str, str] = super().rebuild_proxies(prepared_request, chosen)  # type: ignore[no-untyped-call]
        return rebuilt


def connection_pools() -> HTTPAdapter:
    """Pools of connections for ``new_session``, which the sessions of many threads may share.

    urllib3's pools are thread-safe, and what requests keeps per session
    (cookies, settings) stays in each thread's own session. Shared, a
    connection one thread left open serves the next request of any other,
    where each thread's own pools opened a connection of their own, a round
    trip (three, with TLS) for each thread a request ran on. Up to
    ``POOL_SIZE`` idle connections are kept per host.
    """
    return _WatchedAdapter(pool_maxsize=POOL_SIZE)


def new_session(verify: str | bool = True, pools: HTTPAdapter | None = None) -> requests.Session:
    """A session for ``send``: its connections can be watched; proxies are ``send``'s to choose.

    ``pools``: from ``connection_pools``, to share them; else the session's own.
    """
    session = _Session()
    session.verify = verify
    # requests' reading of the environment would also proxy loopback
    # registries and pick up .netrc: providers.http_proxy reads it instead.
    session.trust_env = False
    adapter = pools or connection_pools()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def send(
    session: requests.Session, method: str, url: str, *, seconds: float, **kwargs: Any
) -> requests.Response:
    """``session.request(method, url, stream=True, ...)`` whose headers arrive within ``seconds``.

    Raises HeadersTimeout when the status line and headers are not all in
    by then (``seconds`` from now, connecting included), and requests'
    errors otherwise. The body is left unread. The request goes through the
    proxy the environment names for ``url`` (``providers.http_proxy``).
    """
    if seconds <= 0:
        raise HeadersTimeout("deadline passed before the request")
    proxy = proxy_for(url)
    if proxy is not None:
        kwargs["proxies"] = {"http": proxy, "https": proxy}
    watch = Watch(seconds)
    outer = getattr(_local, "watch", None)
    _local.watch = watch
    watch.start()
    try:
        try:
            response = session.request(
                method, url, stream=True, timeout=(seconds, seconds), **kwargs
            )
        except requests.RequestException as exc:
            # A read timeout here is the headers' too, come as the watchdog was due: the
            # body is not read yet, and the socket waited ``seconds`` for them.
            if watch.disarm() or isinstance(exc, requests.ReadTimeout):
                raise HeadersTimeout(f"no complete answer within {seconds:g} s") from exc
            raise
        if watch.disarm():
            # The headers came as the watchdog fired: their socket may be shut.
            response.close()
            raise HeadersTimeout(f"no complete answer within {seconds:g} s")
        return response
    finally:
        watch.disarm()
        _local.watch = outer
