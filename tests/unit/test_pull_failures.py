"""``pull_lock``: a pull's failure is passed on to the pulls that waited for it, once.

Two holders in one process exclude each other as two processes do (each
takes its own flock on the lock file).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio
import trio.testing

from lazyfs.store.lock_sweep import sweep_locks
from lazyfs.store.pull_failures import pull_lock
from providers.errors import NotFound, Unauthorized

NAME = "image-abc"


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    locks, tmp = tmp_path / "locks", tmp_path / "tmp"
    locks.mkdir()
    tmp.mkdir()
    return locks, tmp


async def _waiter_after(
    locks: Path, tmp: Path, holder_error: Exception | None, *, cancel: bool = False
) -> tuple[list[str], BaseException | None]:
    """A holder that ends with ``holder_error`` (None: succeeds; ``cancel``: is cancelled)
    while a second pull waits; what each ran, and what the second one raised."""
    ran: list[str] = []
    raised: list[BaseException] = []
    release = trio.Event()
    scope = trio.CancelScope()

    async def holder() -> None:
        with scope, contextlib.suppress(NotFound, Unauthorized):
            async with pull_lock(locks, NAME, tmp, "rich"):
                ran.append("holder")
                await release.wait()
                if holder_error is not None:
                    raise holder_error

    async def waiter() -> None:
        try:
            async with pull_lock(locks, NAME, tmp, "rich"):
                ran.append("waiter")
        except Exception as error:
            raised.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()  # it waits for the lock now
        if cancel:
            scope.cancel()
        else:
            release.set()
    return ran, raised[0] if raised else None


async def test_a_pull_that_waited_fails_with_the_holders_error_without_trying(
    tmp_path: Path,
) -> None:
    locks, tmp = _dirs(tmp_path)
    error = Unauthorized("rich: unauthorized: no", url="http://r/v2/", status=401)
    ran, raised = await _waiter_after(locks, tmp, error)
    assert ran == ["holder"]
    assert isinstance(raised, Unauthorized)
    assert (str(raised), raised.url, raised.status) == (str(error), error.url, 401)


async def test_after_a_holder_that_succeeds_the_waiter_runs_and_no_record_stays(
    tmp_path: Path,
) -> None:
    locks, tmp = _dirs(tmp_path)
    await _waiter_after(locks, tmp, NotFound("rich: not found"))  # recorded
    ran, raised = await _waiter_after(locks, tmp, None)
    assert (ran, raised) == (["holder", "waiter"], None)
    assert not list(locks.glob("*.failed"))


async def test_a_pull_that_did_not_wait_tries_afresh_and_its_success_clears_the_record(
    tmp_path: Path,
) -> None:
    locks, tmp = _dirs(tmp_path)
    await _waiter_after(locks, tmp, NotFound("rich: not found"))
    assert list(locks.glob("*.failed"))
    ran = []
    async with pull_lock(locks, NAME, tmp, "rich"):
        ran.append("afresh")
    assert ran == ["afresh"]
    assert not list(locks.glob("*.failed"))


async def test_a_cancelled_holder_records_nothing_and_the_waiter_tries(tmp_path: Path) -> None:
    locks, tmp = _dirs(tmp_path)
    ran, raised = await _waiter_after(locks, tmp, NotFound("rich: not found"), cancel=True)
    assert (ran, raised) == (["holder", "waiter"], None)


def test_a_record_whose_lock_is_free_is_swept(tmp_path: Path) -> None:
    locks, tmp = _dirs(tmp_path)
    trio.run(_waiter_after, locks, tmp, NotFound("rich: not found"))
    assert list(locks.glob("*.failed"))
    sweep_locks(locks)
    assert not list(locks.iterdir())
