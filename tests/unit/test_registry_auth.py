"""The registry client's pure parts: challenges, docker configs, tokens, hosts."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.errors import UsageError
from providers.oci_layout import Platform
from providers.registry import (
    RegistryClient,
    RegistryOptions,
    is_loopback,
    parse_platform,
)
from providers.registry_auth import (
    Challenge,
    Credentials,
    TokenCache,
    normalize_host,
    parse_challenge,
    parse_docker_config,
    parse_token_response,
)
from providers.registry_http import redact
from tests.support.httpserver import serve


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"',
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/busybox:pull",
                },
            ),
        ),
        ('Basic realm="Registry Realm"', Challenge("basic", {"realm": "Registry Realm"})),
        (
            "bearer realm=http://x/t, service=svc",
            Challenge("bearer", {"realm": "http://x/t", "service": "svc"}),
        ),
        ('Bearer realm="a\\"b"', Challenge("bearer", {"realm": 'a"b'})),
        ("", None),
    ],
)
def test_parse_challenge(header: str, expected: Challenge | None) -> None:
    assert parse_challenge(header) == expected


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
def test_parse_challenge_round_trips_quoted_values(value: str) -> None:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    challenge = parse_challenge(f'Bearer realm="{quoted}",service="s"')
    assert challenge == Challenge("bearer", {"realm": value, "service": "s"})


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_docker_config_inline_file_and_forms(tmp_path: Path) -> None:
    doc = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": _auth("hub", "pw:with:colons")},
            "http://127.0.0.1:5000": {"username": "u", "password": "p"},
            "registry.example.com": {"identitytoken": "only a token"},
        }
    }
    found = parse_docker_config(json.dumps(doc))
    assert found == {
        "docker.io": Credentials("hub", "pw:with:colons"),
        "127.0.0.1:5000": Credentials("u", "p"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    assert parse_docker_config(str(path)) == found
    # The old ~/.dockercfg form is the auths map itself.
    legacy = {"registry.example.com": {"auth": _auth("a", "b")}}
    assert parse_docker_config(json.dumps(legacy)) == {
        "registry.example.com": Credentials("a", "b")
    }


@pytest.mark.parametrize(
    "text",
    ['{"auths": {"x": {"auth": "%%%"}}}', '{"auths": []}', "[1]", "{nope", "/no/such/file"],
)
def test_docker_config_errors_never_show_content(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_docker_config(text)
    assert "%%%" not in str(info.value) and str(info.value).startswith("--docker_config")


def test_credentials_repr_hides_the_password() -> None:
    creds = Credentials("alice", "hunter2")
    assert "hunter2" not in repr(creds)
    assert creds.basic_header() == "Basic " + _auth("alice", "hunter2")


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("HTTP://Example.COM:5000/path", "example.com:5000"),
        ("user:pw@host:1", "host:1"),
    ],
)
def test_normalize_host(key: str, host: str) -> None:
    assert normalize_host(key) == host


def test_token_cache_expires_with_a_margin() -> None:
    now = [100.0]
    cache = TokenCache(clock=lambda: now[0])
    key = ("registry.example", "realm", "svc", "repository:a:pull")
    cache.put(key, "t1", 60)
    assert cache.get(key) == "t1"
    assert cache.get(("registry.example", "realm", "svc", "repository:b:pull")) is None
    assert cache.get(("mirror.example", "realm", "svc", "repository:a:pull")) is None
    now[0] += 56
    assert cache.get(key) is None
    cache.put(key, "t2", 60)
    cache.forget(key)
    assert cache.get(key) is None


def test_token_response() -> None:
    assert parse_token_response(b'{"token": "t", "expires_in": 300}') == ("t", 300.0)
    assert parse_token_response(b'{"access_token": "a"}') == ("a", 60.0)
    for bad in (b"not json", b"[]", b'{"expires_in": 3}'):
        with pytest.raises(ValueError) as info:
            parse_token_response(bad)
        assert "expires_in" not in str(info.value)
    # As a header it would fail in the HTTP library, whose error would show the token.
    for bad in (b'{"token": "sec\\nret"}', b'{"token": " secret"}', b'{"token": "sec\\u0000ret"}'):
        with pytest.raises(ValueError, match="cannot be a header value") as info:
            parse_token_response(bad)
        assert "sec" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_parse_platform() -> None:
    assert parse_platform("linux/arm64") == Platform("linux", "arm64")
    assert parse_platform("linux/arm/v7") == Platform("linux", "arm", "v7")
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    for bad in ("linux", "linux//v7", "a/b/c/d"):
        with pytest.raises(UsageError):
            parse_platform(bad)


def test_redact_drops_userinfo_and_query() -> None:
    assert redact("https://u:p@host:5000/v2/x?scope=s&token=t") == "https://host:5000/v2/x"


def test_a_loopback_registry_without_tls_is_spoken_to_in_plain_http() -> None:
    class PlainRegistry(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass  # the TLS hello it cannot parse is expected

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve(PlainRegistry) as base:
        host = base.removeprefix("http://")
        client = RegistryClient(RegistryOptions())
        assert client._host_base(host, "img") == base  # HTTPS failed: plain HTTP
    # Anything else is HTTPS, asked for nothing up front (no insecure_registries here).
    assert client._host_base("secure.example", "img") == "https://secure.example"


def test_the_registry_docker_registry_names_is_spoken_to_as_its_url_says() -> None:
    """Named by its host in a reference, it gets the flag's scheme with no HTTPS attempt."""
    client = RegistryClient(RegistryOptions(registry="http://127.0.0.1:9"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the registry was probed")

    client.http.ping = refuse  # type: ignore[method-assign]
    assert client._host_base("127.0.0.1:9", "img") == "http://127.0.0.1:9"
    # Another loopback port is another registry: probed as before (refused here).
    with pytest.raises(AssertionError, match="probed"):
        client._host_base("127.0.0.1:10", "img")
    # A host that is neither loopback nor insecure is HTTPS whatever the flag says.
    client = RegistryClient(RegistryOptions(registry="http://registry.example"))
    assert client._host_base("registry.example", "img") == "https://registry.example"
