"""A manifest listing more layers than any image has, from any source, is refused."""

from __future__ import annotations

import json

import pytest

from providers.errors import BadImage
from providers.manifest import LAYER_LIMIT, OCI_LAYER_GZIP, OCI_MANIFEST, parse_image_manifest


def _manifest(count: int) -> bytes:
    def descriptor(i: int, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": f"sha256:{i:064x}", "size": 1}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(0, "application/vnd.oci.image.config.v1+json"),
            "layers": [descriptor(i, OCI_LAYER_GZIP) for i in range(count)],
        }
    ).encode()


def test_a_manifest_at_the_limit_parses_and_one_past_it_is_refused() -> None:
    assert len(parse_image_manifest(_manifest(LAYER_LIMIT)).layers) == LAYER_LIMIT
    with pytest.raises(BadImage, match=f"{LAYER_LIMIT + 1} layers, over {LAYER_LIMIT}"):
        parse_image_manifest(_manifest(LAYER_LIMIT + 1))
