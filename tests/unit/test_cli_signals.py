"""The CLI's trio runner: SIGTERM and SIGHUP cancel the command (its clean-up runs)."""

from __future__ import annotations

import os
import signal

import pytest
import trio
import trio.testing

from lazyfs.cli_run import Stopped, run_trio


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_cancels_the_work_and_its_clean_up_runs(signum: int) -> None:
    cleaned: list[bool] = []

    async def work() -> None:
        try:
            os.kill(os.getpid(), signum)
            await trio.sleep_forever()
        finally:
            cleaned.append(True)

    with pytest.raises(Stopped) as caught:
        run_trio(work)
    assert caught.value.signum == signum and str(caught.value) == signal.Signals(signum).name
    assert cleaned == [True]


def test_an_ignored_hangup_does_not_stop_the_work() -> None:
    async def work() -> str:
        os.kill(os.getpid(), signal.SIGHUP)
        # Every other task (a watcher, if there were one) has run and waits again.
        await trio.testing.wait_all_tasks_blocked()
        return "done"

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        assert run_trio(work) == "done"
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_an_error_inside_comes_out_as_itself() -> None:
    async def work() -> None:
        raise ValueError("the one cause")

    with pytest.raises(ValueError, match="the one cause"):
        run_trio(work)
