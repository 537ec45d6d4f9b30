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
    ("found", "failure", "warnings"),
    [
        ([], None, []),
        ([Entry("warning", "a\nb")], None, ["a b"]),
        (
            [Entry("warning", "w"), Entry("error", FAILED)],
            "unable to start container process: error during container init: x",
            ["w"],
        ),
        ([Entry("fatal", "bad   usage\n")], "bad usage", []),
        ([Entry("info", "i"), Entry("debug", "d")], None, []),
    ],
)
def test_failure_and_warnings(found: list[Entry], failure: str | None, warnings: list[str]) -> None:
    assert runc_log.failure(found) == failure
    assert runc_log.warnings(found) == warnings


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
