"""The global flags as Mesos writes them: provider casing, ``file://`` configs,
the discovery default, and every flag from a ``LAZYFS_*`` variable."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from backends.names import NAMES as BACKENDS
from lazyfs.cli import App, build_parser, main
from lazyfs.cli_flags import Flag, global_flags
from lazyfs.cli_registry import registry_options
from lazyfs.images.appc import AppcProvider
from lazyfs.images.spec import parse_image
from lazyfs.store.disk import Store
from providers.appc_store import discovery_location
from providers.digest import Digest
from providers.errors import NotFound, UsageError
from providers.manifest import OCI_LAYER_TAR, ImageManifest, Layer

FLAGS = global_flags(BACKENDS)


@pytest.fixture(autouse=True)
def no_lazyfs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever LAZYFS_* the test runner has, the tests here start without."""
    for name in list(os.environ):
        if name.startswith("LAZYFS_"):
            monkeypatch.delenv(name)


def parse(*argv: str, env: dict[str, str] | None = None) -> argparse.Namespace:
    return build_parser(environ=env or {}).parse_args([*argv, "images"])


# -- --image_providers ---------------------------------------------------------


@pytest.mark.parametrize("given", ["APPC,DOCKER", "Appc, Docker", "appc,docker"])
def test_providers_are_taken_in_any_case(tmp_path: Path, given: str) -> None:
    args = build_parser().parse_args(
        ["--work_dir", str(tmp_path), "--image_providers", given, "images"]
    )
    app = App(args)
    assert sorted(app.provisioner.providers) == ["appc", "docker"]
    assert app.docker is not None


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--image_providers", "DOCKER,OCI"], {}, "--image_providers"),
        ([], {"LAZYFS_IMAGE_PROVIDERS": "oci"}, "LAZYFS_IMAGE_PROVIDERS"),
    ],
)
def test_an_unknown_provider_is_refused_naming_where_it_came_from(
    argv: list[str], env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:  # a usage error, as parsed
        build_parser(environ=env).parse_args([*argv, "images"])
    assert refused.value.code == 2
    assert named in capsys.readouterr().err


# -- --docker_config -----------------------------------------------------------

CONFIG = {"auths": {"registry.example:5000": {"username": "ann", "password": "s3cret"}}}


@pytest.mark.parametrize("form", ["file://", "path", "inline"])
def test_docker_config_as_a_file_url_a_path_or_inline_json(tmp_path: Path, form: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    value = {"file://": f"file://{config}", "path": str(config), "inline": json.dumps(CONFIG)}
    args = build_parser().parse_args(["--docker_config", value[form], "images"])
    credentials = registry_options(args).http.credentials
    assert list(credentials) == ["registry.example:5000"]
    assert (credentials["registry.example:5000"].username,) == ("ann",)


def test_a_missing_file_url_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    args = build_parser().parse_args(["--docker_config", f"file://{missing}", "images"])
    with pytest.raises(
        UsageError, match=f"^--docker_config: cannot read {re.escape(str(missing))}: "
    ):
        registry_options(args)


def test_a_config_file_that_is_not_utf8_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_bytes(b'{"auths": {"r.example": {"auth": "\xff"}}}')  # was a traceback
    args = build_parser().parse_args(["--docker_config", str(config), "images"])
    with pytest.raises(UsageError, match=r"^--docker_config: not valid JSON$"):
        registry_options(args)


# -- --max_layer_size, --max_layer_ratio ----------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max_layer_size", "9" * 400),  # float() made it infinite: OverflowError
        ("--max_layer_ratio", "\u00b2"),  # isdigit() took it, int() did not
        ("--max_layer_ratio", "9" * 5000),  # past int()'s 4300 digits
        ("--max_layer_ratio", "0"),
    ],
)
def test_a_bad_layer_limit_is_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--work_dir", str(tmp_path), flag, value, "images"])
    assert refused.value.code == 2  # a usage error, as any command line that does not parse
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"lazyfs: argument {flag}/")


# -- --appc_simple_discovery_uri_prefix ----------------------------------------


def appc_prefix(tmp_path: Path, *flags: str) -> str:
    """The discovery prefix the Appc provider gets from these flags."""
    argv = ["--work_dir", str(tmp_path), "--image_providers", "appc", *flags, "images"]
    app = App(build_parser().parse_args(argv))
    provider = app.provisioner.providers["appc"]
    assert isinstance(provider, AppcProvider)
    return provider.discovery_prefix


