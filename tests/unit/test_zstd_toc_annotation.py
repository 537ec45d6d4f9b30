"""A zstd layer's eStargz TOC digest (stargz-snapshotter's zstd:chunked) is not kept.

eStargz is gzip; lazyfs reads no TOC in zstd framing, so such a layer must
not be taken for an eStargz one (read by range, its footer looked for).
"""

from __future__ import annotations

import pytest

from providers.digest import Digest
from providers.manifest import (
    DOCKER_LAYER_GZIP,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDIST_ZSTD,
    OCI_LAYER_ZSTD,
    TOC_DIGEST_ANNOTATION,
    Layer,
)

DIGEST = Digest("sha256:" + "ab" * 32)
NOTES = ((TOC_DIGEST_ANNOTATION, "sha256:" + "cd" * 32), ("x.other", "kept"))


@pytest.mark.parametrize("media_type", [OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_ZSTD])
def test_a_zstd_layer_drops_the_toc_digest_and_keeps_the_rest(media_type: str) -> None:
    layer = Layer(DIGEST, media_type, 10, annotations=NOTES)
    assert layer.annotation(TOC_DIGEST_ANNOTATION) is None
    assert layer.annotations == (("x.other", "kept"),)


@pytest.mark.parametrize("media_type", [OCI_LAYER_GZIP, DOCKER_LAYER_GZIP])
def test_a_gzip_layer_keeps_it(media_type: str) -> None:
    assert Layer(DIGEST, media_type, 10, annotations=NOTES).annotations == NOTES


def test_an_empty_one_is_dropped_too() -> None:
    layer = Layer(DIGEST, OCI_LAYER_ZSTD, 10, annotations=((TOC_DIGEST_ANNOTATION, ""),))
    assert layer.annotations == ()
