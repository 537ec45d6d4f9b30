"""The handler boundary logs each cause of failure once, and answers a read-only upper EROFS.

A mount's log is a file on the machine: a storm of one failure (a read-only
cache dir, every read of a file failing) must not grow it by a traceback a
request, while a different failure still gets its own traceback.
"""

from __future__ import annotations

import errno
import logging
from typing import Protocol

import pyfuse3
import pytest

from lazyfs.fs.boundary import Causes, fuse_errors

STORM = 1000


class Handlers(Protocol):
    async def read(self, number: int) -> None: ...
    async def write(self, where: int) -> None: ...


def new_handlers() -> Handlers:
    """Handlers failing as a mount's can, wrapped anew (as in a new mount process): no
    test sees the causes another test's failures left."""

    class Failing:
        @fuse_errors
        async def read(self, number: int) -> None:
            raise OSError(number, "what the cache dir said")

        @fuse_errors
        async def write(self, where: int) -> None:
            if where:
                raise KeyError(f"bug at {where}")  # one line ...
            raise KeyError("another bug")  # ... or another

    return Failing()


async def answer(call: object) -> int:
    with pytest.raises(pyfuse3.FUSEError) as answered:
        await call  # type: ignore[misc]
    return answered.value.errno


async def test_a_storm_of_one_failure_logs_its_traceback_once_and_a_few_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handlers = new_handlers()
    with caplog.at_level(logging.INFO):
        for _ in range(STORM):
            assert await answer(handlers.read(errno.EBADMSG)) == errno.EIO
    storm = list(caplog.records)
    assert [r.exc_info is not None for r in storm] == [True] + [False] * (len(storm) - 1)
    # The first, then at 2, 4, ... 512 failures: one line each, with the count.
    assert len(storm) == 10
    assert storm[-1].getMessage().endswith("(512 times from this cause, logged first above)")
    assert all("\n" not in r.getMessage() for r in storm)
    caplog.clear()

    # A different failure is logged whole still: another errno, another type, another line.
    with caplog.at_level(logging.INFO):
        assert await answer(handlers.read(errno.EUCLEAN)) == errno.EIO
        assert await answer(handlers.write(1)) == errno.EIO
        assert await answer(handlers.write(2)) == errno.EIO  # the same line: the same cause
        assert await answer(handlers.write(0)) == errno.EIO
    whole = [r for r in caplog.records if r.exc_info is not None]
    assert [r.getMessage().split(": ", 1)[1] for r in whole] == [
        "[Errno 117] what the cache dir said",
        "KeyError: 'bug at 1'",
        "KeyError: 'another bug'",
    ]


async def test_every_repeat_is_in_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="lazyfs.fs.boundary"):
        handlers = new_handlers()
        for _ in range(5):
            await answer(handlers.read(errno.EBADMSG))
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR", "DEBUG", "ERROR", "DEBUG"]


def test_the_causes_remembered_stay_bounded() -> None:
    causes = Causes(kept=8)
    for n in range(1000):
        kind = type(f"Failure{n}", (Exception,), {})
        try:
            raise kind()
        except Exception as error:
            assert causes.count(error) == 1
        assert len(causes) <= 8


async def test_a_read_only_upper_answers_erofs_and_a_full_one_enospc(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handlers = new_handlers()
    with caplog.at_level(logging.INFO):
        assert await answer(handlers.read(errno.EROFS)) == errno.EROFS
        assert await answer(handlers.read(errno.ENOSPC)) == errno.ENOSPC
    # Expected of a filesystem: one line each, no traceback.
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("ERROR", None)] * 2


async def test_a_failed_write_logs_its_buffer_by_length_not_its_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A write's data went into the log as a repr: 128 KiB of what the container
    # wrote took half a megabyte of the mount's log, per failure logged.
    class Upper:
        @fuse_errors
        async def write(self, fh: int, offset: int, buffer: bytes) -> int:
            raise OSError(errno.EBADMSG, "what the upper said")

    secret = b"the container's data " * 6000
    with caplog.at_level(logging.DEBUG):
        assert await answer(Upper().write(7, 4096, secret)) == errno.EIO
    (record,) = caplog.records
    line = record.getMessage()
    assert line.startswith(f"write(7, 4096, <{len(secret)} bytes>) failed, answering EIO")
    assert "container" not in line
