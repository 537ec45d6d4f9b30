"""Basic auth, token auth and TLS against real registries the tests configure."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lazyfs.progress import Progress
from providers.errors import Unauthorized
from providers.registry import RegistryOptions
from providers.registry_auth import Credentials
from providers.registry_http import HttpOptions
from tests.support.lazyfs_cli import one_line_error
from tests.support.registry_pulls import docker, lazyfs, provider, provision_tree_diff
from tests.support.registry_seed import PASSWORD, USER, TokenSetup
from tests.support.registry_servers import Registry, Tls

pytestmark = pytest.mark.integration


def config_json(host: str, user: str = USER, password: str = PASSWORD) -> str:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {f"http://{host}": {"auth": auth}}})


def options(host: str, user: str = USER, password: str = PASSWORD) -> RegistryOptions:
    creds = {host: Credentials(user, password)}
    return RegistryOptions(http=HttpOptions(credentials=creds, backoff=0.01))


# --- basic ----------------------------------------------------------------------


async def test_basic_auth_pull_equals_umoci(
    basic_registry: Registry, reference_tree: Path, tmp_path: Path
) -> None:
    diff = await provision_tree_diff(
        tmp_path, basic_registry.url, "rich:oci", reference_tree, options(basic_registry.host)
    )
    assert diff == []


async def test_basic_auth_credentials_from_the_image(
    basic_registry: Registry, tmp_path: Path
) -> None:
    dp = provider(tmp_path, basic_registry.url)
    image = docker("rich:v2s2", config=config_json(basic_registry.host))
    manifest = await dp.fetch(image, Progress(enabled=False))
    assert all(dp.store.has_blob(layer.digest) for layer in manifest.layers)


async def test_basic_auth_without_credentials_is_unauthorized(
    basic_registry: Registry, tmp_path: Path
) -> None:
    dp = provider(tmp_path, basic_registry.url)
    with pytest.raises(Unauthorized, match="rich:oci: access denied: HTTP 401"):
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))


def test_cli_basic_auth_with_docker_config_file(basic_registry: Registry, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(config_json(basic_registry.host))
    result = lazyfs(
        tmp_path, "--docker_registry", basic_registry.url, "--docker_config", str(config),
        "pull", "rich:oci",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_cli_wrong_password_is_one_line_without_secrets(
    basic_registry: Registry, tmp_path: Path
) -> None:
    wrong = config_json(basic_registry.host, password="wrong-Pa55word")
    result = lazyfs(
        tmp_path, "--docker_registry", basic_registry.url, "--docker_config", wrong,
        "pull", "rich:oci",
    )  # fmt: skip
    line = one_line_error(result)
    assert "docker.io/library/rich:oci" in line and "access denied" in line
    assert "wrong-Pa55word" not in result.stderr + result.stdout
    assert base64.b64encode(b"alice:wrong-Pa55word").decode() not in result.stderr
    store = tmp_path / "store"
    for path in store.rglob("*") if store.exists() else ():
        if path.is_file():
            assert b"wrong-Pa55word" not in path.read_bytes()


# --- token ----------------------------------------------------------------------


async def test_token_auth_pull_equals_umoci_and_caches_tokens(
    token_registry: TokenSetup, reference_tree: Path, tmp_path: Path
) -> None:
    registry, tokens = token_registry.registry, token_registry.tokens
    before = len(tokens.requests)
    diff = await provision_tree_diff(
        tmp_path, registry.url, "rich:oci", reference_tree, options(registry.host)
    )
    assert diff == []
    asked = tokens.requests[before:]
    # One token for the repository scope serves the manifest, config and layers.
    assert [r["scope"] for r in asked if r["scope"]] == ["repository:library/rich:pull"]
    assert all(r["user"] == USER for r in asked)


async def test_token_refused_by_registry_is_fetched_again(
    token_registry: TokenSetup, tmp_path: Path
) -> None:
    registry, tokens = token_registry.registry, token_registry.tokens
    dp = provider(tmp_path, registry.url, options(registry.host))
    await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    client = dp._client
    assert client is not None
    # Spoil every cached token: the registry answers 401 and the client asks anew.
    for key in list(client.http.tokens._tokens):
        client.http.tokens.put(key, "not-a-valid-token", 300)
    before = len(tokens.requests)
    await dp.fetch(docker("rich:v2s2", cached=False), Progress(enabled=False))
    assert len(tokens.requests) > before


def test_cli_token_wrong_password_is_one_line(token_registry: TokenSetup, tmp_path: Path) -> None:
    registry = token_registry.registry
    wrong = config_json(registry.host, password="nope-nope")
    result = lazyfs(
        tmp_path, "--docker_registry", registry.url, "--docker_config", wrong, "pull", "rich:oci"
    )
    line = one_line_error(result)
    assert "docker.io/library/rich:oci" in line and "token server" in line
    assert "credentials refused" in line
    assert "nope-nope" not in result.stderr


# --- TLS ------------------------------------------------------------------------


async def test_tls_with_ca_file_equals_umoci(
    tls_registry: Registry, tls: Tls, reference_tree: Path, tmp_path: Path
) -> None:
    opts = RegistryOptions(http=HttpOptions(ca_file=str(tls.ca), backoff=0.01))
    diff = await provision_tree_diff(tmp_path, tls_registry.url, "rich:v2s2", reference_tree, opts)
    assert diff == []


def test_cli_tls_ca_file_and_loopback_reference(
    tls_registry: Registry, tls: Tls, tmp_path: Path
) -> None:
    # A reference naming the loopback host tries HTTPS first: that succeeds here.
    result = lazyfs(
        tmp_path, "--docker_registry_ca_file", str(tls.ca), "pull",
        f"{tls_registry.host}/multi:latest",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_cli_tls_untrusted_certificate_is_one_line(tls_registry: Registry, tmp_path: Path) -> None:
    result = lazyfs(tmp_path, "--docker_registry", tls_registry.url, "pull", "rich:oci")
    line = one_line_error(result)
    assert "docker.io/library/rich:oci: TLS certificate verification failed" in line
    assert tls_registry.url in line
