"""Session fixtures: registries on loopback seeded with the rich image.

One plain registry is seeded once with skopeo (the rich image as Docker v2s2
and as OCI, a second small image, and hand-made multi-arch indexes: an OCI
index and a Docker manifest list, each listing an attestation entry first).
Every configuration then serves a copy of that storage: plain HTTP, TLS,
htpasswd basic auth, token auth. ``big_blob`` adds an image with one large
layer of random bytes to the plain registry, for range reads, and
``pull_through`` is a fresh pull-through cache of the plain registry.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from providers.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from providers.platforms import host_arch
from tests.support import images
from tests.support.fault_proxy import Faults, run_proxy
from tests.support.registry_seed import OTHER_ARCH, PASSWORD, USER, Seed, TokenSetup
from tests.support.registry_servers import (
    Registry,
    Tls,
    copy_storage,
    make_tls,
    push_blob_image,
    run_registry,
    run_token_server,
    skopeo_push,
    write_htpasswd,
)

RICH_TAG = "1.0"
BIG_BLOB_SIZE = 8 << 20
OTHER_LAYER = [
    images.Entry("etc", kind="dir"),
    images.Entry("etc/other", data=b"the other platform\n"),
]


def _need_tools() -> None:
    missing = [t for t in ("umoci", "skopeo", "docker-registry", "openssl") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with the rich image (tag 1.0) and a small one (tag other)."""
    _need_tools()
    work = tmp_path_factory.mktemp("layout")
    layout = images.build_rich_image(work, RICH_TAG)
    images.build_oci_image(work, [OTHER_LAYER], "other")
    return layout


