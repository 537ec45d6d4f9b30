"""Range reads of a registry that redirects blobs to object storage, as S3-backed ones do.

The registry is the basic-auth docker-registry behind a front that answers
authenticated blob requests with a 307 to a storage server the test owns
(tests.support.blob_storage), on another host name. The storage must never
see the registry's Authorization; its URL serves later ranges of the blob
until it expires or the storage refuses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import requests

from providers.digest import Digest
from providers.errors import Unauthorized
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_auth import Credentials
from providers.registry_http import HttpOptions
from tests.support.blob_storage import Front, Storage, run_front, run_storage
from tests.support.registry_seed import PASSWORD, USER
from tests.support.registry_servers import Registry, free_port

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    client: RegistryClient
    front: Front
    storage: Storage
    digest: Digest
    data: bytes
    blob_url: str  # the blob at the registry (the front)


@pytest.fixture
def setup(basic_registry: Registry, big_layer: str) -> Iterator[Setup]:
    auth = (USER, PASSWORD)
    url = f"{basic_registry.url}/v2/library/rich/blobs/{big_layer}"
    data = requests.get(url, auth=auth, timeout=30).content
    storage = Storage({big_layer: data})
    front = Front(big_layer)
    with run_storage(storage) as storage_url, run_front(basic_registry.url, front) as front_url:
        front.storage = storage_url
        host = front_url.removeprefix("http://")
        http = HttpOptions(credentials={host: Credentials(USER, PASSWORD)}, backoff=0.01)
        client = RegistryClient(RegistryOptions(registry=front_url, http=http))
        client.resolve("rich:oci")
        blob_url = f"{front_url}/v2/library/rich/blobs/{big_layer}"
        yield Setup(client, front, storage, Digest(big_layer), data, blob_url)


def storage_ranges(setup: Setup) -> list[str]:
    return [headers.get("Range", "") for _, headers in setup.storage.seen]


def test_storage_is_asked_without_authorization_and_its_url_reused(setup: Setup) -> None:
    assert setup.client.read_range(setup.digest, 10, 100) == setup.data[10:110]
    assert setup.client.read_range(setup.digest, 500, 300) == setup.data[500:800]
    # The second range went straight to storage: the registry was asked once.
    assert setup.front.blob_requests() == 1
    assert storage_ranges(setup) == ["bytes=10-109", "bytes=500-799"]
    assert all("Authorization" not in headers for _, headers in setup.storage.seen)
    # The registry itself was asked with credentials.
    asked = [h for path, h in setup.front.seen if f"/blobs/{setup.digest}" in path]
    assert all("Authorization" in headers for headers in asked)


def test_a_refused_storage_url_is_dropped_and_the_registry_asked_again(setup: Setup) -> None:
    assert setup.client.read_range(setup.digest, 0, 10) == setup.data[:10]
    setup.storage.refuse = 1  # the signed URL has expired early, or was revoked
    assert setup.client.read_range(setup.digest, 20, 10) == setup.data[20:30]
    assert setup.front.blob_requests() == 2
    assert storage_ranges(setup) == ["bytes=0-9", "bytes=20-29", "bytes=20-29"]
    # The fresh URL is kept in turn.
    assert setup.client.read_range(setup.digest, 40, 10) == setup.data[40:50]
    assert setup.front.blob_requests() == 2


def test_a_storage_url_that_cannot_be_reached_is_dropped(setup: Setup) -> None:
    gone = f"http://localhost:{free_port()}/blobs/{setup.digest}?X-Amz-Signature=00"
    setup.client.ranges.redirects.put(setup.blob_url, gone)  # as if it redirected there before
    assert setup.client.read_range(setup.digest, 30, 10) == setup.data[30:40]
    assert setup.front.blob_requests() == 1
    assert storage_ranges(setup) == ["bytes=30-39"]


def test_a_fresh_storage_url_that_is_refused_is_an_error(setup: Setup) -> None:
    setup.storage.refuse = 10
    with pytest.raises(Unauthorized, match=r"rich:oci: access denied: HTTP 403") as caught:
        setup.client.read_range(setup.digest, 0, 10)
    assert "0123abcd" not in str(caught.value)  # the signature stays out of messages
    assert setup.front.blob_requests() == 1
    assert len(setup.storage.seen) == 1


def test_a_storage_url_past_the_expiry_it_states_is_not_reused(setup: Setup) -> None:
    # Signed in 2020 for five minutes: the storage here does not check, the client must.
    setup.front.query = "X-Amz-Date=20200101T000000Z&X-Amz-Expires=300&X-Amz-Signature=ab"
    assert setup.client.read_range(setup.digest, 0, 10) == setup.data[:10]
    assert setup.client.read_range(setup.digest, 10, 10) == setup.data[10:20]
    assert setup.front.blob_requests() == 2


def test_a_storage_url_within_the_expiry_it_states_is_reused(setup: Setup) -> None:
    signed = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    setup.front.query = f"X-Amz-Date={signed}&X-Amz-Expires=3600&X-Amz-Signature=ab"
    assert setup.client.read_range(setup.digest, 0, 10) == setup.data[:10]
    assert setup.client.read_range(setup.digest, 10, 10) == setup.data[10:20]
    assert setup.front.blob_requests() == 1
