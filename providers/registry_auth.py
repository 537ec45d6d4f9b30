"""Registry credentials and authentication challenges, without I/O.

Credentials come from a docker ``config.json`` (a path or the JSON itself,
as ``--docker_config`` and ``Image.Docker.config`` give it; which files are
read without one, and credential helpers, are ``providers.docker_config``'s): its ``auths``
map, keyed by registry host (``registry.example.com:5000``) or URL
(``https://index.docker.io/v1/``), each entry holding ``auth`` (base64 of
``user:password``) or ``username`` and ``password``. Keys are normalized to
``host[:port]``, with Docker Hub's names all meaning ``docker.io``.

``parse_challenge`` reads a ``WWW-Authenticate`` header (``Bearer
realm="...",service="...",scope="..."`` or ``Basic realm="..."``).
``TokenCache`` keeps bearer tokens per (registry host, realm, service,
scope) until they expire; it is safe to share between threads.

Secrets never reach ``repr``, logs or error messages: ``Credentials`` hides
its password, and errors here name the config, never its content.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from providers import untrusted_json
from providers.errors import UsageError

# Docker Hub goes by several names; its credentials are stored under any of them.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
# A token without expires_in lives 60 seconds (the distribution token spec).
DEFAULT_TOKEN_LIFETIME = 60.0
# An expires_in from this on (some 285 million years) is read as none.
MAX_TOKEN_LIFETIME = float(1 << 53)
# Refetch a little before expiry so a token does not die in flight.
EXPIRY_MARGIN = 5.0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def normalize_host(key: str) -> str:
    """``host[:port]`` of a config key or URL, lowercased; Docker Hub is ``docker.io``."""
    text = key.strip()
    if "://" not in text:
        text = "//" + text
    host = (urlparse(text).netloc or "").rsplit("@", 1)[-1].lower()
    return "docker.io" if host in DOCKER_HUB_ALIASES else host


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name``, ``name:port``, ``[v6]:port``) is this machine."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_docker_config(text: str, what: str = "--docker_config") -> dict[str, Credentials]:
    """Credentials by normalized host from a config path or inline JSON.

    Raises UsageError naming ``what`` (never the content) when the file is
    missing or the JSON is not a docker config.
    """
    return docker_config_document(text, what)[0]


def docker_config_document(
    text: str, what: str = "--docker_config"
) -> tuple[dict[str, Credentials], dict[str, Any]]:
    """``parse_docker_config``'s credentials, and the whole JSON object they came from."""
    stripped = text.strip()
    body: str | bytes = stripped
    if not stripped.startswith("{"):
        try:
            body = Path(stripped).read_bytes()  # not UTF-8: JSON's ValueError below
        except OSError as exc:
            raise UsageError(f"{what}: cannot read {text}: {exc.strerror}") from exc
    try:
        doc = untrusted_json.loads(body)
    except ValueError:
        raise UsageError(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{what}: not a JSON object")
    # Old ~/.dockercfg files are the auths map itself.
    auths = doc.get("auths", doc if "auths" not in doc and _looks_like_auths(doc) else {})
    if not isinstance(auths, dict):
        raise UsageError(f"{what}: auths is not an object")
    found: dict[str, Credentials] = {}
    for key, entry in auths.items():
        creds = _entry_credentials(entry, f"{what}: entry {key}")
        if creds is not None:
            found[normalize_host(key)] = creds
    return found, doc


def _looks_like_auths(doc: dict[str, Any]) -> bool:
    return bool(doc) and all(isinstance(v, dict) and "auth" in v for v in doc.values())


def _entry_credentials(entry: Any, what: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise UsageError(f"{what} is not an object")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise UsageError(f"{what}: auth is not base64 of user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise UsageError(f"{what}: auth is not base64 of user:password")
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    # An entry with only identitytoken or a credential helper: nothing we can use.
    return None


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme lowercased, parameters by name."""

    scheme: str
    params: dict[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` value, or None if unreadable."""
    text = header.strip()
    scheme, _, rest = text.partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM_RE.match(rest, pos)
        if match is None or match.end() == pos:
            break
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
        params[match.group(1).lower()] = value
        pos = match.end()
    return Challenge(scheme.lower(), params)


@dataclass
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens by (registry host, realm, service, scope); thread-safe."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None or token.expires <= self._clock():
                return None
            return token.value

    def put(self, key: tuple[str, str, str, str], value: str, lifetime: float) -> None:
        with self._lock:
            expires = self._clock() + max(0.0, lifetime - EXPIRY_MARGIN)
            self._tokens[key] = _Token(value, expires)

    def forget(self, key: tuple[str, str, str, str]) -> None:
        with self._lock:
            self._tokens.pop(key, None)


def parse_token_response(body: bytes) -> tuple[str, float]:
    """The token and its lifetime in seconds from a token server's JSON answer.

    Raises ValueError (without the body, which may hold a token) when unusable.
    """
    try:
        doc = untrusted_json.loads(body)
    except ValueError:
        raise ValueError("token server answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("token server answer is not a JSON object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token server answer has no token")
    if not token.isprintable() or token != token.strip():
        # Sent as a header it would fail in the HTTP library, whose error shows it.
        raise ValueError("token server answer's token cannot be a header value")
    lifetime = doc.get("expires_in")
    # true is an int to Python, no number of seconds to JSON.  The upper bound keeps out
    # what float() cannot take (an integer of 400 digits: OverflowError) and the
    # infinity json reads 1e999 as (a token kept for ever).
    if (
        not isinstance(lifetime, int | float)
        or isinstance(lifetime, bool)
        or not 0 < lifetime < MAX_TOKEN_LIFETIME
    ):
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, float(lifetime)
