"""Which kept traces ``--publish_indexes`` still has to push (``lazyfs.publish.traces``).

A trace is pending for a repository until a push there notes the digest of
its bytes beside it (``<trace>.pushed``); a start with nothing pending asks
the registry nothing (the client here is None: any use of it would fail).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.index.trace import Read, Trace, store_trace, trace_path
from lazyfs.publish import traces
from lazyfs.publish.traces import pending_traces, publish_pending
from providers.digest import Digest
from providers.manifest import ImageManifest

IMAGE = Digest("sha256:" + "a" * 64)
LAYER = Digest("sha256:" + "b" * 64)
KEY = f"{IMAGE}@{'c' * 32}"
OTHER_KEY = f"{IMAGE}@{'d' * 32}"


def _image(reference: str = "registry.example:5000/app:1") -> ImageManifest:
    return ImageManifest(reference, IMAGE, ())


def _keep(cache: Path, key: str, length: int = 4096) -> bytes:
    return store_trace(cache, Trace(key, (Read(LAYER, 0, length),))).read_bytes()


def test_nothing_kept_nothing_pending_and_the_registry_is_not_asked(tmp_path: Path) -> None:
    assert pending_traces(tmp_path, _image()) == {}
    assert publish_pending(tmp_path, None, _image()) is None  # type: ignore[arg-type]


def test_a_trace_is_pending_until_noted_as_pushed_to_that_repository(tmp_path: Path) -> None:
    data = _keep(tmp_path, KEY)
    assert pending_traces(tmp_path, _image()) == {KEY: data}
    traces._mark_pushed(tmp_path, "registry.example:5000/app:1", {KEY: data})
    assert pending_traces(tmp_path, _image()) == {}
    # Another tag of the same repository: pushed already.
    assert pending_traces(tmp_path, _image("registry.example:5000/app:2")) == {}
    assert publish_pending(tmp_path, None, _image()) is None  # type: ignore[arg-type]
    # Another repository has not got it.
    assert pending_traces(tmp_path, _image("registry.example:5000/mirror/app:1")) == {KEY: data}
    # A second command's trace is pending by itself.
    other = _keep(tmp_path, OTHER_KEY)
    assert pending_traces(tmp_path, _image()) == {OTHER_KEY: other}


@pytest.mark.parametrize("mark", [b"", b"[1]", b"{torn", b'{"registry.example:5000/app": 7}'])
def test_a_damaged_mark_means_pushing_again(tmp_path: Path, mark: bytes) -> None:
    data = _keep(tmp_path, KEY)
    trace_path(tmp_path, KEY).with_suffix(traces.PUSHED_SUFFIX).write_bytes(mark)
    assert pending_traces(tmp_path, _image()) == {KEY: data}


def test_a_trace_recorded_again_is_pending_again(tmp_path: Path) -> None:
    data = _keep(tmp_path, KEY)
    traces._mark_pushed(tmp_path, "registry.example:5000/app:1", {KEY: data})
    changed = _keep(tmp_path, KEY, 8192)
    assert changed != data
    assert pending_traces(tmp_path, _image()) == {KEY: changed}
