"""A referrers tag that holds no index lazyfs can update is reported, never written over.

The distribution spec, on updating the referrers tag schema: "If that pull
returns a manifest other than the expected image index, the client SHOULD
report a failure and skip the remaining steps."  Against the Debian
docker-registry, which answers a manifest at the tag with 404 to a request
that accepts only an index: the tag is read accepting any manifest, so
another tool's manifest there is seen, and left there.  (An index with an
entry that is no descriptor, which this registry refuses to store, is
tests/unit/test_referrers_tag.py's.)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from providers.digest import Digest
from providers.errors import BadImage
from providers.manifest import OCI_INDEX, OCI_MANIFEST
from providers.referrers import Referrer, add_referrer, list_referrers, referrers_tag
from providers.registry_http import HttpOptions, RegistryHttp
from providers.registry_push import RegistryPush
from tests.support.registry_pulls import lazyfs
from tests.support.registry_seed import Seed
from tests.support.registry_servers import Registry, copy_storage, run_registry

OTHER_TYPE = "application/vnd.example.sbom.v1"
OURS_TYPE = "application/vnd.lazyfs.index.v2"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, tmp_path / "storage") as running:
        yield running


def _put(registry: Registry, repository: str, reference: str, data: bytes, kind: str) -> None:
    url = f"{registry.url}/v2/{repository}/manifests/{reference}"
    answer = requests.put(url, data=data, headers={"Content-Type": kind}, timeout=30)
    answer.raise_for_status()


def _tag(registry: Registry, repository: str, tag: str) -> bytes:
    """What the tag holds, whatever its kind."""
    accept = f"{OCI_INDEX}, {OCI_MANIFEST}"
    url = f"{registry.url}/v2/{repository}/manifests/{tag}"
    answer = requests.get(url, headers={"Accept": accept}, timeout=30)
    answer.raise_for_status()
    return answer.content


def _artifact(push: RegistryPush, subject: dict[str, object], kind: str) -> tuple[bytes, str]:
    """An artifact manifest about ``subject``, pushed by digest: its bytes and digest."""
    config = push.push_blob(b"{}", "application/vnd.oci.empty.v1+json")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": kind,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": 2},
        "layers": [],
        "subject": subject,
    }
    data = json.dumps(doc).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    push.put_manifest(digest, data, OCI_MANIFEST)
    return data, digest


def _setup(registry: Registry) -> tuple[RegistryPush, Digest, bytes, Referrer]:
    """An image, another tool's artifact about it, and ours (pushed, not yet listed)."""
    push = RegistryPush(RegistryHttp(HttpOptions()), registry.url, "app", "app:1")
    config = push.push_blob(b"{}", "application/vnd.oci.image.config.v1+json")
    image = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": 2},
    }).encode()  # fmt: skip
    subject = Digest("sha256:" + hashlib.sha256(image).hexdigest())
    push.put_manifest("latest", image, OCI_MANIFEST)
    about = {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(image)}
    other, _ = _artifact(push, about, OTHER_TYPE)
    ours, ours_digest = _artifact(push, about, OURS_TYPE)
    entry = Referrer(Digest(ours_digest), len(ours), OCI_MANIFEST, OURS_TYPE, {})
    return push, subject, other, entry


def test_a_manifest_at_the_referrers_tag_is_reported_and_kept(registry: Registry) -> None:
    push, subject, other, ours = _setup(registry)
    tag = referrers_tag(subject)
    _put(registry, "app", tag, other, OCI_MANIFEST)  # another tool's mistake
    expected = f"app:1: referrers tag {tag} left as it is: it holds {OCI_MANIFEST}, not an"
    with pytest.raises(BadImage, match=re.escape(expected)):
        add_referrer(push, subject, ours, {})
    assert _tag(registry, "app", tag) == other
    assert list_referrers(push, subject) == ()  # the spec: no valid index, no referrers


def test_index_push_reports_a_referrers_tag_it_cannot_update(seed: Seed, tmp_path: Path) -> None:
    storage = copy_storage(seed.storage, tmp_path / "storage")
    with run_registry(tmp_path, storage) as registry:
        push = RegistryPush(RegistryHttp(HttpOptions()), registry.url, "rich", "rich")
        about = {"mediaType": OCI_MANIFEST, "digest": seed.rich_oci, "size": 1}
        other, _ = _artifact(push, about, OTHER_TYPE)
        tag = referrers_tag(Digest(seed.rich_oci))
        _put(registry, "rich", tag, other, OCI_MANIFEST)
        result = lazyfs(
            tmp_path / "work", "index", "push", f"{registry.host}/rich:oci", timeout=300
        )
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lazyfs: "), result.stderr
        assert f"referrers tag {tag} left as it is" in lines[0]
        assert _tag(registry, "rich", tag) == other
