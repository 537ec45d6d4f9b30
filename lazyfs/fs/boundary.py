"""The handler boundary: where every error of a FUSE request becomes its answer.

pyfuse3 answers a request with the errno of a ``FUSEError`` and treats any
other exception as a bug, so every handler of ``lazyfs.fs.read_only`` and
``lazyfs.fs.writable`` is wrapped in ``fuse_errors``, and the code below the
handlers never raises ``FUSEError`` itself: the upper raises ``UpperError``
(an errno and its facts), the files and layers ``OSError``.  This is the one
place that turns them into answers:

- ``FUSEError`` raised by a handler itself passes as it is;
- ``UpperError``: its errno, an expected refusal, logged at debug level only;
- ``OSError`` that says the upper directory is full, at a limit or
  read-only (``PASSED_ON``): its own errno, so a writer sees ENOSPC or
  EROFS as on any filesystem;
- anything else: EIO, logged with its traceback.

Each cause is logged once: a handler's first failure from one place
(``Causes``: the exception's type, its errno, the line that raised it) is
logged whole; the same again is counted, and logged in one line when its
count reaches a power of two (2, 4, 8, ...), at debug level otherwise.  A
storm of one failure (a read-only cache under every read) adds a few
lines to the mount's log, not a traceback a request, and a different
failure is still logged whole.  Each handler remembers at most
``KEPT_CAUSES`` of them, then forgets them all at once (a cause seen after
that is logged whole again): memory stays bounded too.

Cancellation (a BaseException) passes untouched: pyfuse3 is shutting down.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from lazyfs.fs.upper_state import UpperError

log = logging.getLogger(__name__)

# Errors of the upper directory a writer should see as they are.
PASSED_ON = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMLINK, errno.ENAMETOOLONG, errno.EROFS}
)
# Causes each handler remembers (a few hundred bytes each), at most.
KEPT_CAUSES = 64

P = ParamSpec("P")
R = TypeVar("R")
Cause = tuple[type, int | None, str, int]


class Causes:
    """The causes of one handler's failures, each with how often it came (module docstring)."""

    def __init__(self, kept: int = KEPT_CAUSES) -> None:
        self.kept = kept
        self._counts: dict[Cause, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, error: BaseException) -> int:
        """How many times ``error``'s cause has come, this time included."""
        cause = cause_of(error)
        if cause not in self._counts and len(self._counts) >= self.kept:
            # Dropped whole: as bounded as an LRU, and simpler.
            self._counts.clear()
        count = self._counts.get(cause, 0) + 1
        self._counts[cause] = count
        return count


def cause_of(error: BaseException) -> Cause:
    """Where ``error`` comes from: its type, its errno, and the line that raised it."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = ("", 0) if frame is None else (frame.tb_frame.f_code.co_filename, frame.tb_lineno)
    return (type(error), getattr(error, "errno", None), *where)


def _log_failure(
    name: str, args: tuple[object, ...], error: Exception, number: int, count: int
) -> None:
    """Log the ``count``th failure of handler ``name`` from ``error``'s cause, as the
    module docstring says."""
    if count == 1:
        level, again = logging.ERROR, ""
    elif count & (count - 1) == 0:  # a power of two
        level, again = logging.ERROR, f" ({count} times from this cause, logged first above)"
    else:
        level, again = logging.DEBUG, f" ({count} times from this cause)"
    log.log(
        level,
        "%s%s failed, answering %s: %s%s",
        name,
        _shown(args),
        errno.errorcode.get(number, number),
        error if isinstance(error, OSError) else f"{type(error).__name__}: {error}",
        again,
        exc_info=error if count == 1 and number == errno.EIO else None,
    )


def _shown(args: tuple[object, ...]) -> str:
    """``args`` as a log line shows them: a buffer by its length, not its bytes (a
    write's 128 KiB of what the container wrote, in a repr four times that)."""
    buffers = (bytes, bytearray, memoryview)
    shown = (f"<{len(a)} bytes>" if isinstance(a, buffers) else repr(a) for a in args)
    return f"({', '.join(shown)})"


def fuse_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``handler``, answering every error as the module docstring says."""
    causes = Causes()

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except UpperError as refusal:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s%s refused: %s", handler.__name__, _shown(args[1:]), refusal)
            raise pyfuse3.FUSEError(refusal.errno) from None
        except Exception as error:
            number = errno.EIO
            if isinstance(error, OSError) and error.errno in PASSED_ON:
                number = error.errno
            _log_failure(handler.__name__, args[1:], error, number, causes.count(error))
            raise pyfuse3.FUSEError(number) from None

    return wrapper
