"""Bearer tokens from a registry's token server, fetched as every registry request is.

``fetch_token`` asks the realm of a ``Bearer`` challenge for a token for one
scope, with the registry's basic credentials when there are any, under the
same header deadline, retries and body limits as registry requests
(providers.http_session, providers.retry). Parsing the challenge and the
answer, and caching tokens, is providers.registry_auth's, without I/O.
Blocking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import requests

from providers.errors import TemporaryFailure, Unauthorized
from providers.http_session import redact, retry_after, send, tls_failure
from providers.manifest import METADATA_LIMIT
from providers.registry_auth import Challenge, Credentials, parse_token_response
from providers.retry import (
    TRANSIENT,
    Again,
    Deadline,
    Retries,
    checkpoint,
    is_temporary,
    retrying,
    seconds,
    short_cause,
)


class TokenHttp(Protocol):
    """What fetching a token needs of the registry's HTTP layer (RegistryHttp)."""

    @property
    def options(self) -> Any: ...

    def session(self) -> requests.Session: ...

    def retries(self, deadline: Deadline, attempts: int | None = None) -> Retries: ...

    def read_capped(self, response: requests.Response, limit: int) -> bytes | None: ...


def fetch_token(
    http: TokenHttp,
    key: tuple[str, str, str, str],
    creds: Credentials | None,
    *,
    url: str,
    image: str,
) -> tuple[str, float]:
    """A bearer token for ``key`` (``token_key``) and its lifetime in seconds.

    ``creds`` (basic credentials for the registry at ``url``) go to the
    realm when given. Retried as registry requests are, within the
    request deadline; raises Unauthorized when refused or unusable,
    TlsFailure when the token server's certificate is not trusted,
    TemporaryFailure when the token server keeps failing.
    """
    _host, realm, service, scope = key
    if not realm.startswith(("http://", "https://")):
        raise Unauthorized(f"{image}: registry {redact(url)} gave an unusable token realm")
    params = {k: v for k, v in (("service", service), ("scope", scope)) if v}
    headers = {"Authorization": creds.basic_header()} if creds is not None else {}
    retries = http.retries(Deadline(http.options.timeout))
    body = retrying(
        retries,
        lambda: _token_once(http, realm, params, headers, image, creds, retries.deadline),
    )
    if body is None:
        raise Unauthorized(f"{image}: token server {redact(realm)} answer is too large")
    try:
        token, lifetime = parse_token_response(body)
    except ValueError as exc:
        raise Unauthorized(f"{image}: token server {redact(realm)}: {exc}") from None
    return token, lifetime


def _token_once(
    http: TokenHttp,
    realm: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    image: str,
    creds: Credentials | None,
    deadline: Deadline,
) -> bytes | None:
    """One attempt at the token server: its answer's body, None if too large."""
    where = redact(realm)
    try:
        checkpoint()
        # Streamed: the body is read below, no further than the limit.
        response = send(
            http.session(),
            "GET",
            realm,
            seconds=deadline.remaining(),
            params=params,
            headers=headers,
        )
    except requests.exceptions.SSLError as exc:
        raise tls_failure(exc, realm, image, peer="token server ") from exc
    except requests.Timeout as exc:
        raise TemporaryFailure(
            f"{image}: no answer from token server {where} within {seconds(deadline.seconds)} s",
            url=where,
            image=image,
        ) from exc
    except TRANSIENT as exc:
        failed = TemporaryFailure(
            f"{image}: cannot reach token server {where}: {short_cause(exc)}",
            url=where,
            image=image,
        )
        raise Again(f"{where}: {short_cause(exc)}", failed) from exc
    except requests.RequestException as exc:
        # What is left is no connection's fault (a redirect loop, a realm that is no URL):
        # no token is to be had, now or later.
        raise Unauthorized(
            f"{image}: asking {where} for a token failed: {short_cause(exc)}",
            url=where,
            image=image,
        ) from exc
    status = response.status_code
    if status != 200:
        response.close()
        if status in (401, 403):
            who = "credentials refused" if creds is not None else "anonymous access refused"
            raise Unauthorized(
                f"{image}: token server {where}: {who} (HTTP {status})",
                url=where,
                status=status,
                image=image,
            )
        answered = f"{image}: token server {where} answered HTTP {status}"
        if status == 429 or status >= 500:
            failed = TemporaryFailure(
                answered, url=where, status=status, image=image, retry_after=retry_after(response)
            )
            raise Again(
                f"{where}: HTTP {status}", lambda: failed, response.headers.get("Retry-After")
            )
        # Any other answer (400, 404, 405) is a token server that gives none for this
        # request, which asking again does not change: not a registry out of reach.
        raise Unauthorized(answered, url=where, status=status, image=image)
    try:
        return http.read_capped(response, METADATA_LIMIT)
    except Exception as exc:
        if not is_temporary(exc):
            if isinstance(exc, requests.RequestException):
                raise TemporaryFailure(
                    f"{image}: asking {where} for a token failed: {short_cause(exc)}",
                    url=where,
                    image=image,
                ) from exc
            raise
        # A body that breaks off is retried as a failed request is.
        failed = TemporaryFailure(
            f"{image}: cannot reach token server {where}: {short_cause(exc)}",
            url=where,
            image=image,
        )
        raise Again(f"{where}: {short_cause(exc)}", failed) from exc


def token_key(host: str, challenge: Challenge, scope: str | None) -> tuple[str, str, str, str]:
    """What a token is kept by: the registry ``host`` it is for (a challenge may name
    another registry's realm, whose token must not go to this one), the realm, the
    service and the scope."""
    params = challenge.params
    realm, service = params.get("realm", ""), params.get("service", "")
    return (host, realm, service, scope or params.get("scope", ""))
