"""runc's JSON log read as ``lazyfs run`` reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.provision import runc_log
from lazyfs.provision.runc_log import Entry

FAILED = "runc run failed: unable to start container process: error during container init: x"


def write_log(path: Path, *entries: tuple[str, str]) -> Path:
    lines = [json.dumps({"level": level, "msg": msg, "time": "t"}) for level, msg in entries]
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("found", "failure", "others"),
    [
        ([], None, []),
        ([Entry("warning", "a\nb")], None, ["warning: a b"]),
        (
            [Entry("warning", "w"), Entry("error", FAILED)],
            "unable to start container process: error during container init: x",
            ["warning: w"],
        ),
        ([Entry("fatal", "runc run failed: bad   usage\n")], "bad usage", []),
        ([Entry("info", "i"), Entry("debug", "d")], None, []),
        # Errors runc logs after the container ran: not its failure to run it, and shown.
        (
            [Entry("error", "Failed to remove paths: x"), Entry("warning", "w")],
            None,
            ["error: Failed to remove paths: x", "warning: w"],
        ),
        (
            [Entry("error", "forward signal 15: no such process")],
            None,
            ["error: forward signal 15: no such process"],
        ),
    ],
)
def test_failure_and_the_rest(found: list[Entry], failure: str | None, others: list[str]) -> None:
    assert runc_log.failure(found) == failure
    assert runc_log.others(found) == others


def test_entries_of_a_log_and_of_none(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", ("warning", "w"), ("error", "e"))
    with log.open("a") as out:
        out.write('{"level": "err')  # runc died writing it: not ended well
    assert runc_log.entries(log) == [
        Entry("warning", "w"),
        Entry("error", "e"),
        Entry("error", '{"level": "err'),
    ]
    assert runc_log.entries(tmp_path / "none") == []
