"""Which kept traces ``--publish_indexes`` still has to push (``lazyfs.publish.traces``).

A trace is pending for a repository until a push there notes the digest of
its bytes, and the artifact it went in, beside it (``<trace>.pushed``,
``lazyfs.publish.pushed``). A start with nothing pending, each artifact
looked for since its push, asks the registry nothing (the client here is
None: any use of it would fail); one whose artifact was not looked for yet
has something to do (a listing, ``tests/registry/test_published_relisted.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lazyfs.index.trace import Read, Trace, store_trace, trace_path
from lazyfs.publish import pushed
from lazyfs.publish.traces import pending_traces, publish_due, publish_pending
from providers.digest import Digest, digest_bytes
from providers.manifest import ImageManifest

IMAGE = Digest("sha256:" + "a" * 64)
LAYER = Digest("sha256:" + "b" * 64)
KEY = f"{IMAGE}@{'c' * 32}"
OTHER_KEY = f"{IMAGE}@{'d' * 32}"
ARTIFACT = Digest("sha256:" + "e" * 64)


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
    pushed.note_pushed(tmp_path, "registry.example:5000/app:1", {KEY: data}, ARTIFACT)
    assert pending_traces(tmp_path, _image()) == {}
    # Another tag of the same repository: pushed already.
    assert pending_traces(tmp_path, _image("registry.example:5000/app:2")) == {}
    # Pushed, but not looked for since: the next start looks.
    assert publish_due(tmp_path, _image())
    notes = pushed.pushed_notes(tmp_path, "registry.example:5000/app:2", [KEY])
    pushed.note_checked(tmp_path, "registry.example:5000/app:2", notes)
    assert not publish_due(tmp_path, _image())
    assert publish_pending(tmp_path, None, _image()) is None  # type: ignore[arg-type]
    # Another repository has not got it.
    assert pending_traces(tmp_path, _image("registry.example:5000/mirror/app:1")) == {KEY: data}
    # A second command's trace is pending by itself.
    other = _keep(tmp_path, OTHER_KEY)
    assert pending_traces(tmp_path, _image()) == {OTHER_KEY: other}


def _earlier(data: bytes) -> bytes:
    """An earlier lazyfs's mark of ``data`` pushed: the trace's digest alone, no artifact."""
    return f'{{"registry.example:5000/app": "{digest_bytes(data)}"}}'.encode()


@pytest.mark.parametrize(
    "mark",
    [
        b"",
        b"[1]",
        b"{torn",
        b'{"registry.example:5000/app": 7}',
        b'{"registry.example:5000/app": {"trace": "x", "artifact": "y", "checked": true}}',
        _earlier,
    ],
)
def test_a_damaged_mark_means_pushing_again(
    tmp_path: Path, mark: bytes | Callable[[bytes], bytes]
) -> None:
    data = _keep(tmp_path, KEY)
    text = mark(data) if callable(mark) else mark
    trace_path(tmp_path, KEY).with_suffix(pushed.PUSHED_SUFFIX).write_bytes(text)
    assert pending_traces(tmp_path, _image()) == {KEY: data}
    assert publish_due(tmp_path, _image())


def test_a_trace_recorded_again_is_pending_again(tmp_path: Path) -> None:
    data = _keep(tmp_path, KEY)
    pushed.note_pushed(tmp_path, "registry.example:5000/app:1", {KEY: data}, ARTIFACT)
    notes = pushed.pushed_notes(tmp_path, "registry.example:5000/app:1", [KEY])
    pushed.note_checked(tmp_path, "registry.example:5000/app:1", notes)
    changed = _keep(tmp_path, KEY, 8192)
    assert changed != data
    assert pending_traces(tmp_path, _image()) == {KEY: changed}


def test_a_note_pushed_again_meanwhile_is_not_taken_as_checked(tmp_path: Path) -> None:
    where = "registry.example:5000/app:1"
    data = _keep(tmp_path, KEY)
    pushed.note_pushed(tmp_path, where, {KEY: data}, ARTIFACT)
    seen = pushed.pushed_notes(tmp_path, where, [KEY])  # one start lists the referrers ...
    other = Digest("sha256:" + "f" * 64)
    pushed.note_pushed(tmp_path, where, {KEY: data}, other)  # ... as another pushes again
    pushed.note_checked(tmp_path, where, seen)
    # The other artifact was never looked for: the next start does.
    assert pushed.pushed_notes(tmp_path, where, [KEY])[KEY].artifact == other
    assert publish_due(tmp_path, _image())
