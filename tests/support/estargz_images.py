"""The eStargz test images: their tags, the big image's layers, and one converted image.

``tests/estargz/conftest.py`` builds them with ctr-remote; tests read them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tests.support import images

SOURCE_TAG = "src"
ESGZ_TAG = "esgz"
# Incompressible, so its chunks stay near the 4 MiB ctr-remote cuts them to.
BIG_DATA = random.Random(12).randbytes((9 << 20) + 12345)
BIG_LAYERS = [
    [
        images.Entry("opt/big", data=BIG_DATA, mode=0o755),
        images.Entry("deep/er/file", data=b"no parent entries\n", uid=7, gid=8),
        images.Entry("empty"),
    ],
    [images.Entry("opt/small", data=b"small\n" * 100)],
]


@dataclass(frozen=True)
class Converted:
    """One image in both forms: ``source`` (OCI layout, tag SOURCE_TAG) and
    ``layout`` (OCI layout of the eStargz image, tag ESGZ_TAG); ``ref`` is the
    eStargz image's name in containerd."""

    name: str
    source: Path
    layout: Path
    ref: str
