"""The handler boundary: where every error of a FUSE request becomes its answer.

pyfuse3 answers a request with the errno of a ``FUSEError`` and treats any
other exception as a bug, so every handler of ``lazyfs.fs.read_only`` and
``lazyfs.fs.writable`` is wrapped in ``fuse_errors``, and the code below the
handlers never raises ``FUSEError`` itself: the upper raises ``UpperError``
(an errno and its facts), the files and layers ``OSError``.  This is the one
place that turns them into answers:

- ``FUSEError`` raised by a handler itself passes as it is;
- ``UpperError``: its errno, an expected refusal, logged at debug level only;
- ``OSError`` that says the upper directory is full or at a limit
  (``PASSED_ON``): its own errno, so a writer sees ENOSPC as on any
  filesystem, logged once;
- anything else: EIO, its cause logged once with the traceback.

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
PASSED_ON = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMLINK, errno.ENAMETOOLONG})

P = ParamSpec("P")
R = TypeVar("R")


def fuse_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``handler``, answering every error as the module docstring says."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except UpperError as refusal:
            log.debug("%s%r refused: %s", handler.__name__, args[1:], refusal)
            raise pyfuse3.FUSEError(refusal.errno) from None
        except OSError as error:
            number = error.errno if error.errno in PASSED_ON else errno.EIO
            log.error(
                "%s%r failed, answering %s: %s",
                handler.__name__,
                args[1:],
                errno.errorcode.get(number, number),
                error,
                exc_info=number == errno.EIO,
            )
            raise pyfuse3.FUSEError(number) from None
        except Exception:
            log.exception("%s%r failed; answering EIO", handler.__name__, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
