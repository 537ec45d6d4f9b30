"""An image's pull lock that passes its holder's failure on to those who waited for it.

Concurrent pulls of one image take one lock (``Store.lock_async``): the
first resolves and pulls, the others wait, then find the image stored.
When that pull fails, each waiter would take the lock in turn and try the
whole resolve again, with its retries and timeouts: twenty starts against
a registry that is down would end one by one, the last after twenty times
the first.  So the holder of ``pull_lock`` records its failure beside the
lock (``locks/<name>.failed``, written atomically: its one-line error,
the kind of error, and an id of the attempt), and a process that had to
wait for the lock and finds a failure recorded while it waited (an
attempt it had not seen when it began waiting) fails at once with the
same error.  One that got the lock at once tries afresh, as do waiters
whose holder was cancelled (nothing is recorded then).  A holder that
succeeds removes the record; image GC sweeps one whose lock no one holds
(``lazyfs.store.lock_sweep``).

A failure is passed on only to a pull made the same way (``attempt_of``:
lazy or whole, cached or not, with the same credentials of its own, from
the same registry): one made otherwise may well succeed (a task with its
own credentials, after another's 401; a lazy start, after a whole pull
failed on a layer it never fetches), so it tries itself.  And only once
the waiter found the image not stored (``Attempt.check_failed``, called
after that check): a pull waited for may have stored it before another
failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyfs.store.atomic import write_atomic
from lazyfs.store.disk import locked_async
from lazyfs.store.lock_sweep import FAILED_SUFFIX
from providers.errors import (
    BackendError,
    BadImage,
    LazyfsError,
    NotFound,
    TemporaryFailure,
    Unauthorized,
)
from providers.fslock import remove_lock, try_exclusive_lock
from providers.locked_temps import temp_prefix

log = logging.getLogger(__name__)


def attempt_of(*, lazy: bool, cached: bool, config: str, source: str) -> str:
    """How a pull is made, as its failure's record keeps it: a waiter fails with that
    failure only when its own pull is made the same way. ``config``: the image's own
    credentials (``Image.Docker.config``), kept as their sha256 only; ``source``: the
    registry's URL or directory, or the image's path."""
    own = hashlib.sha256(config.encode()).hexdigest() if config else ""
    facts = {"lazy": lazy, "cached": cached, "config": own, "source": source}
    return json.dumps(facts, sort_keys=True)


@dataclass
class Attempt:
    """What ``pull_lock`` yields: the failure, if any, that this pull waited through."""

    # The recorded failure of a pull made the same way that ended while this one waited.
    failed: dict[str, Any] | None = None
    # What ``check_failed`` raised: given on, not recorded again as this attempt's.
    passed: BaseException | None = None

    def check_failed(self) -> None:
        """Raise the error of the pull waited for, if it failed. Called once the image
        was found not stored: only a pull that would be made again fails with it."""
        if self.failed is not None:
            self.passed = _error(self.failed)
            raise self.passed


@contextlib.asynccontextmanager
async def pull_lock(
    locks: Path, name: str, tmp: Path, what: str, how: str
) -> AsyncIterator[Attempt]:
    """Hold the lock ``locks/<name>.lock`` (removed as it is released) for a pull of ``what``.

    The ``Attempt`` yielded gives, by its ``check_failed``, the error of an attempt
    made as ``how`` says (``attempt_of``) that failed while this one waited for the
    lock. A LazyfsError or OSError the block raises (or a group of only those) is
    recorded for the waiters, then raised; the block's success removes the record.
    ``tmp``: where the record is written first.
    """
    lock = locks / f"{name}.lock"
    record = locks / f"{name}{FAILED_SUFFIX}"
    with try_exclusive_lock(lock) as held:
        if held:
            try:
                attempt = Attempt()
                async with _recording(record, tmp, how, attempt):
                    yield attempt
            finally:
                remove_lock(lock)  # as ``locked_async`` removes it, still held
            return
    # Waiting: what was recorded before is an older attempt's, not one waited for.
    seen = _read(record)
    log.debug("%s: waiting for its pull by another process", what)
    async with locked_async(lock, remove=True):
        failed = _read(record)
        if failed is not None and seen is not None and failed["attempt"] == seen["attempt"]:
            failed = None
        if failed is not None and failed.get("how") != how:
            log.debug("%s: the pull waited for failed, made otherwise: trying", what)
            failed = None
        attempt = Attempt(failed)
        async with _recording(record, tmp, how, attempt):
            yield attempt


@contextlib.asynccontextmanager
async def _recording(record: Path, tmp: Path, how: str, attempt: Attempt) -> AsyncIterator[None]:
    """Run the block as one attempt: its failure recorded at ``record``, its success clears it."""
    try:
        yield
    except BaseException as error:
        known = _known(error)
        if known is not None and error is not attempt.passed:
            _write(record, tmp, known, how)
        raise
    with contextlib.suppress(FileNotFoundError):
        record.unlink()


def _known(error: BaseException) -> LazyfsError | OSError | None:
    """The error of ``error`` to record: itself if a LazyfsError or OSError; for a group
    (a nursery's: a full disk under a layer's copy) of only those, its first, as the CLI
    prints it (``lazyfs.cli_run.failure_line``); None for any other (a cancellation)."""
    if isinstance(error, (LazyfsError, OSError)):
        return error
    if not isinstance(error, BaseExceptionGroup):
        return None
    leaves = [_known(each) for each in error.exceptions]
    if not leaves or None in leaves:
        return None
    return leaves[0]


def _write(record: Path, tmp: Path, error: LazyfsError | OSError, how: str) -> None:
    """Record ``error``; a record that cannot be written (a full disk) is only logged."""
    facts: dict[str, Any] = {
        "attempt": f"{os.getpid()}-{uuid.uuid4().hex}",
        "began": time.time(),
        "how": how,
        "kind": _kind(error),
        "line": _line(error),
    }
    if isinstance(error, LazyfsError):
        facts["image"] = error.image
        facts["url"] = getattr(error, "url", None)
        facts["status"] = getattr(error, "status", None)
    else:
        facts["errno"] = error.errno
    try:
        write_atomic(record, json.dumps(facts).encode(), mode=0o600, temp_dir=tmp,
                     prefix=temp_prefix(), durable=False)  # fmt: skip
    except OSError as failure:
        log.debug("the failure of the pull was not recorded for its waiters: %s", failure)


def _kind(error: LazyfsError | OSError) -> str:
    if isinstance(error, OSError):
        return "OSError"
    return next((name for name, kind in _KINDS.items() if isinstance(error, kind)), "LazyfsError")


def _line(error: LazyfsError | OSError) -> str:
    """The one line the CLI prints for ``error`` (``lazyfs.cli_run.failure_line``'s)."""
    if isinstance(error, LazyfsError):
        return str(error)
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


def _read(record: Path) -> dict[str, Any] | None:
    """The failure recorded at ``record``; None for none, or one that cannot be read."""
    try:
        facts = json.loads(record.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or not all(
        isinstance(facts.get(k), str) for k in ("attempt", "kind", "line")
    ):
        return None
    return facts


# The errors given back as of their kind (a subclass as its base here; status, url and
# image kept), for the code that tells them apart above the pull (an unauthorized pull's
# hint); any other LazyfsError as one of the same line: the CLI's line and status are those.
_KINDS: dict[str, type[LazyfsError]] = {
    "NotFound": NotFound,
    "Unauthorized": Unauthorized,
    "TemporaryFailure": TemporaryFailure,
    "BadImage": BadImage,
    "BackendError": BackendError,
}


def _error(facts: dict[str, Any]) -> LazyfsError | OSError:
    """The error of the failure ``facts`` record, as the holder raised it."""
    line = str(facts["line"])
    kind = facts["kind"]
    if kind == "OSError" and isinstance(facts.get("errno"), int):
        return OSError(facts["errno"], line)
    image = facts.get("image") if isinstance(facts.get("image"), str) else None
    url = facts.get("url") if isinstance(facts.get("url"), str) else None
    status = facts.get("status") if isinstance(facts.get("status"), int) else None
    if kind == "NotFound":
        return NotFound(line, url=url, image=image)
    if kind == "Unauthorized":
        return Unauthorized(line, url=url, status=status, image=image)
    if kind == "TemporaryFailure":
        return TemporaryFailure(line, url=url, status=status, image=image)
    return _KINDS.get(kind, LazyfsError)(line, image=image)
