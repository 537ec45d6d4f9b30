"""Published-index layers are read exactly, as eStargz ones: the daemon reads nothing ahead.

A span read through a published index (``lazyfs.blobs.gzip_remote``) is
already a whole span between gzip checkpoints; the daemon's read-ahead
after it would fetch bytes of the next span that nobody asked for yet.
"""

from __future__ import annotations

import pytest

from lazyfs.cache.client import remote_blob
from providers.digest import Digest
from providers.manifest import INDEX_BLOB_ANNOTATION, TOC_DIGEST_ANNOTATION, Layer

LAYER = Digest("sha256:" + "1" * 64)
BLOB = Digest("sha256:" + "2" * 64)


@pytest.mark.parametrize(
    ("annotations", "exact"),
    [
        ((), False),
        (((TOC_DIGEST_ANNOTATION, BLOB),), True),
        (((INDEX_BLOB_ANNOTATION, BLOB),), True),
        ((("org.example.other", "x"),), False),
    ],
    ids=["plain", "estargz", "published-index", "other-annotation"],
)
def test_which_layers_the_daemon_reads_exactly(
    annotations: tuple[tuple[str, str], ...], exact: bool
) -> None:
    layer = Layer(LAYER, "application/vnd.oci.image.layer.v1.tar+gzip", 1000, None, annotations)
    assert remote_blob("registry.invalid", "app", layer).exact is exact
