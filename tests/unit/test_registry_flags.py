"""The registry's time limits as flags: both spellings, defaults, refusals; and
``--docker_registry`` written as docker names a registry (HOST:PORT)."""

from __future__ import annotations

from pathlib import Path

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
        ("--docker_registry_timeout", "0", "want more than 0"),
        ("--docker_registry_timeout", "nan", "want more than 0"),
        ("--docker_registry_min_speed_time", "-1", "want more than 0"),
        ("--docker_registry_min_speed", "-5", "want 0 or more"),
        ("--docker_registry_min_speed", "1.5", "want a whole number"),
        ("--docker_registry_blob_timeout", "inf", "want 0 or more"),
    ],
)
def test_refused(flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    # As the value is parsed: a usage error (status 2), for every command; the
    # parser's is the one check (registry_options takes what it lets through).
    with pytest.raises(SystemExit) as refused:
        options(flag, value)
    assert refused.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith(f"lazyfs: argument {flag}/") and f"{value!r}: {expected} (" in said
    # From the environment too, as a daemon a command starts is given it (daemon_spec).
    variable = "LAZYFS_" + flag.removeprefix("--").upper()
    with pytest.raises(SystemExit) as refused:
        build_parser({variable: value}).parse_args(["images"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.startswith(f"lazyfs: {variable}={value!r}: {expected} (")


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1:5000", "localhost:5000", "registry.example.com:443", "[::1]:5000", "reg:5000/"],
)
def test_a_registry_as_host_port_is_refused_with_the_url_to_write(value: str) -> None:
    with pytest.raises(UsageError) as refused:
        options("--docker_registry", value)
    assert str(refused.value) == (
        f"--docker_registry {value}: a registry is a URL: give https://{value} "
        f"(or http://{value} for a plain-HTTP registry)"
    )


def test_an_existing_directory_named_like_host_port_is_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As it always was: a relative directory (one with a scheme-like name,
    # localhost:5000, never was: ./localhost:5000 is).
    (tmp_path / "127.0.0.1:5000").mkdir()
    monkeypatch.chdir(tmp_path)
    assert (
        registry_options(
            build_parser().parse_args(["--docker_registry", "127.0.0.1:5000", "images"])
        ).registry
        == "127.0.0.1:5000"
    )