@pytest.fixture(scope="session")
def reference_tree(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images.umoci_unpack(layout, RICH_TAG, tmp_path_factory.mktemp("umoci") / "rich")


@pytest.fixture(scope="session")
def other_tree(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images.umoci_unpack(layout, "other", tmp_path_factory.mktemp("umoci") / "other")


def _manifest(registry: Registry, name: str, tag: str, accept: str) -> tuple[str, int]:
    response = requests.get(
        f"{registry.url}/v2/{name}/manifests/{tag}", headers={"Accept": accept}, timeout=10
    )
    response.raise_for_status()
    return "sha256:" + hashlib.sha256(response.content).hexdigest(), len(response.content)


def _put_index(
    registry: Registry, name: str, kind: str, entry_type: str, rich: tuple[str, int],
    other: tuple[str, int],
) -> None:  # fmt: skip
    def entry(desc: tuple[str, int], os: str, arch: str, **extra: object) -> dict[str, object]:
        return {
            "mediaType": entry_type,
            "digest": desc[0],
            "size": desc[1],
            "platform": {"os": os, "architecture": arch},
            **extra,
        }

    index = {
        "schemaVersion": 2,
        "mediaType": kind,
        "manifests": [
            # First, so a client that takes the first entry is caught.
            entry(
                other,
                "unknown",
                "unknown",
                annotations={"vnd.docker.reference.type": "attestation-manifest"},
            ),
            entry(other, "linux", OTHER_ARCH),
            entry(rich, "linux", host_arch()),
        ],
    }
    response = requests.put(
        f"{registry.url}/v2/{name}/manifests/latest",
        data=json.dumps(index).encode(),
        headers={"Content-Type": kind},
        timeout=10,
    )
    response.raise_for_status()


@pytest.fixture(scope="session")
def seed(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """Storage holding rich:v2s2, rich:oci (also under library/), multi:latest (OCI
    index), multidocker:latest (Docker manifest list)."""
    work = tmp_path_factory.mktemp("seed")
    storage = work / "storage"
    with run_registry(work, storage) as registry:
        host = registry.host
        skopeo_push(layout, RICH_TAG, f"{host}/rich:v2s2", "v2s2")
        skopeo_push(layout, RICH_TAG, f"{host}/rich:oci", "oci")
        # docker.io references (rich:oci) go to library/rich, as on Docker Hub.
        skopeo_push(layout, RICH_TAG, f"{host}/library/rich:v2s2", "v2s2")
        skopeo_push(layout, RICH_TAG, f"{host}/library/rich:oci", "oci")
        skopeo_push(layout, RICH_TAG, f"{host}/multi:rich", "oci")
        skopeo_push(layout, "other", f"{host}/multi:other", "oci")
        skopeo_push(layout, RICH_TAG, f"{host}/multidocker:rich", "v2s2")
        skopeo_push(layout, "other", f"{host}/multidocker:other", "v2s2")
        rich_v2s2 = _manifest(registry, "rich", "v2s2", DOCKER_MANIFEST)
        rich_oci = _manifest(registry, "rich", "oci", OCI_MANIFEST)
        other_oci = _manifest(registry, "multi", "other", OCI_MANIFEST)
        _put_index(
            registry, "multi", OCI_INDEX, OCI_MANIFEST,
            _manifest(registry, "multi", "rich", OCI_MANIFEST), other_oci,
        )  # fmt: skip
        _put_index(
            registry, "multidocker", DOCKER_MANIFEST_LIST, DOCKER_MANIFEST,
            _manifest(registry, "multidocker", "rich", DOCKER_MANIFEST),
            _manifest(registry, "multidocker", "other", DOCKER_MANIFEST),
        )  # fmt: skip
    return Seed(storage, layout, rich_v2s2[0], rich_oci[0], other_oci[0])


@pytest.fixture(scope="session")
def plain_registry(seed: Seed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("plain")
    with run_registry(work, copy_storage(seed.storage, work / "storage")) as registry:
        yield registry


@pytest.fixture(scope="session")
def schema1_registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An old-style registry holding the rich image as signed schema 1 (library/rich:s1)."""
    work = tmp_path_factory.mktemp("schema1")
    with run_registry(work, work / "storage", schema1=True) as registry:
        skopeo_push(layout, RICH_TAG, f"{registry.host}/library/rich:s1", "v2s1")
        yield registry


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    _need_tools()
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_registry(
    seed: Seed, tls: Tls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("tlsreg")
    with run_registry(work, copy_storage(seed.storage, work / "storage"), tls=tls) as registry:
        yield registry


@pytest.fixture(scope="session")
def basic_registry(seed: Seed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("basic")
    htpasswd = write_htpasswd(work / "htpasswd", {USER: PASSWORD})
    storage = copy_storage(seed.storage, work / "storage")
    with run_registry(work, storage, htpasswd=htpasswd) as registry:
        yield registry


@pytest.fixture(scope="session")
def token_registry(seed: Seed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenSetup]:
    work = tmp_path_factory.mktemp("token")
    storage = copy_storage(seed.storage, work / "storage")
    with (
        run_token_server(work, {USER: PASSWORD}) as tokens,
        run_registry(work, storage, token=(tokens.url, tokens.cert)) as registry,
    ):
        yield TokenSetup(registry, tokens)


@pytest.fixture(scope="module")
def big_layer(plain_registry: Registry) -> str:
    """The digest of the rich image's largest layer."""
    response = requests.get(
        f"{plain_registry.url}/v2/library/rich/manifests/oci",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    )
    layers = response.json()["layers"]
    return str(max(layers, key=lambda layer: layer["size"])["digest"])


@pytest.fixture
def faults(big_layer: str) -> Faults:
    return Faults(target=big_layer)


@pytest.fixture
def proxy(plain_registry: Registry, faults: Faults) -> Iterator[str]:
    with run_proxy(plain_registry.url, faults) as url:
        yield url


@pytest.fixture(scope="session")
def big_blob(plain_registry: Registry) -> tuple[str, bytes]:
    """(digest, bytes) of the one layer of ``bigblob:1`` (``library/bigblob``) in the
    plain registry: BIG_BLOB_SIZE random bytes."""
    data = random.Random(12).randbytes(BIG_BLOB_SIZE)
    return push_blob_image(plain_registry, "library/bigblob", "1", data), data


@pytest.fixture
def pull_through(plain_registry: Registry, tmp_path: Path) -> Iterator[Registry]:
    """A docker-registry caching the plain registry (proxy mode), with nothing cached yet."""
    with run_registry(
        tmp_path / "mirror", tmp_path / "mirror" / "storage", proxy=plain_registry.url
    ) as mirror:
        yield mirror
