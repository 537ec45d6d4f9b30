"""What tells a closed stdout (a command then ends quietly) from other broken pipes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from lazyfs.cli_run import READER_GONE, stdout_reader_gone


def test_only_a_pipe_nobody_reads_counts_as_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_end, write_end = os.pipe()
    try:
        with open(write_end, "w") as pipe, open(tmp_path / "file", "w") as file:
            monkeypatch.setattr(sys, "stdout", pipe)
            assert not stdout_reader_gone()  # someone may still read it
            os.close(read_end)
            read_end = -1
            assert stdout_reader_gone()
            monkeypatch.setattr(sys, "stdout", file)
            assert not stdout_reader_gone()
    finally:
        if read_end >= 0:
            os.close(read_end)


def test_a_stdout_with_no_descriptor_is_not_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    assert not stdout_reader_gone()


def test_the_status_is_sigpipe_s() -> None:
    assert READER_GONE == 128 + signal.SIGPIPE == 141
