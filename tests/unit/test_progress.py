"""Progress bars: one per blob and a total, in binary units; silent when not a terminal."""

from __future__ import annotations

import io

from lazyfs.progress import Progress

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_progress_shows_each_blob_and_the_total() -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=True)
    progress.start(A, 2048)
    progress.start(B, 100)
    progress.advance(A, 1024)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == [
        "sha256:aaaaaaaaaaaa",
        "sha256:bbbbbbbbbbbb",
        "total",
    ]
    assert "1.0/2.0 KiB  50%" in lines[0]
    assert "0/100 bytes   0%" in lines[1]
    assert "1.0/2.1 KiB  48%" in lines[2]
    assert (progress.fetched, progress.items) == (1024, 2)


def test_a_retry_takes_back_what_its_first_try_counted() -> None:
    progress = Progress(io.StringIO(), enabled=True)
    progress.start(A, 2048)
    progress.advance(A, 1500)
    progress.advance(A, -1500)
    progress.advance(A, 2048)
    progress.finish()
    assert progress.fetched == 2048


def test_progress_is_silent_when_disabled_and_still_counts() -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=False)
    progress.start(A, 10)
    progress.advance(A, 10)
    progress.message("hello")
    progress.finish()
    assert out.getvalue() == ""
    assert progress.fetched == 10


def test_the_next_bars_total_counts_only_their_own_items() -> None:
    # A provision pulls an image's plain layers, then mounts its lazy ones: two sets of bars.
    out = io.StringIO()
    progress = Progress(out, enabled=True)
    progress.start(A, 4096)
    progress.advance(A, 4096)
    progress.finish()
    progress.start(B, 1024)
    progress.start("sha256:" + "c" * 64, 1024)
    progress.finish()
    (total,) = [line for line in out.getvalue().splitlines() if line.startswith("total")]
    assert "0/2.0 KiB" in total, total
