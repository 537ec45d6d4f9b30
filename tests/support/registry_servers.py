"""Real peers for the registry tests, all on loopback and owned by the tests.

- ``Registry``: the Debian ``docker-registry`` (distribution 2.8) on a free
  port with its own storage, in one of five configurations: plain HTTP, TLS
  with a CA made here, htpasswd basic auth, token auth, and a pull-through
  cache of another registry (``proxy``).
- ``TokenServer``: issues RS256 JWTs the registry trusts (its signing
  certificate is the registry's ``rootcertbundle``), to callers with the
  right basic credentials.
- ``FaultProxy``: forwards to a registry and misbehaves on request: cuts a
  blob midway, ignores Range, answers 500 or 429, corrupts a byte, serves a
  manifest that is not JSON, or redirects blobs to another host name.

Certificates and signatures come from the ``openssl`` command.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import bcrypt
import requests

from tests.support.httpserver import serve
from tests.support.processes import stop

SERVICE = "lazyfs-test-registry"
ISSUER = "lazyfs-test-token-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def openssl(*args: str | Path, data: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode()}")
    return proc.stdout


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, hostname: str = "127.0.0.1", names: tuple[str, ...] = ()) -> Tls:
    """A CA and a server certificate for ``hostname`` (an IP) and DNS ``names``, signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
            "-days", "2", "-subj", "/CN=lazyfs test CA")  # fmt: skip
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", f"/CN={hostname}")  # fmt: skip
    ext = directory / "ext.cnf"
    dns = "".join(f",DNS:{name}" for name in ("localhost", *names))
    ext.write_text(f"subjectAltName=IP:{hostname}{dns}\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    return Tls(ca, cert, key)


@dataclass
class Registry:
    """A running docker-registry; ``url`` is its base (``http://127.0.0.1:PORT``)."""

    url: str
    host: str
    process: subprocess.Popen[bytes]
    storage: Path


@contextmanager
def run_registry(
    workdir: Path,
    storage: Path,
    *,
    tls: Tls | None = None,
    htpasswd: Path | None = None,
    token: tuple[str, Path] | None = None,
    schema1: bool = False,
    proxy: str | None = None,
) -> Iterator[Registry]:
    """Start ``docker-registry serve`` on a free port; stop it on exit.

    ``token`` is (realm URL, signing certificate) for token auth. ``proxy``
    is the URL of the registry this one caches (``proxy: remoteurl``): it
    then serves that registry's repositories, read-only, fetching what it
    has not cached yet.
    """
    port = free_port()
    lines = [
        "version: 0.1",
        "log: {level: error}",
        "storage:",
        f"  filesystem: {{rootdirectory: {storage}}}",
        "  delete: {enabled: true}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {uuid.uuid4().hex}",
    ]
    if tls is not None:
        lines += [f"  tls: {{certificate: {tls.cert}, key: {tls.key}}}"]
    if htpasswd is not None:
        lines += ["auth:", f"  htpasswd: {{realm: lazyfs-test, path: {htpasswd}}}"]
    if token is not None:
        realm, cert = token
        lines += [
            "auth:",
            "  token:",
            f"    realm: {realm}",
            f"    service: {SERVICE}",
            f"    issuer: {ISSUER}",
            f"    rootcertbundle: {cert}",
        ]
    if schema1:
        # Old registries: accept schema 1 pushes and serve them as they are.
        lines += ["compatibility: {schema1: {enabled: true}}"]
    if proxy is not None:
        lines += ["proxy:", f"  remoteurl: {proxy}"]
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"registry-{port}.yml"
    config.write_text("\n".join(lines) + "\n")
    log = open(workdir / f"registry-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    scheme = "https" if tls is not None else "http"
    registry = Registry(f"{scheme}://127.0.0.1:{port}", f"127.0.0.1:{port}", process, storage)
    try:
        _wait_ready(registry, tls, workdir / f"registry-{port}.log")
        yield registry
    finally:
        stop(process)
        log.close()


def _wait_ready(registry: Registry, tls: Tls | None, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()}")
        try:
            requests.get(
                f"{registry.url}/v2/", timeout=1, verify=str(tls.ca) if tls is not None else True
            )
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer within 20s: {log.read_text()}")


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}"
        for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def skopeo_push(layout: Path, tag: str, dest: str, fmt: str) -> None:
    """Push ``layout:tag`` to ``dest`` (``127.0.0.1:PORT/name:tag``) as v2s2 or oci."""
    from tests.support.images import run

    run("skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", fmt,
        f"oci:{layout}:{tag}", f"docker://{dest}")  # fmt: skip


def put_blob(registry_url: str, repository: str, data: bytes) -> str:
    """Upload ``data`` as a blob of ``repository`` (monolithic upload); its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = requests.post(f"{registry_url}/v2/{repository}/blobs/uploads/", timeout=30)
    start.raise_for_status()
    location = urljoin(registry_url, start.headers["Location"])
    joiner = "&" if "?" in location else "?"
    done = requests.put(f"{location}{joiner}digest={digest}", data=data, timeout=60)
    done.raise_for_status()
    return digest


def push_oci_image(
    registry_url: str,
    repository: str,
    tag: str,
    layers: Sequence[tuple[bytes, dict[str, str]]],
    diff_ids: Sequence[str],
    config: dict[str, Any],
) -> list[str]:
    """Push an OCI image of gzip ``layers`` (each blob with its annotations, may be empty)
    and a config of ``config`` with ``diff_ids``; returns the layers' blob digests."""
    digests = [put_blob(registry_url, repository, blob) for blob, _ in layers]
    config_blob = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }).encode()  # fmt: skip
    descriptors = []
    for digest, (blob, notes) in zip(digests, layers, strict=True):
        descriptor: dict[str, Any] = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                      "digest": digest, "size": len(blob)}  # fmt: skip
        if notes:
            descriptor["annotations"] = notes
        descriptors.append(descriptor)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(registry_url, repository, config_blob),
                   "size": len(config_blob)},
        "layers": descriptors,
    }  # fmt: skip
    response = requests.put(
        f"{registry_url}/v2/{repository}/manifests/{tag}",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    response.raise_for_status()
    return digests


def push_blob_image(registry: Registry, repository: str, tag: str, layer: bytes) -> str:
    """Push an OCI image whose one layer blob is ``layer`` (any bytes); returns its digest.

    For range reads, which never look inside a layer: a layer of random
    bytes of any size is quick to make and compresses to nothing.
    """
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    (pushed,) = push_oci_image(registry.url, repository, tag, [(layer, {})], [layer_digest], {})
    return pushed


# --- token server ------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Grants pull (and push) tokens to ``users``; counts requests.

    ``grant`` False: its tokens are valid but grant nothing, as a token
    server answers a user who may not pull the repository asked for.
    """

    key: Path
    cert: Path
    users: dict[str, str]
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    grant: bool = True

    def jwt(self, scope: str, subject: str) -> str:
        der = openssl("x509", "-in", self.cert, "-outform", "DER")
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        access = []
        for item in scope.split() if self.grant else ():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = openssl("dgst", "-sha256", "-sign", self.key, data=signing.encode())
        return f"{signing}.{_b64url(signature)}"


@contextmanager
def run_token_server(
    workdir: Path, users: dict[str, str], *, tls: Tls | None = None, grant: bool = True
) -> Iterator[TokenServer]:
    """A token server for ``users``; over HTTPS with ``tls``'s certificate when given."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, cert = workdir / "token.key", workdir / "token.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
            "-days", "2", "-subj", "/CN=lazyfs token signer")  # fmt: skip
    server_state = TokenServer(key, cert, users, grant=grant)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            scope = " ".join(query.get("scope", []))
            user = self._user()
            server_state.requests.append({"scope": scope, "user": user})
            if user is None:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps({"token": server_state.jwt(scope, user), "expires_in": 300})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def _user(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user if server_state.users.get(user) == password else None

    with serve(Handler, tls=None if tls is None else (tls.cert, tls.key)) as url:
        server_state.url = url + "/token"
        yield server_state


def copy_storage(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def tamper_stored_blob(registry: Registry, digest: str) -> None:
    """Change the last byte of a blob in the registry's storage: it no longer has its digest."""
    hex_digest = digest.split(":", 1)[1]
    data = (
        registry.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    )
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
