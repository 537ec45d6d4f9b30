"""The implementations the source conformance suites run against, and what they hold.

Every Docker form holds the rich test image (``tests.images.RICH_LAYERS``)
from the session's ``image_dir``; the registry is the Debian
``docker-registry`` with that image pushed by skopeo; the Appc sources hold
one small ACI written here; the fake holds a two-layer image. Adding an
implementation to a suite is adding one case here.

``image_case`` and ``blob_case`` build only the case a test asks for, so a
machine without the registry tools still runs the others.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from providers.appc_source import AppcDiscoverySource, AppcStoreSource
from providers.appc_store import AppcStore, discovery_location, host_arch
from providers.digest import Digest
from providers.docker_local import LocalPuller
from providers.manifest import OCI_LAYER_TAR, Layer, RuntimeConfig
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_http import HttpOptions
from providers.source import ImageSource
from tests.support import images
from tests.support.fakes import FakeSource
from tests.support.registry_servers import Registry, run_registry, skopeo_push
from tests.support.rich_image import RICH_TAG
from tests.support.source_cases import BlobCase, ImageCase

RICH_CONFIG = RuntimeConfig(**dataclasses.asdict(images.RICH_CONFIG))
ACI_NAME = "example.com/conformance"
ACI_CONFIG = RuntimeConfig(
    entrypoint=("/bin/app",),  # exec[0]; the rest, default arguments a run replaces
    cmd=("--serve",),
    env=("MODE=test",),
    working_dir="/srv",
    user="1000:1000",
)
FAKE_CONFIG = RuntimeConfig(cmd=("/bin/sh",), env=("FAKE=1",))
FAKE_LAYERS = [b"the lower layer, as bytes", b"the upper layer " * 300]


DOCKER_FORMS = {
    "docker-archive": "archive:1.0",
    "docker-legacy": "legacy:1.0",
    "docker25": "docker25:1.0",
    "oci-archive": "ociarchive:1.0",
    "oci-dir": "ocidir:1.0",
}
IMAGE_CASES = [*DOCKER_FORMS, "registry", "appc-store", "appc-discovery", "fake"]
BLOB_CASES = ["local-puller", "registry", "store", "fake"]


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="session")
def rich_diff_ids(rich_layout: Path) -> tuple[Digest, ...]:
    """The rich image's diff_ids, from its layer blobs (gzip in the layout)."""
    return tuple(
        Digest("sha256:" + hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest())
        for _, path in images.layer_paths(rich_layout, RICH_TAG)
    )


