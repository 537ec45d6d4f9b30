"""providers.retry: backoff, the retry budget, the speed floor and cancellation."""

from __future__ import annotations

import errno
import socket
import threading

import pytest
import requests
import trio
import urllib3

from providers.retry import Backoff, Deadline, Retries, SpeedFloor, TooSlow, pause, short_cause


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("failure", "retry_after", "expected"),
    [
        (1, None, 0.25),
        (2, None, 0.5),
        (4, None, 2.0),
        (6, None, 4.0),  # capped
        (1, "3", 3.0),  # the registry asks for longer
        (1, "600", 4.0),  # but not past the cap
        (3, "0", 1.0),  # nor shorter than the backoff
        (1, "not a date", 0.25),
    ],
)
def test_backoff(failure: int, retry_after: str | None, expected: float) -> None:
    assert Backoff(0.25, 4.0).delay(failure, retry_after) == expected


def test_retries_stop_after_the_attempts() -> None:
    retries = Retries(3, Backoff(0.0, 0.0), Deadline(0))
    assert [retries.again("x") for _ in range(3)] == [True, True, False]


def test_progress_gives_the_attempts_back() -> None:
    retries = Retries(2, Backoff(0.0, 0.0), Deadline(0))
    assert retries.again("x")
    retries.progressed()
    assert retries.again("x")
    assert not retries.again("x")


def test_retries_stop_rather_than_wait_past_the_deadline() -> None:
    retries = Retries(5, Backoff(3600.0, 3600.0), Deadline(60))
    assert retries.next_delay() is None


@pytest.mark.parametrize(
    ("arrivals", "refused_at"),
    [
        # (seconds since the start, bytes) as they arrive; floor 100 B/s over 10 s
        ([(1, 500), (5, 500), (10, 0), (15, 600), (20, 500)], None),
        ([(9, 999), (10, 0)], 1),  # one byte short of the window's 1000
        ([(1, 5000), (10, 0), (19, 100), (20, 0)], 3),  # a good window earns no credit
        ([(30, 1)], 0),  # a silence longer than the window, then a byte
        ([(3, 1), (6, 1), (9, 1), (12, 1)], 3),  # a trickle
    ],
)
def test_speed_floor(arrivals: list[tuple[float, int]], refused_at: int | None) -> None:
    clock = Clock()
    floor = SpeedFloor(100, 10.0, clock)
    for i, (at, count) in enumerate(arrivals):
        clock.now = at
        if i == refused_at:
            with pytest.raises(TooSlow, match=r"^registry sent less than 100 bytes/s for 10 s$"):
                floor.add(count)
            return
        floor.add(count)
    assert refused_at is None


def test_speed_floor_off() -> None:
    clock = Clock()
    floor = SpeedFloor(0, 10.0, clock)
    clock.now = 1000
    floor.add(0)


def test_a_restarted_floor_judges_from_the_restart() -> None:
    clock = Clock()
    floor = SpeedFloor(100, 10.0, clock)
    clock.now = 100
    floor.restart()
    clock.now = 109
    floor.add(1)  # would be refused had the window started at 0


async def test_a_pause_in_a_worker_thread_ends_when_its_task_is_cancelled() -> None:
    waiting = threading.Event()

    def wait_long() -> None:
        waiting.set()
        pause(3600)

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, wait_long)
            assert await trio.to_thread.run_sync(waiting.wait, 60)
            scope.cancel()
    assert scope.cancelled_caught


def test_a_pause_outside_trio_just_sleeps() -> None:
    pause(0.01)


def test_a_short_cause_is_the_os_error_alone() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    reason = urllib3.exceptions.NewConnectionError(
        None,  # type: ignore[arg-type]
        f"<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new "
        f"connection: {refused}",
    )
    error = requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/v2/", reason))  # type: ignore[arg-type]
    assert short_cause(error) == "Connection refused"
    # A name that did not resolve: its parenthesis goes with the OS error cut from it.
    unresolved = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    named = urllib3.exceptions.NameResolutionError("mirror.invalid", None, unresolved)  # type: ignore[arg-type]
    assert short_cause(named) == "Name or service not known"
