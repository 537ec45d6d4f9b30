"""``--debug`` for a mount process: every request it serves, and its answer, in the log.

``log_requests(ops)`` wraps the handlers of one operations object in place
(instance attributes shadow the class's methods, which pyfuse3 looks up on
the object), so a mount without ``--debug`` pays nothing.  One line per
request, after it is answered::

    lookup(1, b'etc') -> ino 2
    open(17, O_RDONLY) -> fh 17
    read(17, 0, 4096) -> 4096 bytes
    getxattr(2, b'user.x') -> ENODATA

Arguments are shortened (bytes past 40 characters, anything else past 200;
no ``ctx`` or ``token`` parameters); file data is shown as its length.  On
a writable mount, forget and statfs lines end with how many nodes the
upper holds in memory (``forget([(7, 1)]) -> ok [12 nodes held]``), to
see that forgotten inodes are let go of.
Errors other than ``FUSEError`` never reach here: ``lazyfs.fs.boundary.fuse_errors``
has turned them into answers and logged their cause.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pyfuse3

log = logging.getLogger("lazyfs.requests")

HANDLERS = (
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "create",
    "read",
    "lseek",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
)
_SHOWN_BYTES = 40
_SHOWN_OTHER = 200
_HELD_SHOWN = ("forget", "statfs")
_ACCESS = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}

Handler = Callable[..., Coroutine[Any, Any, Any]]


def log_requests(ops: pyfuse3.Operations) -> None:
    """Log every request ``ops`` answers, at DEBUG on ``lazyfs.requests``."""
    held: Callable[[], int] | None = getattr(ops, "nodes_held", None)
    for name in HANDLERS:
        handler = getattr(ops, name, None)
        if handler is not None:
            setattr(ops, name, _logged(name, handler, held if name in _HELD_SHOWN else None))


def _logged(name: str, handler: Handler, held: Callable[[], int] | None = None) -> Handler:
    # Request contexts and readdir tokens say nothing worth a log line.
    parameters = inspect.signature(handler).parameters
    hidden = {i for i, parameter in enumerate(parameters) if parameter in ("ctx", "token")}

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> Any:
        shown = ", ".join(
            _argument(name, position, a)
            for position, a in enumerate(args)
            if position not in hidden
        )
        try:
            result = await handler(*args)
        except pyfuse3.FUSEError as error:
            log.debug("%s(%s) -> %s", name, shown, errno.errorcode.get(error.errno, error.errno))
            raise
        tail = "" if held is None else f" [{held()} nodes held]"
        log.debug("%s(%s) -> %s%s", name, shown, _result(name, result), tail)
        return result

    return wrapper


def _argument(name: str, position: int, value: Any) -> str:
    if name == "write" and position == 2:
        return f"<{len(value)} bytes>"
    if name in ("open", "create") and position == (1 if name == "open" else 3):
        return _flags(value)
    return _short(value)


def _flags(flags: int) -> str:
    shown = [_ACCESS.get(flags & os.O_ACCMODE, hex(flags & os.O_ACCMODE))]
    shown += [
        text for bit, text in ((os.O_TRUNC, "O_TRUNC"), (os.O_APPEND, "O_APPEND")) if flags & bit
    ]
    return "|".join(shown)


def _result(name: str, result: Any) -> str:
    if name == "readlink":
        return _short(result)
    if result is None:
        return "ok"
    if isinstance(result, pyfuse3.EntryAttributes):
        return f"ino {result.st_ino}" if result.st_ino else "no entry (cached)"
    if isinstance(result, pyfuse3.FileInfo):
        return f"fh {result.fh}"
    if isinstance(result, tuple) and result and isinstance(result[0], pyfuse3.FileInfo):
        return f"fh {result[0].fh}, ino {result[1].st_ino}"  # create
    if isinstance(result, (bytes, bytearray, memoryview)):
        return f"{len(result)} bytes"
    if isinstance(result, pyfuse3.StatvfsData):
        return f"{result.f_blocks} blocks, {result.f_files} files"
    return _short(result)


def _short(value: Any) -> str:
    text = repr(value)
    if isinstance(value, (bytes, bytearray)) and len(text) > _SHOWN_BYTES:
        return text[:_SHOWN_BYTES] + "...'"
    if len(text) > _SHOWN_OTHER:  # a forget of thousands of inodes, say
        count = f" ({len(value)} items)" if isinstance(value, (list, tuple)) else ""
        return f"{text[:_SHOWN_OTHER]}...{count}"
    return text
