"""A server whose TLS certificate is not trusted is reported as such, wherever it is met.

The registry itself, the token server its challenge names, and the blob
storage it redirects to: each over TLS with a CA made here, asked without
that CA. Each failure is a TlsFailure naming the host that failed (not
Unauthorized: no credentials are at fault), one line from the CLI. With
the CA each works, so the certificate is the only reason. A registry that
refuses the token it is given still says access denied.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from lazyfs.progress import Progress
from providers.digest import Digest
from providers.errors import TlsFailure, Unauthorized
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_auth import Credentials
from providers.registry_http import HttpOptions
from tests.support.blob_storage import Front, Storage, run_front, run_storage
from tests.support.lazyfs_cli import one_line_error
from tests.support.registry_pulls import docker, lazyfs, provider
from tests.support.registry_seed import PASSWORD, USER, Seed
from tests.support.registry_servers import (
    Registry,
    Tls,
    copy_storage,
    make_tls,
    run_registry,
    run_token_server,
)

pytestmark = pytest.mark.integration


def config_json(host: str) -> str:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return json.dumps({"auths": {f"http://{host}": {"auth": auth}}})


def options(host: str, ca_file: Path | None = None) -> RegistryOptions:
    creds = {host: Credentials(USER, PASSWORD)}
    ca = None if ca_file is None else str(ca_file)
    return RegistryOptions(http=HttpOptions(credentials=creds, ca_file=ca, backoff=0.01))


def no_state_left(work: Path) -> None:
    """No container provisioned and nothing half-written by a command that failed."""
    assert list((work / "provisioner" / "containers").glob("*")) == []
    assert [p for p in work.rglob("*") if p.parent.name == "tmp"] == []


# --- the registry ------------------------------------------------------------


async def test_an_untrusted_registry_is_a_tls_failure_not_unauthorized(
    tls_registry: Registry, tmp_path: Path
) -> None:
    dp = provider(tmp_path, tls_registry.url)
    with pytest.raises(TlsFailure) as caught:
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    error = caught.value
    assert not isinstance(error, Unauthorized)
    assert error.certificate and error.host == tls_registry.host
    assert str(error).startswith(
        f"docker.io/library/rich:oci: TLS certificate verification failed for "
        f"{tls_registry.host}: unable to get local issuer certificate ("
    )


@pytest.mark.parametrize("command", ["pull", "provision"])
def test_cli_untrusted_registry_is_one_line_naming_the_host(
    tls_registry: Registry, tmp_path: Path, command: str
) -> None:
    args = ["pull", "rich:oci"] if command == "pull" else ["provision", "c1", "rich:oci"]
    result = lazyfs(tmp_path, "--docker_registry", tls_registry.url, *args)
    line = one_line_error(result)
    assert f"TLS certificate verification failed for {tls_registry.host}" in line
    assert "access denied" not in line
    no_state_left(tmp_path)


def test_cli_untrusted_loopback_reference_is_not_retried_over_plain_http(
    tls_registry: Registry, tmp_path: Path
) -> None:
    # A loopback host may fall back to plain HTTP, but one that speaks TLS with
    # a certificate we do not trust would only answer that with HTTP 400.
    result = lazyfs(tmp_path, "pull", f"{tls_registry.host}/rich:oci")
    line = one_line_error(result)
    assert f"TLS certificate verification failed for {tls_registry.host}" in line
    assert "HTTP 400" not in line


# --- the token server -------------------------------------------------------------


@dataclass(frozen=True)
class TokenTls:
    registry: Registry  # plain HTTP; its challenge names an HTTPS token server
    token_host: str
    tls: Tls


@pytest.fixture(scope="module")
def token_tls(seed: Seed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenTls]:
    work = tmp_path_factory.mktemp("tokentls")
    tls = make_tls(work / "tls")
    with (
        run_token_server(work, {USER: PASSWORD}, tls=tls) as tokens,
        run_registry(
            work, copy_storage(seed.storage, work / "storage"), token=(tokens.url, tokens.cert)
        ) as registry,
    ):
        assert tokens.url.startswith("https://")
        yield TokenTls(registry, tokens.url.split("/")[2], tls)


async def test_an_untrusted_token_server_is_a_tls_failure(
    token_tls: TokenTls, tmp_path: Path
) -> None:
    registry = token_tls.registry
    dp = provider(tmp_path / "untrusted", registry.url, options(registry.host))
    with pytest.raises(TlsFailure) as caught:
        await dp.fetch(docker("rich:oci"), Progress(enabled=False))
    assert caught.value.host == token_tls.token_host
    said = f"TLS certificate verification failed for token server {token_tls.token_host}: "
    assert said in str(caught.value)
    # Trusting its CA is all it takes.
    trusted = provider(tmp_path / "trusted", registry.url, options(registry.host, token_tls.tls.ca))
    manifest = await trusted.fetch(docker("rich:oci"), Progress(enabled=False))
    assert all(trusted.store.has_blob(layer.digest) for layer in manifest.layers)


def test_cli_untrusted_token_server_is_one_line(token_tls: TokenTls, tmp_path: Path) -> None:
    registry = token_tls.registry
    result = lazyfs(
        tmp_path, "--docker_registry", registry.url, "--docker_config", config_json(registry.host),
        "pull", "rich:oci",
    )  # fmt: skip
    line = one_line_error(result)
    assert f"verification failed for token server {token_tls.token_host}" in line
    assert PASSWORD not in result.stderr


def test_cli_a_token_the_registry_refuses_is_still_access_denied(
    seed: Seed, tmp_path: Path
) -> None:
    # The token server says yes, with a token that grants nothing: the
    # registry answers 401 after the token, which is the credentials' fault.
    work = tmp_path / "servers"
    with (
        run_token_server(work, {USER: PASSWORD}, grant=False) as tokens,
        run_registry(
            work, copy_storage(seed.storage, work / "storage"), token=(tokens.url, tokens.cert)
        ) as registry,
    ):
        result = lazyfs(
            tmp_path / "work", "--docker_registry", registry.url,
            "--docker_config", config_json(registry.host), "pull", "rich:oci",
        )  # fmt: skip
        assert any(r["user"] == USER for r in tokens.requests)  # a token was given
    line = one_line_error(result)
    assert "docker.io/library/rich:oci: access denied: HTTP 401" in line
    assert "TLS" not in line


# --- blob storage behind a redirect ---------------------------------------------------


@dataclass
class Redirected:
    front_url: str  # the registry (plain HTTP), redirecting blobs to the storage
    storage_host: str  # over HTTPS
    storage_tls: Tls
    digest: Digest
    data: bytes


@pytest.fixture
def redirected(basic_registry: Registry, big_layer: str, tmp_path: Path) -> Iterator[Redirected]:
    url = f"{basic_registry.url}/v2/library/rich/blobs/{big_layer}"
    data = requests.get(url, auth=(USER, PASSWORD), timeout=30).content
    tls = make_tls(tmp_path / "storage-tls")
    front = Front(big_layer)
    with (
        run_storage(Storage({big_layer: data}), tls=(tls.cert, tls.key)) as storage_url,
        run_front(basic_registry.url, front) as front_url,
    ):
        assert storage_url.startswith("https://localhost:")
        front.storage = storage_url
        yield Redirected(front_url, storage_url.split("/")[2], tls, Digest(big_layer), data)


def client(setup: Redirected, ca_file: Path | None = None) -> RegistryClient:
    host = setup.front_url.removeprefix("http://")
    opts = options(host, ca_file)
    made = RegistryClient(RegistryOptions(registry=setup.front_url, http=opts.http))
    made.resolve("rich:oci")
    return made


def test_untrusted_blob_storage_is_a_tls_failure_naming_the_storage(
    redirected: Redirected,
) -> None:
    untrusted = client(redirected)
    # Range reads take the redirect themselves; whole blobs let requests follow it.
    with pytest.raises(TlsFailure) as ranged:
        untrusted.read_range(redirected.digest, 0, 10)
    with pytest.raises(TlsFailure) as whole, untrusted.open(redirected.digest) as stream:
        stream.read()
    for caught in (ranged, whole):
        error = caught.value
        assert error.certificate and error.host == redirected.storage_host
        assert f"verification failed for {redirected.storage_host}: " in str(error)
        assert error.url.startswith(f"https://{redirected.storage_host}/blobs/")
        assert "X-Amz-Signature" not in str(error)  # the signature stays out of messages
    trusted = client(redirected, redirected.storage_tls.ca)
    assert trusted.read_range(redirected.digest, 5, 20) == redirected.data[5:25]
    with trusted.open(redirected.digest) as stream:
        assert stream.read() == redirected.data


def test_cli_untrusted_blob_storage_is_one_line(redirected: Redirected, tmp_path: Path) -> None:
    host = redirected.front_url.removeprefix("http://")
    result = lazyfs(
        tmp_path, "--docker_registry", redirected.front_url, "--docker_config", config_json(host),
        "pull", "rich:oci",
    )  # fmt: skip
    line = one_line_error(result)
    assert f"TLS certificate verification failed for {redirected.storage_host}: " in line
    no_state_left(tmp_path)
