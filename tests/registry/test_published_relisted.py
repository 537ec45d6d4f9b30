"""Prefetch traces noted as pushed are pushed again when the image's referrers lost them.

``--publish_indexes`` pushes a trace once per repository and notes it
(``lazyfs.publish.pushed``). On a registry without the Referrers API
(Debian's ``docker-registry``) the artifact is listed in the referrers tag,
which another client can write without our entry: one that raced our
write, or a tool that does not keep what others listed. Here the test is
that tool: it writes the tag listing its own artifact alone. The next
``publish_pending`` must see the artifact unlisted and push it again
rather than trust its note, keep the other tool's entry, and cost one
referrers listing once after a push. Requests are counted on the client's
connection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from lazyfs.index.trace import Read, Trace, store_trace
from lazyfs.publish.push import repository_push
from lazyfs.publish.traces import publish_due, publish_pending
from providers.digest import Digest
from providers.manifest import OCI_INDEX, OCI_MANIFEST, ImageManifest
from providers.referrers import list_referrers, referrers_tag
from providers.registry import RegistryClient, RegistryOptions
from tests.support.registry_pulls import FAST
from tests.support.registry_seed import Seed
from tests.support.registry_servers import Registry, copy_storage, run_registry

OTHER_TYPE = "application/vnd.example.sbom.v1"
# One referrers listing on this registry: the API (404), then the referrers tag.
LOOKUP = [("GET", "referrers"), ("GET", "manifests")]


@dataclass
class Repo:
    """The seed's ``rich:oci`` in a registry of the test's own; the requests made to it."""

    registry: Registry
    client: RegistryClient
    manifest: ImageManifest
    cache: Path
    sent: list[tuple[str, str]]  # (method, path) of each answer this thread's client got

    def listed(self) -> set[Digest]:
        push = repository_push(self.client, self.manifest.reference)
        return {r.digest for r in list_referrers(push, self.manifest.digest)}

    def publish(self) -> tuple[Digest | None, list[tuple[str, str]]]:
        """``publish_pending``'s artifact, and the requests it made."""
        since = len(self.sent)
        done = publish_pending(self.cache, self.client, self.manifest)
        return done, self.sent[since:]

    def overwrite_tag(self) -> Digest:
        """Another tool's artifact about the image, pushed; the tag written to list it alone."""
        push = repository_push(self.client, self.manifest.reference)
        got = push.get_manifest(self.manifest.digest, OCI_MANIFEST)
        assert got is not None
        config = push.push_blob(b"{}", "application/vnd.oci.empty.v1+json")
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": OTHER_TYPE,
            "config": {"mediaType": config.media_type, "digest": config.digest, "size": 2},
            "layers": [],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": self.manifest.digest,
                "size": len(got[0]),
            },
        }
        data = json.dumps(doc).encode()
        digest = Digest("sha256:" + hashlib.sha256(data).hexdigest())
        self._put(digest, data, OCI_MANIFEST)
        entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data)}
        entry["artifactType"] = OTHER_TYPE
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        self._put(referrers_tag(self.manifest.digest), json.dumps(index).encode(), OCI_INDEX)
        return digest

    def _put(self, reference: str, data: bytes, kind: str) -> None:
        url = f"{self.registry.url}/v2/rich/manifests/{reference}"
        requests.put(url, data=data, headers={"Content-Type": kind}, timeout=30).raise_for_status()


@pytest.fixture
def repo(seed: Seed, tmp_path: Path) -> Iterator[Repo]:
    storage = copy_storage(seed.storage, tmp_path / "storage")
    with run_registry(tmp_path, storage) as registry:
        client = RegistryClient(RegistryOptions(registry=registry.url, http=FAST))
        sent: list[tuple[str, str]] = []

        def note(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            sent.append((response.request.method or "", response.request.path_url))

        client.http.session().hooks["response"].append(note)
        manifest = client.resolve(f"{registry.host}/rich:oci")
        cache = tmp_path / "cache"
        key = f"{manifest.digest}@{'c' * 32}"
        layer = max(manifest.layers, key=lambda layer: layer.size).digest
        store_trace(cache, Trace(key, (Read(layer, 0, 1000),)))
        yield Repo(registry, client, manifest, cache, sent)


def _lookup(sent: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``sent``, each request by method and what it asks for ("referrers", "manifests")."""
    return [(method, path.split("/")[-2]) for method, path in sent]


def test_a_trace_artifact_the_tag_lost_is_pushed_again_then_looked_up_once(repo: Repo) -> None:
    artifact, _ = repo.publish()
    assert artifact is not None and artifact in repo.listed()
    other = repo.overwrite_tag()
    assert repo.listed() == {other}

    again, sent = repo.publish()
    assert again == artifact  # the same traces: the same manifest, listed again
    assert repo.listed() == {artifact, other}  # the other tool's entry kept
    assert ("PUT", f"/v2/rich/manifests/{referrers_tag(repo.manifest.digest)}") in sent

    # Pushed again, and read back: the next start asks nothing.
    assert not publish_due(repo.cache, repo.manifest)
    assert repo.publish() == (None, [])


def test_a_push_is_looked_for_once_then_trusted(repo: Repo) -> None:
    artifact, _ = repo.publish()
    assert artifact is not None
    assert publish_due(repo.cache, repo.manifest)
    done, sent = repo.publish()  # listed: one listing and nothing else
    assert (done, _lookup(sent)) == (None, LOOKUP)
    assert not publish_due(repo.cache, repo.manifest)
    assert repo.publish() == (None, [])
