"""The registry's time limits as flags: both spellings, defaults, refusals."""

from __future__ import annotations

import pytest

from lazyfs.cli import build_parser, registry_options
from providers.errors import UsageError
from providers.registry_http import HttpOptions


def options(*flags: str) -> HttpOptions:
    return registry_options(build_parser().parse_args([*flags, "images"])).http


def test_defaults_are_the_library_defaults() -> None:
    got, want = options(), HttpOptions()
    assert (got.timeout, got.min_speed, got.min_speed_time, got.blob_timeout) == (
        want.timeout,
        want.min_speed,
        want.min_speed_time,
        want.blob_timeout,
    )


def test_both_spellings() -> None:
    got = options(
        "--docker_registry_timeout", "2.5",
        "--docker-registry-min-speed", "0",
        "--docker-registry-min-speed-time", "4",
        "--docker_registry_blob_timeout", "600",
    )  # fmt: skip
    assert (got.timeout, got.min_speed, got.min_speed_time, got.blob_timeout) == (2.5, 0, 4, 600)


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--docker_registry_timeout", "0", "expected more than 0"),
        ("--docker_registry_timeout", "nan", "expected more than 0"),
        ("--docker_registry_min_speed_time", "-1", "expected more than 0"),
        ("--docker_registry_min_speed", "-5", "expected 0 or more"),
        ("--docker_registry_blob_timeout", "inf", "expected 0 or more"),
    ],
)
def test_refused(flag: str, value: str, expected: str) -> None:
    with pytest.raises(UsageError, match=f"^{flag} .*: {expected}$"):
        options(flag, value)