def test_discovery_asks_http_by_default_as_mesos_does(tmp_path: Path) -> None:
    assert appc_prefix(tmp_path) == "http://"
    assert discovery_location("http://", "example.com/app", {}).startswith(
        "http://example.com/app-latest-linux-"
    )


def test_an_empty_discovery_prefix_means_the_store_only(tmp_path: Path) -> None:
    assert appc_prefix(tmp_path, "--appc_simple_discovery_uri_prefix", "") == ""
    argv = ["--work_dir", str(tmp_path), "--image_providers", "appc"]
    argv += ["--appc_simple_discovery_uri_prefix", "", "images"]
    app = App(build_parser().parse_args(argv))
    with pytest.raises(NotFound, match="no --appc_simple_discovery_uri_prefix is set"):
        trio.run(app.provisioner.fetch, parse_image("appc:example.com/app"))


# -- LAZYFS_* ------------------------------------------------------------------


# Values of the flags whose value is checked, not any string: as given and as taken.
CHECKED = {
    "image_providers": "appc",
    "image_provisioner_backend": "copy",
    "platform": "linux/arm64",
    "max_layer_size": "7GiB",
    "max_layer_ratio": "7",
    "cache_size": "7MiB",
}


def sample(kind: Callable[[str], Any], name: str = "") -> tuple[str, object]:
    """A value as the environment holds it, and as the flag takes it."""
    if name in CHECKED:
        return CHECKED[name], CHECKED[name]
    if kind is float:
        return "7.5", 7.5
    if kind is int:
        return "7", 7
    if kind is str:
        return "from-env", "from-env"
    return "true", True  # the switch, --debug


@pytest.mark.parametrize("flag", FLAGS, ids=lambda flag: flag.name)
def test_every_flag_comes_from_the_environment_and_the_command_line_wins(flag: Flag) -> None:
    name, env = flag.name, flag.env
    assert env == "LAZYFS_" + name.upper()
    text, value = sample(flag.kind, name)
    assert getattr(parse(), name) == flag.default
    from_env = parse(env={env: text})
    assert getattr(from_env, name) == value
    assert from_env.flag_sources == {name: env}
    if flag.switch:
        # A switch given on the command line is on, whatever the environment says.
        assert getattr(parse(f"--{name}", env={env: "false"}), name) is True
        assert getattr(parse(env={env: "false"}), name) is False
        return
    given = "9" if flag.kind in (int, float) else CHECKED.get(name, "from-argv")
    for spelling in {f"--{name}", f"--{name.replace('_', '-')}"}:
        from_argv = parse(spelling, given, env={env: text})
        assert getattr(from_argv, name) == flag.kind(given)
        assert from_argv.flag_sources == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LAZYFS_DOCKER_REGISTRY_TIMEOUT": "soon"},
            "LAZYFS_DOCKER_REGISTRY_TIMEOUT='soon': want a number",
        ),
        ({"LAZYFS_DEBUG": "maybe"}, "LAZYFS_DEBUG='maybe': want true or false"),
    ],
)
def test_a_bad_value_in_the_environment_names_the_variable(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:  # a usage error, as on the command line
        parse(env=env)
    assert refused.value.code == 2
    assert capsys.readouterr().err == f"lazyfs: {message} (see `lazyfs --help`)\n"


def test_a_refused_limit_names_the_variable_it_came_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse(env={"LAZYFS_DOCKER_REGISTRY_TIMEOUT": "0"})
    assert capsys.readouterr().err.startswith(
        "lazyfs: LAZYFS_DOCKER_REGISTRY_TIMEOUT='0': want more"
    )


def test_the_command_reads_its_own_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    # An image stored under that work dir: listing it shows the variable was read.
    layer = Layer(Digest("sha256:" + "a" * 64), OCI_LAYER_TAR, 10)
    stored = ImageManifest("example.org/from-env:1", Digest("sha256:" + "b" * 64), (layer,))
    Store(work / "store" / "docker").put_image(stored)
    monkeypatch.setenv("LAZYFS_WORK_DIR", str(work))
    monkeypatch.setenv("LAZYFS_IMAGE_PROVIDERS", "DOCKER")
    assert main(["images"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("REFERENCE")
    assert "example.org/from-env:1" in out
