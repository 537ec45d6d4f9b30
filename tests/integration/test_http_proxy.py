"""Pulls through a site's HTTP proxy, named by ``https_proxy`` / ``http_proxy``.

Real processes: ``lazyfs pull`` against a loopback ``docker-registry``
that only a loopback forward proxy can reach, under the name
``registry.test``: the proxy resolves it from its own table, and nothing
else does, so a pull that succeeds went through the proxy. No name is
looked up in DNS: a client talking to a proxy never resolves the target.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.forward_proxy import run_forward_proxy
from tests.support.registry_servers import Registry, make_tls, push_oci_image, run_registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAME = "registry.test"
USER = ("egress", "s3cret")


def layer() -> tuple[bytes, str]:
    """A gzip layer of one file, and its diff_id."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = b"through the proxy\n"
        info = tarfile.TarInfo("hello")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    return gzip.compress(raw, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def pushed(registry: Registry, host: str) -> str:
    """Push a one-layer image; its reference with registry host ``host``."""
    blob, diff_id = layer()
    push_oci_image(registry.url, "proxied/app", "v1", [(blob, {})], [diff_id], {})
    return f"docker:{host}/proxied/app:v1"


def named(registry: Registry) -> str:
    """The registry's address under the name only the proxy resolves."""
    return f"{NAME}:{registry.url.rsplit(':', 1)[1]}"


def pull(work: Path, reference: str, environ: dict[str, str], *flags: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | environ
    done = subprocess.run(
        [sys.executable, "-m", "lazyfs", "--work_dir", str(work), *flags, "pull", reference],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, tmp_path / "storage") as registry:
        yield registry


def test_a_plain_http_registry_is_reached_through_http_proxy_with_its_credentials(
    plain: Registry, tmp_path: Path
) -> None:
    host = named(plain)
    reference = pushed(plain, host)
    with run_forward_proxy({NAME: "127.0.0.1"}, user=USER) as proxy:
        answer = pull(
            tmp_path / "work", reference,
            {"http_proxy": proxy.proxy_url(), "https_proxy": proxy.proxy_url()},
            "--docker_insecure_registries", host,
        )  # fmt: skip
        seen = list(proxy.seen)
    assert answer["reference"] == f"{host}/proxied/app:v1"
    # Every request carried the proxy's credentials: none was refused with 407.
    assert seen and all(authorized for _, _, authorized in seen), seen
    targets = [target for _, target, _ in seen]
    # HTTPS is tried first (a tunnel), then plain HTTP in absolute form.
    assert targets[0] == host
    assert f"http://{host}/v2/proxied/app/manifests/v1" in targets
    assert any(t.startswith(f"http://{host}/v2/proxied/app/blobs/sha256:") for t in targets)


def test_a_tls_registry_is_reached_through_a_connect_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = make_tls(tmp_path / "tls", names=(NAME,))
    with run_registry(tmp_path, tmp_path / "storage", tls=tls) as registry:
        host = named(registry)
        with monkeypatch.context() as patch:
            patch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))  # for the test's own push
            reference = pushed(registry, host)
        with run_forward_proxy({NAME: "127.0.0.1"}, user=USER) as proxy:
            pull(
                tmp_path / "work", reference, {"HTTPS_PROXY": proxy.proxy_url()},
                "--docker_registry_ca_file", str(tls.ca),
            )  # fmt: skip
            seen = list(proxy.seen)
    # Only tunnels: the proxy saw where, never what (TLS end to end).
    assert seen and {(method, target) for method, target, _ in seen} == {("CONNECT", host)}
    assert all(authorized for _, _, authorized in seen)


def test_loopback_and_no_proxy_hosts_go_direct(plain: Registry, tmp_path: Path) -> None:
    reference = pushed(plain, plain.host)
    # Without its credentials the proxy refuses everything: a pull that
    # succeeds did not go through it.
    with run_forward_proxy({}, user=USER) as proxy:
        everything = {"http_proxy": proxy.url, "https_proxy": proxy.url}
        pull(tmp_path / "work", reference, everything)
        assert proxy.targets() == []


def test_a_socks_proxy_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["https_proxy"] = "socks5://127.0.0.1:1"
    done = subprocess.run(
        [sys.executable, "-m", "lazyfs", "--work_dir", str(tmp_path / "work"),
         "pull", "docker:registry.example/app:v1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "lazyfs: https_proxy: only http:// and https:// proxies are supported, not socks5://"
    ]
