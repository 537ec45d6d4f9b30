"""Image GC's names for appc images: their ``sha512:`` digests, and excluded Appc images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.gc.collect import StoredImage, named
from lazyfs.gc.config import parse_gc_config
from providers.appc_store import host_arch
from providers.digest import Digest
from providers.errors import UsageError
from providers.manifest import ImageManifest

ID = "sha512-" + "ab" * 64


def test_rm_takes_an_appc_image_by_its_sha512_digest_as_images_q_prints_it() -> None:
    appc = ImageManifest("appc:example.com/app", Digest("sha512:" + "ab" * 64), ())
    docker = ImageManifest("docker.io/library/app:1", Digest("sha256:" + "ab" * 32), ())
    images = [StoredImage(Path("/nonexistent/a"), appc, 0.0)]
    images.append(StoredImage(Path("/nonexistent/d"), docker, 0.0))
    assert named(images, appc.digest) == [images[0]]
    assert named(images, "sha512:" + "ab" * 6) == [images[0]]


@pytest.mark.parametrize(
    ("excluded", "reference", "excludes"),
    [
        ({"name": "example.com/app"}, "appc:example.com/app", True),
        # The defaults the store's lookup takes for what the request leaves out.
        ({"name": "example.com/app"}, "appc:example.com/app,version=latest,os=linux", True),
        ({"name": "example.com/app"}, f"appc:example.com/app,arch={host_arch()}", True),
        ({"name": "example.com/app"}, "appc:example.com/app,version=1.0", False),
        ({"name": "example.com/app"}, "appc:example.com/other", False),
        ({"name": "example.com/app"}, "docker.io/library/app:latest", False),
        ({"name": "example.com/app", "labels": {"labels": [{"key": "version", "value": "1.0"}]}},
         "appc:example.com/app,version=1.0", True),
        ({"name": "example.com/app", "labels": {"labels": [{"key": "version", "value": "1.0"}]}},
         f"appc:example.com/app,os=linux,version=1.0@{ID}", True),
        ({"name": "example.com/app", "labels": {"labels": [{"key": "version", "value": "1.0"}]}},
         "appc:example.com/app", False),
        ({"name": "example.com/app", "labels": {"labels": [{"key": "channel", "value": "a"}]}},
         "appc:example.com/app", False),
        ({"name": "example.com/app", "id": ID}, f"appc:example.com/app@{ID}", True),
        ({"name": "example.com/app", "id": ID}, "appc:example.com/app", False),
    ],
)  # fmt: skip
def test_an_excluded_appc_image_matches_the_stored_image_it_names(
    excluded: dict[str, object], reference: str, excludes: bool
) -> None:
    message = {"type": "APPC", "appc": excluded}
    config = parse_gc_config(json.dumps({"excluded_images": [message]}))
    assert config.excludes(reference) is excludes


def test_an_excluded_appc_string_matches_as_its_message_does() -> None:
    config = parse_gc_config('{"excluded_images": ["appc:example.com/app,version=1.0"]}')
    assert config.excludes("appc:example.com/app,version=1.0,os=linux")
    assert not config.excludes("appc:example.com/app")


def test_an_excluded_id_protects_the_image_of_that_id_however_it_was_asked_for() -> None:
    # Provisioned by name, its record's reference has no id; its digest is its id.
    config = parse_gc_config(json.dumps({"excluded_images": [
        {"type": "APPC", "appc": {"name": "example.com/app", "id": ID}}]}))  # fmt: skip
    digest = "sha512:" + ID.removeprefix("sha512-")
    assert config.excludes("appc:example.com/app,version=1.0", digest)
    assert not config.excludes("appc:example.com/app,version=1.0", "sha512:" + "0" * 128)


def test_an_excluded_id_that_is_no_id_is_refused() -> None:
    bad = {"type": "APPC", "appc": {"name": "example.com/app", "id": "SHA512-XYZ"}}
    with pytest.raises(UsageError, match="excluded image"):
        parse_gc_config(json.dumps({"excluded_images": [bad]}))
