"""A cache daemon a command started serves every later command: not under that command's
lowered resource limits (``providers.rlimits``), while one run as a service keeps the ones
its manager gave it."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from tests.support.cache_daemons import ROOT, daemon_argv, daemon_status, wait_for
from tests.support.processes import stop

pytestmark = pytest.mark.integration

LOWERED = {resource.RLIMIT_FSIZE: 1 << 20, resource.RLIMIT_CPU: 600}


def _lowered_soft_limits() -> None:
    for number, soft in LOWERED.items():
        resource.setrlimit(number, (soft, resource.getrlimit(number)[1]))


def _daemon_limits(tmp_path: Path, *flags: str) -> dict[int, tuple[int, int]]:
    """The limits of a ``lazyfs daemon`` with ``flags`` started under ``LOWERED`` soft limits."""
    cache = tmp_path / "cache"
    argv = [*daemon_argv(tmp_path / "work", cache), *flags]
    with open(tmp_path / "daemon.log", "wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_lowered_soft_limits
        )
    try:

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()
            return daemon_status(cache) is not None

        wait_for(up, "the cache daemon to answer")
        return {number: resource.prlimit(process.pid, number) for number in LOWERED}
    finally:
        stop(process)


def test_a_daemon_a_command_started_takes_the_machines_limits(tmp_path: Path) -> None:
    # Started under `ulimit -S -t 600`, it would have been killed after ten minutes
    # of CPU spent on every later command's reads.
    limits = _daemon_limits(tmp_path, "--idle_exit", "3600")  # as ``daemon_spec`` starts it
    for number in LOWERED:
        init = resource.prlimit(1, number)
        assert init[0] == resource.RLIM_INFINITY or init[0] > LOWERED[number]  # the premise
        assert limits[number] == init


def test_a_daemon_run_as_a_service_keeps_the_limits_it_was_given(tmp_path: Path) -> None:
    limits = _daemon_limits(tmp_path)
    assert {number: soft for number, (soft, _) in limits.items()} == LOWERED
