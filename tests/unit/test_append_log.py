"""Logs processes append to are renamed to ``<name>.1`` once past their cap as they are
opened: an older ``.1`` is replaced, a log under the cap is appended to, and one being
renamed by another process is appended to rather than lost."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import sys
from pathlib import Path

from lazyfs.cache.spawn import LOG_NAME, DaemonSpec, start_daemon
from providers.append_log import LOG_CAP, FollowedLog, open_log

CAP = 100


def _append(path: Path, data: bytes, cap: int = CAP) -> None:
    fd = open_log(path, cap)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_a_log_under_its_cap_is_appended_to(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    _append(log, b"one\n")
    _append(log, b"two\n")
    assert log.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert not (tmp_path / "x.log.1").exists()


def test_a_log_past_its_cap_is_renamed_and_begun_again(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    old = b"o" * (CAP + 1)
    log.write_bytes(old)
    _append(log, b"new\n")
    assert (tmp_path / "x.log.1").read_bytes() == old
    assert log.read_bytes() == b"new\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_an_older_rotated_log_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    (tmp_path / "x.log.1").write_bytes(b"oldest\n")
    _append(log, b"a" * (CAP + 1))  # under the cap when opened: appended
    _append(log, b"b\n")
    assert (tmp_path / "x.log.1").read_bytes() == b"a" * (CAP + 1)
    assert log.read_bytes() == b"b\n"


def test_a_log_another_process_renames_now_is_appended_to_not_lost(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(b"o" * (CAP + 1))
    # Another opener holds it to rename it: this one's lines go with it, to its .1.
    other = os.open(log, os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        _append(log, b"mine\n")
    finally:
        os.close(other)
    assert log.read_bytes() == b"o" * (CAP + 1) + b"mine\n"
    assert not (tmp_path / "x.log.1").exists()


def test_the_cache_daemons_log_past_its_cap_is_renamed_as_the_daemon_starts(
    tmp_path: Path,
) -> None:
    # The "daemon" says one line and exits: what is checked is where its line went.
    said = "print('the daemon started')"
    spec = DaemonSpec(tmp_path / "cache", (sys.executable, "-c", said), timeout=60.0)
    spec.cache_dir.mkdir(mode=0o700)
    log = spec.cache_dir / LOG_NAME
    old = b"an earlier line\n" * (LOG_CAP // 16 + 1)
    log.write_bytes(old)
    starting = start_daemon(spec)
    assert starting is not None
    starting.hand_over()  # returns once it exited (and was reaped)
    assert log.read_text() == "the daemon started\n"
    assert (spec.cache_dir / f"{LOG_NAME}.1").read_bytes() == old


def _followed(path: Path) -> tuple[logging.Logger, int]:
    """A logger writing through an fd to ``path`` that follows it (``FollowedLog``)."""
    fd = open_log(path, CAP)
    handler = logging.StreamHandler(open(fd, "w", closefd=False))  # noqa: SIM115
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(FollowedLog(path, CAP, fds=(fd,)))
    logger = logging.getLogger(f"followed-{path}")
    logger.propagate = False
    logger.handlers = [handler]
    return logger, fd


def test_a_long_lived_writer_renames_its_log_once_past_its_cap(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    logger, fd = _followed(log)
    try:
        logger.warning("a" * CAP)  # past the cap once written
        logger.warning("after")
    finally:
        os.close(fd)
    assert (tmp_path / "x.log.1").read_text() == "a" * CAP + "\n"
    assert log.read_text() == "after\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_long_lived_writer_follows_a_rename_another_process_made(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    logger, fd = _followed(log)
    try:
        logger.warning("before")
        os.write(fd, b"o" * CAP)  # another writer's lines, past the cap
        _append(log, b"other\n")  # another opener renames it and begins a new one
        logger.warning("after")
    finally:
        os.close(fd)
    assert (tmp_path / "x.log.1").read_bytes() == b"before\n" + b"o" * CAP
    assert log.read_text() == "other\nafter\n"
