"""``lazyfs index push`` against the Debian docker-registry, which has no Referrers API.

The indexes go up as one OCI artifact whose subject is the image manifest,
listed through the referrers tag (``sha256-<hex>``), which must keep what
other tools listed there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lazyfs.index.artifact import ARTIFACT_TYPE, INDEX_MEDIA_TYPE, decode
from lazyfs.index.artifact_manifest import artifact_layers, listed_heads
from providers.digest import Digest
from providers.manifest import OCI_INDEX, OCI_MANIFEST
from providers.referrers import list_referrers, referrers_tag
from providers.registry_http import HttpOptions, RegistryHttp
from providers.registry_push import RegistryPush
from tests.support.registry_pulls import lazyfs
from tests.support.registry_seed import Seed
from tests.support.registry_servers import Registry, copy_storage, run_registry

OTHER_TYPE = "application/vnd.example.sbom.v1"


@pytest.fixture
def registry(seed: Seed, tmp_path: Path) -> Iterator[Registry]:
    """A registry of its own: these tests write referrers into it."""
    with run_registry(tmp_path, copy_storage(seed.storage, tmp_path / "storage")) as running:
        yield running


def _put_blob(registry: Registry, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = requests.post(f"{registry.url}/v2/{repository}/blobs/uploads/", timeout=30)
    start.raise_for_status()
    location = requests.compat.urljoin(registry.url, start.headers["Location"])
    joiner = "&" if "?" in location else "?"
    requests.put(f"{location}{joiner}digest={digest}", data=data, timeout=30).raise_for_status()
    return digest


def _manifest(registry: Registry, repository: str, reference: str, accept: str) -> bytes:
    response = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{reference}",
        headers={"Accept": accept},
        timeout=10,
    )
    response.raise_for_status()
    return response.content


def _push_other_artifact(registry: Registry, repository: str, subject: str, size: int) -> str:
    """What another tool (a signer, an SBOM generator) does: an artifact and the tag listing it."""
    config = b"{}"
    blob = b'{"sbom": true}'
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": OTHER_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": _put_blob(registry, repository, config), "size": len(config)},
        "layers": [{"mediaType": "application/json",
                    "digest": _put_blob(registry, repository, blob), "size": len(blob)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size},
    }).encode()  # fmt: skip
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    url = f"{registry.url}/v2/{repository}/manifests"
    headers = {"Content-Type": OCI_MANIFEST}
    requests.put(f"{url}/{digest}", data=manifest, headers=headers, timeout=10).raise_for_status()
    listing = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                       "artifactType": OTHER_TYPE,
                       "annotations": {"org.example.tool": "other"}}],
    }).encode()  # fmt: skip
    tag = referrers_tag(Digest(subject))
    headers = {"Content-Type": OCI_INDEX}
    requests.put(f"{url}/{tag}", data=listing, headers=headers, timeout=10).raise_for_status()
    return digest


def _push(work: Path, image: str) -> dict[str, object]:
    result = lazyfs(work, "index", "push", image, timeout=300)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def _client(registry: Registry, repository: str) -> RegistryPush:
    return RegistryPush(RegistryHttp(HttpOptions()), registry.url, repository, "test")


def test_push_keeps_the_referrers_of_other_tools(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    subject = seed.rich_oci
    raw = _manifest(registry, "rich", subject, OCI_MANIFEST)
    other = _push_other_artifact(registry, "rich", subject, len(raw))

    report = _push(tmp_path / "work", f"{registry.host}/rich:oci")

    assert report["subject"] == subject
    listed = list_referrers(_client(registry, "rich"), Digest(subject))
    by_digest = {r.digest: r for r in listed}
    assert set(by_digest) == {other, report["artifact"]}
    assert by_digest[Digest(other)].artifact_type == OTHER_TYPE
    assert dict(by_digest[Digest(other)].annotations) == {"org.example.tool": "other"}
    assert by_digest[Digest(str(report["artifact"]))].artifact_type == ARTIFACT_TYPE
    # Filtered by type, only ours.
    ours = list_referrers(_client(registry, "rich"), Digest(subject), ARTIFACT_TYPE)
    assert [r.digest for r in ours] == [report["artifact"]]


def test_published_indexes_name_and_check_their_layers(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    report = _push(tmp_path / "work", f"{registry.host}/rich:oci")
    image = json.loads(_manifest(registry, "rich", seed.rich_oci, OCI_MANIFEST))
    layers = [Digest(layer["digest"]) for layer in image["layers"]]
    manifest = _manifest(registry, "rich", str(report["artifact"]), OCI_MANIFEST)
    blobs = artifact_layers(manifest, Digest(seed.rich_oci))
    assert set(blobs) == set(layers) == set(report["layers"])  # type: ignore[call-overload]
    # The referrers tag's entry names them as the manifest does: no round trip for it.
    listed = list_referrers(_client(registry, "rich"), Digest(seed.rich_oci), ARTIFACT_TYPE)
    entry = next(r for r in listed if r.digest == report["artifact"])
    assert listed_heads(entry.annotations) == blobs
    for layer, blob in blobs.items():
        assert blob.media_type == INDEX_MEDIA_TYPE
        data = requests.get(f"{registry.url}/v2/rich/blobs/{blob.digest}", timeout=10).content
        artifact = decode(data, layer=layer)
        layer_blob = requests.get(f"{registry.url}/v2/rich/blobs/{layer}", timeout=10).content
        assert artifact.layer_size == len(layer_blob)
        for span in artifact.spans:
            piece = layer_blob[span.offset : span.offset + span.length]
            assert hashlib.sha256(piece).hexdigest() == span.sha256


def test_push_again_changes_nothing_and_v2s2_works(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    first = _push(work, f"{registry.host}/rich:v2s2")
    assert first["subject"] == seed.rich_v2s2
    assert first["referrers_tag_updated"] is True
    again = _push(work, f"{registry.host}/rich:v2s2")
    assert again["artifact"] == first["artifact"]
    assert again["referrers_tag_updated"] is False
    tag = referrers_tag(Digest(seed.rich_v2s2))
    listing = json.loads(_manifest(registry, "rich", tag, OCI_INDEX))
    assert [entry["digest"] for entry in listing["manifests"]] == [first["artifact"]]


def test_push_of_a_local_image_is_one_line(tmp_path: Path) -> None:
    result = lazyfs(tmp_path / "work", "index", "push", f"oci:{tmp_path}/nothing")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "lazyfs: index push takes a registry image (REFERENCE or docker://REFERENCE)"
    )


def test_publish_after_a_full_pull_only_when_asked(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    image = f"{registry.host}/rich:oci"
    plain = lazyfs(tmp_path / "plain", "pull", image, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert list_referrers(_client(registry, "rich"), Digest(seed.rich_oci)) == ()

    pulled = lazyfs(tmp_path / "work", "--publish_indexes", "pull", image, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    assert "WARNING" not in pulled.stderr
    listed = list_referrers(_client(registry, "rich"), Digest(seed.rich_oci), ARTIFACT_TYPE)
    assert len(listed) == 1


def test_a_failed_publish_is_a_warning(pull_through: Registry, seed: Seed, tmp_path: Path) -> None:
    """A pull-through cache takes no pushes: the pull stands, with a warning."""
    result = lazyfs(
        tmp_path / "work", "--publish_indexes", "pull", f"{pull_through.host}/rich:oci", timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["digest"] == seed.rich_oci
    assert "pulled, but publishing its indexes failed" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
