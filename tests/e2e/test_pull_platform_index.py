"""``lazyfs pull --platform`` from a multi-platform OCI layout takes the image
containerd takes: ``linux/arm`` is arm/v7 wherever the index lists it (not the first
arm image listed), and ``linux/aarch64`` and ``linux/x86_64`` are the arm64 and amd64
images, recorded under their usual names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from providers.manifest import OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST
from tests.support import hand_images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

# Listed as some indexes list them: the oldest arm first, so "the first arm image
# listed" is the wrong one.
OFFERED = ["linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8", "linux/amd64"]


def _multi_platform_layout(root: Path) -> dict[str, str]:
    """An OCI layout at ``root`` whose tag ``multi`` is an index of one image per
    platform of OFFERED, each a layer of its own; their manifest digests by platform."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        (blobs / hand_images.digest_of(data).split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": hand_images.digest_of(data), "size": len(data)}

    entries, digests = [], {}
    for platform in OFFERED:
        layers = [hand_images.layer("platform", platform.encode())]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": blob(hand_images.config(layers, platform), hand_images.OCI_CONFIG),
            "layers": [blob(data, OCI_LAYER_TAR) for data in layers],
        }
        entry = blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        parts = platform.split("/")
        entry["platform"] = dict(zip(("os", "architecture", "variant"), parts, strict=False))
        entries.append(entry)
        digests[platform] = str(entry["digest"])
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    top = blob(json.dumps(index).encode(), OCI_INDEX)
    top["annotations"] = {hand_images.REF_NAME: "multi"}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return digests


@pytest.mark.parametrize(
    ("asked", "picked", "recorded"),
    [
        ("linux/arm", "linux/arm/v7", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6", "linux/arm/v6"),
        ("linux/aarch64", "linux/arm64/v8", "linux/arm64"),
        ("linux/x86_64", "linux/amd64", "linux/amd64"),
    ],
)
def test_a_pull_takes_the_image_of_the_platform_asked_for(
    tmp_path: Path, asked: str, picked: str, recorded: str
) -> None:
    digests = _multi_platform_layout(tmp_path / "images" / "busybox:multi")
    lazyfs = Lazyfs(tmp_path / "work", tmp_path / "images")
    lazyfs("--platform", asked, "pull", "busybox:multi")
    [stored] = json.loads(lazyfs("images", "--json").stdout)
    assert (stored["platform"], stored["digest"]) == (recorded, digests[picked])
