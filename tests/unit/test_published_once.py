"""``lazyfs.blobs.published_once.Once``: one thread makes a value, the others wait for it."""

from __future__ import annotations

import threading

import pytest

from lazyfs.blobs.published_once import Once, Spans
from providers.digest import Digest


def test_a_second_thread_waits_for_the_first_ones_value() -> None:
    once: Once[str] = Once()
    kept: dict[str, str] = {}
    made: list[str] = []
    entered, release, looked = threading.Event(), threading.Event(), threading.Event()

    def make() -> str:
        made.append("first")
        entered.set()
        release.wait()
        kept["k"] = "value"
        return "value"

    first = threading.Thread(target=lambda: once.get("k", lambda: kept.get("k"), make))
    first.start()
    entered.wait()  # the first thread is inside make(), holding the key

    def find() -> str | None:
        looked.set()  # the second thread looked and found nothing: it waits next
        return kept.get("k")

    got: list[str] = []
    second = threading.Thread(target=lambda: got.append(once.get("k", find, lambda: "other")))
    second.start()
    looked.wait()
    release.set()
    first.join()
    second.join()
    assert got == ["value"] and made == ["first"]


def test_a_failed_make_leaves_the_next_caller_to_make_it() -> None:
    once: Once[int] = Once()

    def fail() -> int:
        raise OSError("no")

    with pytest.raises(OSError):
        once.get("k", lambda: None, fail)
    assert once.get("k", lambda: None, lambda: 7) == 7


def test_a_value_kept_between_a_look_and_the_claim_is_not_made_again() -> None:
    # The second caller looks, finds nothing, and before it claims the key the first
    # caller makes the value, keeps it and lets the key go: it was made twice.
    once: Once[str] = Once()
    kept: dict[str, str] = {}
    made: list[str] = []

    def make() -> str:
        made.append("made")
        kept["k"] = "value"
        return "value"

    first = threading.Thread(target=lambda: once.get("k", lambda: kept.get("k"), make))
    looks: list[str | None] = []

    def find() -> str | None:
        looks.append(found := kept.get("k"))
        if len(looks) == 1:  # after the second caller's first look, the first one runs whole
            first.start()
            first.join()
        return found

    assert once.get("k", find, make) == "value"
    assert made == ["made"]


def test_spans_count_their_bytes_exactly() -> None:
    layer = Digest("sha256:" + "a" * 64)
    spans = Spans(max_bytes=10)
    spans.put((layer, 0), b"1234")
    spans.put((layer, 0), b"1234")  # the same span kept again (a second fetch of it)
    assert spans.kept_bytes == 4
    spans.put((layer, 1), b"12345")
    assert spans.kept_bytes == 9 and spans.holds(layer, [0, 4], 2, 5)
    spans.put((layer, 2), b"123")  # past 10: the least recently used goes
    assert spans.kept_bytes == 8 and spans.get((layer, 0)) is None
