"""``pull_lock``: a pull's failure is passed on to the pulls that waited for it, once,
when made the same way and only when they would pull; and ``DockerProvider.fetch``'s use.

Two holders in one process exclude each other as two processes do (each
takes its own flock on the lock file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from lazyfs.cli_run import failure_line
from lazyfs.images.docker import DockerProvider
from lazyfs.images.spec import parse_image
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from lazyfs.store.lock_sweep import FAILED_KEPT, sweep_locks
from lazyfs.store.pull_failures import attempt_of, pull_lock
from providers.errors import NotFound, Unauthorized
from providers.manifest import ImageManifest
from providers.platforms import host_platform
from tests.support import hand_images

NAME = "image-abc"
HOW = attempt_of(lazy=False, cached=True, config="", source="https://r")


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    locks, tmp = tmp_path / "locks", tmp_path / "tmp"
    locks.mkdir()
    tmp.mkdir()
    return locks, tmp


async def _waiter_after(
    locks: Path,
    tmp: Path,
    holder_error: BaseException | None,
    *,
    cancel: bool = False,
    holder_how: str = HOW,
    waiter_how: str = HOW,
) -> tuple[list[str], BaseException | None]:
    """A holder that ends with ``holder_error`` (None: succeeds; ``cancel``: is cancelled)
    while a second pull waits; what each ran, and what the second one raised. Each
    made as its ``how`` says."""
    ran: list[str] = []
    raised: list[BaseException] = []
    release = trio.Event()
    scope = trio.CancelScope()

    async def holder() -> None:
        with scope, contextlib.suppress(NotFound, Unauthorized, OSError, ExceptionGroup):
            async with pull_lock(locks, NAME, tmp, "rich", holder_how):
                ran.append("holder")
                await release.wait()
                if holder_error is not None:
                    raise holder_error

    async def waiter() -> None:
        try:
            async with pull_lock(locks, NAME, tmp, "rich", waiter_how) as attempt:
                attempt.check_failed()
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
    async with pull_lock(locks, NAME, tmp, "rich", HOW) as attempt:
        attempt.check_failed()
        ran.append("afresh")
    assert ran == ["afresh"]
    assert not list(locks.glob("*.failed"))


async def test_a_cancelled_holder_records_nothing_and_the_waiter_tries(tmp_path: Path) -> None:
    locks, tmp = _dirs(tmp_path)
    ran, raised = await _waiter_after(locks, tmp, NotFound("rich: not found"), cancel=True)
    assert (ran, raised) == (["holder", "waiter"], None)


def test_a_record_whose_lock_is_free_is_swept_once_its_waiters_had_time_to_read_it(
    tmp_path: Path,
) -> None:
    locks, tmp = _dirs(tmp_path)
    trio.run(_waiter_after, locks, tmp, NotFound("rich: not found"))
    [record] = locks.glob("*.failed")
    # Fresh: a waiter may not yet have taken the lock its holder let go of.
    sweep_locks(locks)
    assert record.exists()
    facts = json.loads(record.read_bytes())
    facts["began"] = time.time() - FAILED_KEPT - 1
    record.write_text(json.dumps(facts))
    sweep_locks(locks)
    assert not list(locks.iterdir())


@pytest.mark.parametrize(
    "other",
    [
        {"config": '{"auths": {"r": {"auth": "b3duOmNyZWRz"}}}'},  # its own credentials
        {"lazy": True},  # a lazy start, which fetches no layer the whole pull failed on
        {"cached": False},  # ``lazyfs pull``, after a cached start failed
        {"source": "https://mirror"},
    ],
    ids=["credentials", "lazy", "uncached", "registry"],
)
async def test_a_pull_made_otherwise_than_the_one_it_waited_for_tries_itself(
    tmp_path: Path, other: dict[str, Any]
) -> None:
    locks, tmp = _dirs(tmp_path)
    made = {"lazy": False, "cached": True, "config": "", "source": "https://r"}
    error = Unauthorized("rich: unauthorized: no", url="http://r/v2/", status=401)
    theirs = attempt_of(**{**made, **other})
    ran, raised = await _waiter_after(locks, tmp, error, waiter_how=theirs)
    assert (ran, raised) == (["holder", "waiter"], None)
    # Made the same way (the same credentials of its own too), it fails at once.
    ran, raised = await _waiter_after(locks, tmp, error, holder_how=theirs, waiter_how=theirs)
    assert (ran, isinstance(raised, Unauthorized)) == (["holder"], True)


async def test_a_group_of_known_errors_is_passed_on_as_its_first(tmp_path: Path) -> None:
    # A full disk under a layer's copy ends a nursery: trio groups its error.
    locks, tmp = _dirs(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", "/store/tmp/x")
    group = ExceptionGroup("layers", [ExceptionGroup("inner", [full]), NotFound("gone")])
    ran, raised = await _waiter_after(locks, tmp, group)
    assert ran == ["holder"]
    assert isinstance(raised, OSError)
    assert raised.errno == errno.ENOSPC
    assert failure_line(raised) == ("No space left on device: /store/tmp/x", 1)


async def test_a_group_with_an_unknown_error_is_not_recorded(tmp_path: Path) -> None:
    locks, tmp = _dirs(tmp_path)
    group = ExceptionGroup("layers", [NotFound("gone"), ValueError("a bug")])
    ran, raised = await _waiter_after(locks, tmp, group)
    assert (ran, raised) == (["holder", "waiter"], None)


# DockerProvider.fetch, of an image in a registry directory.
REFERENCE = "docker.io/library/img:1"
HOST = str(host_platform())
KEY = "image-" + hashlib.sha256(f"{REFERENCE}\n{HOST}".encode()).hexdigest()


def _provider(tmp_path: Path) -> DockerProvider:
    images = tmp_path / "images"
    hand_images.oci_layout(images / "img:1", [hand_images.layer("hi", b"hi\n")], None, "1")
    return DockerProvider(Store(tmp_path / "store"), str(images))


async def _fetch_waiting(
    provider: DockerProvider,
    caplog: pytest.LogCaptureFixture,
    hold: Callable[[trio.Event, trio.Event], Awaitable[None]],
) -> ImageManifest | BaseException:
    """``hold(holding, release)`` takes img:1's pull lock and sets ``holding``, then
    holds it until ``release`` is set, once a cached ``fetch`` of img:1 waits for it;
    what that ``fetch`` returned or raised."""
    caplog.set_level(logging.DEBUG, logger="lazyfs.store.pull_failures")
    got: list[ImageManifest | BaseException] = []
    holding, release = trio.Event(), trio.Event()

    async def holder() -> None:
        with contextlib.suppress(Exception):
            await hold(holding, release)

    async def fetch() -> None:
        try:
            got.append(await provider.fetch(parse_image("img:1"), Progress(enabled=False)))
        except Exception as error:
            got.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await holding.wait()
        nursery.start_soon(fetch)
        while "waiting for its pull by another process" not in caplog.text:
            await trio.testing.wait_all_tasks_blocked()  # its look at the store, in a thread
            await trio.sleep(0)
        release.set()
    return got[0]


async def test_a_cached_fetch_finds_the_image_stored_while_it_waited_despite_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    provider = _provider(tmp_path)
    store = provider.store
    stored = await provider.fetch(parse_image("img:1"), Progress(enabled=False))
    record = store.image_record(REFERENCE, HOST)
    aside = record.with_name("aside")
    record.rename(aside)  # not stored as the fetch begins
    how = attempt_of(lazy=False, cached=True, config="", source=provider.registry)

    async def hold(holding: trio.Event, release: trio.Event) -> None:
        # Stands for a pull waited for that stored it, then another made the same way
        # that failed (a registry gone down meanwhile).
        async with pull_lock(store.locks, KEY, store.tmp, REFERENCE, how):
            holding.set()
            await release.wait()
            aside.rename(record)
            raise NotFound("img:1: the registry is gone")

    got = await _fetch_waiting(provider, caplog, hold)
    assert isinstance(got, ImageManifest), got
    assert got.digest == stored.digest


async def test_a_cached_fetch_that_waited_for_a_failed_lazyfs_pull_tries_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    provider = _provider(tmp_path)
    store = provider.store
    uncached = attempt_of(lazy=False, cached=False, config="", source=provider.registry)

    async def hold(holding: trio.Event, release: trio.Event) -> None:
        async with pull_lock(store.locks, KEY, store.tmp, REFERENCE, uncached):
            holding.set()
            await release.wait()
            raise NotFound("img:1: a layer blob is gone")

    got = await _fetch_waiting(provider, caplog, hold)
    assert isinstance(got, ImageManifest), got
    assert store.get_image(REFERENCE, HOST) is not None


async def test_a_fetch_that_waited_for_one_failing_on_a_full_disk_fails_with_it_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = _provider(tmp_path)
    store = provider.store
    copies: list[str] = []
    events: list[trio.Event] = []

    def full(*args: object, **kwargs: object) -> Path:
        """A layer's copy (in a thread) that finds the disk full, once let go."""
        copies.append("copy")
        holding, release = events
        trio.from_thread.run_sync(holding.set)
        trio.from_thread.run(release.wait)
        raise OSError(errno.ENOSPC, "No space left on device", str(store.tmp / "x"))

    monkeypatch.setattr(store, "ingest", full)

    async def hold(holding: trio.Event, release: trio.Event) -> None:
        # A fetch made as the waiting one is, whose copy of the layer fails.
        events.extend([holding, release])
        with pytest.raises(ExceptionGroup):
            await provider.fetch(parse_image("img:1"), Progress(enabled=False))

    got = await _fetch_waiting(provider, caplog, hold)
    assert copies == ["copy"]
    assert isinstance(got, OSError), got
    # The line the CLI prints, as the failing fetch's own would be.
    assert got.errno == errno.ENOSPC
    assert failure_line(got) == (f"No space left on device: {store.tmp / 'x'}", 1)
