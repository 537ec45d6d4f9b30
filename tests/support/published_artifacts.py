"""Published index artifacts of test layers, and the blobs a reader of them reads.

``artifact_of`` indexes a layer blob as a store would and builds its
artifact (``lazyfs.index.artifact_build``) with checkpoints ``spacing``
apart; ``blobs_of`` gives the blobs a mount reads through it by digest:
the layer and, for gzip, the windows blob.
"""

from __future__ import annotations

from pathlib import Path

from lazyfs.index.artifact import LayerArtifact
from lazyfs.index.artifact_build import build_artifact
from lazyfs.index.formats import build_index
from providers.digest import Digest

SPACING = 1 << 16


def artifact_of(
    blob: Path, digest: Digest, scratch: Path, *, spacing: int = SPACING
) -> tuple[LayerArtifact, bytes]:
    """The artifact of the layer blob ``blob`` (its digest ``digest``) and its windows blob."""
    scratch.mkdir(parents=True, exist_ok=True)
    index = build_index(digest, blob, scratch)
    built = build_artifact(index, blob, spacing=spacing)
    assert built is not None, "a gzip layer of several members"
    return built


def blobs_of(artifact: LayerArtifact, blob: bytes, windows: bytes) -> dict[Digest, bytes]:
    """The blobs a reader of ``artifact`` reads, by digest."""
    found = {artifact.layer: blob}
    if artifact.windows is not None:
        found[artifact.windows] = windows
    return found
