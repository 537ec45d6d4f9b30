"""Progress lines: totals plus the layers still moving; silent when not a terminal."""

from __future__ import annotations

import io

from lazyfs.progress import Progress

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_progress_shows_totals_and_moving_layers() -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=True)
    progress.start(A, 2048)
    progress.start(B, 100)
    progress.advance(A, 1024)
    progress.finish()
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert "0/2 blobs  1.0 KiB / 2.1 KiB" in last
    assert "[sha256:aaaaaaaaaaaa 1.0 KiB/2.0 KiB]" in last
    assert "bbbb" not in last


def test_progress_is_silent_when_disabled() -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=False)
    progress.start(A, 10)
    progress.advance(A, 10)
    progress.finish()
    assert out.getvalue() == ""
