"""``lazyfs.blobs.published_once.Once``: one thread makes a value, the others wait for it."""

from __future__ import annotations

import threading

import pytest

from lazyfs.blobs.published_once import Once


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
