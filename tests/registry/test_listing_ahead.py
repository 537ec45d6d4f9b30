"""A lazy pull lists the image's referrers beside the config's request, not after it.

The referrers listing needs only the image manifest's digest, so the
registry client's ``resolve`` hands it over (``seen``) before it asks for
the config, and the listing goes out then (``docker_published.Listings``):
on the way to a lazy start's first byte, one round trip fewer.  Against
the Debian docker-registry, with the image's index pushed: the config's
request waits until the listing has begun (it would wait in vain, and the
order would be the other way, were the listing still made after it), and
the pull still finds the index through that listing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyfs.images.docker_published import Listings
from lazyfs.progress import Progress
from lazyfs.publish import listing as listing_module
from lazyfs.publish.listing import Listing
from providers import referrers, registry_documents
from providers.digest import Digest
from providers.manifest import INDEX_BLOB_ANNOTATION, ImageManifest
from tests.support.registry_pulls import docker, lazyfs, provider
from tests.support.registry_seed import Seed
from tests.support.registry_servers import Registry, copy_storage, run_registry

A = Digest("sha256:" + "a" * 64)
B = Digest("sha256:" + "b" * 64)


@pytest.fixture
def registry(seed: Seed, tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, copy_storage(seed.storage, tmp_path / "storage")) as running:
        yield running


async def test_the_listing_goes_out_before_the_config_is_in(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = f"{registry.host}/rich:oci"
    pushed = lazyfs(tmp_path / "first", "--docker_registry", registry.url, "index", "push", image)
    assert pushed.returncode == 0, pushed.stderr
    order: list[str] = []
    listed = threading.Event()
    real_list, real_config = referrers.list_referrers, registry_documents.fetch_config

    def list_referrers(*args: Any) -> Any:
        order.append("listing")
        listed.set()
        return real_list(*args)

    def config(*args: Any) -> bytes:
        listed.wait(30)  # a bound, not a delay: set at once when it works
        order.append("config")
        return real_config(*args)

    monkeypatch.setattr(listing_module, "list_referrers", list_referrers)
    monkeypatch.setattr(registry_documents, "fetch_config", config)
    second = provider(tmp_path / "second", registry.url)
    second.trust_published = True
    got = await second.fetch_lazy(docker(image), Progress())
    assert order == ["listing", "config"]
    # Found through that listing: every layer is read through its index.
    assert all(INDEX_BLOB_ANNOTATION in dict(layer.annotations) for layer in got.layers)


async def test_an_untrusting_pull_lists_nothing(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = f"{registry.host}/rich:oci"
    calls: list[object] = []
    monkeypatch.setattr(listing_module, "list_referrers", lambda *args: calls.append(args))
    got = await provider(tmp_path / "store", registry.url).fetch_lazy(docker(image), Progress())
    assert calls == []
    assert not any(INDEX_BLOB_ANNOTATION in dict(layer.annotations) for layer in got.layers)


def _manifest(digest: Digest) -> ImageManifest:
    return ImageManifest("registry.test/app:1", digest, (), None)  # type: ignore[arg-type]


@pytest.fixture
def lists(monkeypatch: pytest.MonkeyPatch) -> list[Digest]:
    """What ``list_image`` was asked to list; each answer an empty listing."""
    asked: list[Digest] = []

    def list_image(client: object, reference: str, digest: Digest) -> Listing:
        asked.append(digest)
        return Listing(None, digest, ())  # type: ignore[arg-type]

    monkeypatch.setattr(listing_module, "list_image", list_image)
    return asked


async def test_listings_begun_once_and_used_for_their_digest_only(lists: list[Digest]) -> None:
    listings = Listings(None, "registry.test/app:1")  # type: ignore[arg-type]
    listings.seen(A)
    listings.seen(A)  # a mirror that failed after its manifest, then the origin: once
    found = await listings.get(_manifest(A))
    assert found is not None and found.subject == A
    # Resolved at last to another digest (a mirror's differed): that one is listed now.
    other = await listings.get(_manifest(B))
    assert other is not None and other.subject == B
    assert lists == [A, B]


async def test_a_listing_that_fails_fails_where_it_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> None:
        raise ValueError("a bug in the listing")

    monkeypatch.setattr(listing_module, "list_image", broken)
    listings = Listings(None, "registry.test/app:1")  # type: ignore[arg-type]
    listings.seen(A)  # raises nothing in resolve's thread
    with pytest.raises(ValueError, match="a bug in the listing"):
        await listings.get(_manifest(A))