@pytest.fixture(scope="session")
def source_registry(
    rich_layout: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A docker-registry holding the rich image as docker.io's ``rich:1.0`` (OCI)."""
    _need("docker-registry", "skopeo")
    work = tmp_path_factory.mktemp("source-registry")
    with run_registry(work, work / "storage") as registry:
        skopeo_push(rich_layout, RICH_TAG, f"{registry.host}/library/rich:1.0", "oci")
        yield registry


def registry_client(registry: Registry) -> RegistryClient:
    http = HttpOptions(backoff=0.01, max_backoff=0.05)
    return RegistryClient(RegistryOptions(registry=registry.url, http=http))


def aci_bytes() -> bytes:
    """An uncompressed ACI named ``ACI_NAME`` (version 1.0) with ``ACI_CONFIG``'s app."""
    manifest = {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": ACI_NAME,
        "labels": [
            {"name": "version", "value": "1.0"},
            {"name": "os", "value": "linux"},
            {"name": "arch", "value": host_arch()},
        ],
        "app": {
            "exec": ["/bin/app", "--serve"],
            "user": "1000",
            "group": "1000",
            "environment": [{"name": "MODE", "value": "test"}],
            "workingDirectory": "/srv",
        },
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("manifest", json.dumps(manifest).encode()), ("rootfs/app", b"app\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _appc_case(source: ImageSource, store: AppcStore) -> ImageCase:
    def blob(layer: Layer) -> bytes:
        return store.aci_path("sha512-" + layer.digest.removeprefix("sha512:")).read_bytes()

    return ImageCase(
        source, f"{ACI_NAME},version=1.0", "example.com/absent", ACI_CONFIG, None, blob
    )


def _fake() -> tuple[FakeSource, list[Layer]]:
    fake = FakeSource()
    image = fake.add_image("fake/image:1", FAKE_LAYERS, FAKE_CONFIG)
    return fake, list(image.layers)


@pytest.fixture(params=IMAGE_CASES)
def image_case(request: pytest.FixtureRequest, tmp_path: Path) -> ImageCase:
    kind: str = request.param
    if kind in DOCKER_FORMS:
        puller = LocalPuller(request.getfixturevalue("image_dir"))
        diff_ids = request.getfixturevalue("rich_diff_ids")

        def local_blob(layer: Layer) -> bytes:
            with puller.open(layer.digest) as stream:
                return stream.read()

        return ImageCase(
            puller, DOCKER_FORMS[kind], "absent:1.0", RICH_CONFIG, diff_ids, local_blob
        )
    if kind == "registry":
        client = registry_client(request.getfixturevalue("source_registry"))

        def registry_blob(layer: Layer) -> bytes:
            with client.open(layer.digest) as stream:
                return stream.read()

        diff_ids = request.getfixturevalue("rich_diff_ids")
        return ImageCase(client, "rich:1.0", "absent:1.0", RICH_CONFIG, diff_ids, registry_blob)
    if kind == "appc-store":
        store = AppcStore(tmp_path / "appc")
        store.add(io.BytesIO(aci_bytes()), "conformance ACI")
        return _appc_case(AppcStoreSource(store), store)
    if kind == "appc-discovery":
        store = AppcStore(tmp_path / "appc")
        acis = tmp_path / "acis"
        where = Path(discovery_location(str(acis) + "/", ACI_NAME, {"version": "1.0"}))
        where.parent.mkdir(parents=True)
        where.write_bytes(aci_bytes())
        return _appc_case(AppcDiscoverySource(store, str(acis)), store)
    assert kind == "fake"
    fake, layers = _fake()
    diff_ids = tuple(Digest(layer.diff_id or "") for layer in layers)
    return ImageCase(
        fake,
        "fake/image:1",
        "fake/absent:1",
        FAKE_CONFIG,
        diff_ids,
        lambda layer: fake.blobs[layer.digest],
    )


@pytest.fixture(params=BLOB_CASES)
def blob_case(request: pytest.FixtureRequest, tmp_path: Path) -> BlobCase:
    """The largest layer of the source's image: ranges then span several reads."""
    kind: str = request.param
    if kind in ("local-puller", "registry"):
        if kind == "local-puller":
            source: LocalPuller | RegistryClient = LocalPuller(request.getfixturevalue("image_dir"))
            reference = "ociarchive:1.0"
        else:
            source = registry_client(request.getfixturevalue("source_registry"))
            reference = "rich:1.0"
        layer = max(source.resolve(reference).layers, key=lambda layer: layer.size)
        rich_layout = request.getfixturevalue("rich_layout")
        blobs = dict(images.layer_paths(rich_layout, RICH_TAG))
        return BlobCase(source, layer.digest, blobs[layer.digest].read_bytes())
    if kind == "store":
        store = Store(tmp_path / "store")
        data = b"".join(bytes([i % 251]) * 97 for i in range(1000))
        layer = Layer(
            Digest("sha256:" + hashlib.sha256(data).hexdigest()), OCI_LAYER_TAR, len(data)
        )
        store.ingest(layer, lambda: io.BytesIO(data))
        return BlobCase(StoreBlobs(store), layer.digest, data)
    assert kind == "fake"
    fake, layers = _fake()
    return BlobCase(fake, layers[-1].digest, FAKE_LAYERS[-1])
