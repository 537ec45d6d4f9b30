"""``lazyfs run``'s destroy after a failure: it never hides why the command failed."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from lazyfs.cli_container import _destroy
from providers.errors import BadImage


class Provisioner:
    """A provisioner whose destroy fails, as it does on a file it may not remove."""

    async def destroy(self, container_id: str) -> bool:
        raise PermissionError(f"Operation not permitted: {container_id}/rootfs/etc/motd")


class App:
    provisioner = Provisioner()


def test_after_a_failure_a_failed_destroy_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _destroy(cast(Any, App()), "run-1", BadImage("the image's /etc/passwd is too large"))
    assert "container run-1 stays for recover: destroying it failed" in caplog.text


def test_without_one_a_failed_destroy_is_the_error() -> None:
    with pytest.raises(PermissionError, match="Operation not permitted"):
        _destroy(cast(Any, App()), "run-1", None)


def test_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lazyfs.cli_container"):
        _destroy(cast(Any, App()), "run-2", KeyboardInterrupt())
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
