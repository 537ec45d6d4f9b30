"""Loading a kept tree holds off the cyclic garbage collector, and leaves it as it found it.

``lazyfs.tree.kept.load_tree`` pauses the collector while it makes the
tree's objects (a mount process's start); whatever happens, a collector
that was on is on again afterwards, and one that was off stays off.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.tree import kept
from lazyfs.tree.merge import merge
from providers.digest import Digest

DIGESTS = [Digest("sha256:" + "a" * 64)]
SOURCES = ("none",)


@pytest.fixture
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def kept_tree(tmp_path: Path) -> Path:
    path = tmp_path / "tree"
    kept.store_tree(path, DIGESTS, merge(()), sources=SOURCES)
    return path


@pytest.mark.usefixtures("collector_restored")
@pytest.mark.parametrize("enabled", [True, False])
def test_a_kept_tree_loads_with_the_collector_paused_and_leaves_it_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    path = kept_tree(tmp_path)
    seen: list[bool] = []
    make = kept._tree

    def watched(*args: object) -> object:
        seen.append(gc.isenabled())
        return make(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(kept, "_tree", watched)
    gc.enable() if enabled else gc.disable()
    assert kept.load_tree(path, DIGESTS, sources=SOURCES) is not None
    assert seen == [False]
    assert gc.isenabled() is enabled


@pytest.mark.usefixtures("collector_restored")
def test_a_damaged_tree_file_leaves_the_collector_on(tmp_path: Path) -> None:
    path = tmp_path / "tree"
    path.write_bytes(b"not marshal data")
    gc.enable()
    assert kept.load_tree(path, DIGESTS, sources=SOURCES) is None
    assert gc.isenabled()
