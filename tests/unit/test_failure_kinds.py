"""Which failures the CLI words in one line, and which second failures are worth a warning.

No thread to start (a process limit) is the user's to read; any other
RuntimeError is a bug and keeps its traceback. Beside a failed build, a
second failure of the same kind (the same errno behind both) is logged at
debug level; one of another kind is still a warning.
"""

from __future__ import annotations

import errno
import logging

import pytest

from lazyfs.cli_run import NO_THREAD, failure_line
from lazyfs.provision.build import _first
from providers.errors import BackendError


def test_no_thread_to_start_is_one_line() -> None:
    assert failure_line(RuntimeError(NO_THREAD)) == (
        "cannot start a thread (a process limit: ulimit -u?)",
        1,
    )
    assert failure_line(ExceptionGroup("both", [RuntimeError(NO_THREAD), OSError(28, "x")]))


@pytest.mark.parametrize(
    "bug",
    [
        RuntimeError("dictionary changed size during iteration"),
        RuntimeError(),
        ValueError(NO_THREAD),
    ],
)
def test_other_errors_keep_their_traceback(bug: Exception) -> None:
    assert failure_line(bug) is None
    assert failure_line(ExceptionGroup("both", [RuntimeError(NO_THREAD), bug])) is None


def entry_error(number: int) -> BackendError:
    """A backend's error for one entry, raised from its OSError (as backends.apply_walk does)."""
    try:
        try:
            raise OSError(number, errno.errorcode[number])
        except OSError as error:
            raise BackendError(f"layer l: entry 'bin/busybox': {error.strerror}") from error
    except BackendError as error:
        return error


@pytest.mark.parametrize("build_first", [True, False])
def test_the_same_failure_beside_the_build_is_logged_at_debug_level(
    caplog: pytest.LogCaptureFixture, build_first: bool
) -> None:
    build, beside = entry_error(errno.ENOSPC), OSError(errno.ENOSPC, "No space left on device")
    both = [build, beside] if build_first else [beside, build]
    with caplog.at_level(logging.DEBUG, logger="lazyfs.provision.build"):
        assert _first(ExceptionGroup("both", both)) is both[0]
    [record] = [r for r in caplog.records if "also failed beside the build" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert str(both[1]) in record.getMessage()


@pytest.mark.parametrize(
    "beside",
    [
        OSError(errno.EIO, "Input/output error"),
        BackendError("the fuse backend needs /dev/fuse"),
        RuntimeError(NO_THREAD),
    ],
)
def test_another_failure_beside_the_build_is_a_warning(
    caplog: pytest.LogCaptureFixture, beside: Exception
) -> None:
    build = entry_error(errno.ENOSPC)
    with caplog.at_level(logging.DEBUG, logger="lazyfs.provision.build"):
        assert _first(ExceptionGroup("both", [build, beside])) is build
    [record] = [r for r in caplog.records if "also failed beside the build" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert str(beside) in record.getMessage()
