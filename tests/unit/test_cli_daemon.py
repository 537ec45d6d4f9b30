"""``lazyfs daemon``'s flags, and how a command hands its flags to a daemon it starts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from lazyfs.cache.spawn import ensure_daemon
from lazyfs.cli import build_parser
from lazyfs.cli_daemon import anchor_paths, cache_dir, cache_size, daemon_spec
from lazyfs.cli_flags import global_flags
from lazyfs.cli_registry import registry_options
from lazyfs.fs.mount import RemoteOrigin, layer_arg, parse_layer_args
from providers.digest import Digest
from providers.manifest import ImageManifest, Layer
from tests.support.cache_daemons import kill_recorded, recorded_daemon

CONFIG = '{"auths": {"r.example": {"username": "u", "password": "secret-pw"}}}'


def parse(*argv: str, env: dict[str, str] | None = None) -> argparse.Namespace:
    return build_parser(env or {}).parse_args([*argv, "daemon"])


@pytest.mark.parametrize(
    ("text", "size"),
    [("10GB", 10 << 30), ("512MB", 512 << 20), ("1.5kb", 1536), ("4096", 4096), ("7B", 7)],
)
def test_cache_size_counts_as_mesos_does(text: str, size: int) -> None:
    assert cache_size(parse("--cache_size", text)) == size


@pytest.mark.parametrize("text", ["0", "ten", "-1GB", "1PB", "", "0.5"])
def test_a_bad_cache_size_names_its_flag(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A usage error as parsed, status 2: the one check (cache_size takes what it lets by).
    with pytest.raises(SystemExit) as refused:
        parse(env={"LAZYFS_CACHE_SIZE": text})
    assert refused.value.code == 2
    assert capsys.readouterr().err.startswith(f"lazyfs: LAZYFS_CACHE_SIZE={text!r}: want bytes")
    with pytest.raises(SystemExit) as refused:
        parse(f"--cache_size={text}")  # with =: -1GB is no option
    assert refused.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith("lazyfs: argument --cache_size/--cache-size: ")
    assert f"{text!r}: want bytes, e.g. 10GiB (" in said


def test_the_default_cache_is_under_the_work_dir_and_absolute(tmp_path: Path) -> None:
    args = parse("--work_dir", "relative/work")
    assert cache_dir(args) == Path("relative/work/cache").absolute()
    assert cache_size(args) == 10 << 30


def test_a_started_daemon_gets_the_flags_in_its_environment_not_its_command_line() -> None:
    args = parse(
        "--work_dir", "w", "--docker_config", CONFIG, "--docker_registry_timeout", "7",
        "--cache_size", "1GB",
    )  # fmt: skip
    spec = daemon_spec(args)
    assert spec.command[1:5] == ("-P", "-m", "lazyfs", "daemon")
    # It goes when nothing has used it for an hour, or a minute if nothing ever connected.
    assert spec.command[5:] == ("--idle_exit", "3600", "--first_idle", "60")
    assert not any("secret" in part for part in spec.command)
    assert spec.env["LAZYFS_DOCKER_CONFIG"] == CONFIG
    assert spec.env["LAZYFS_DOCKER_REGISTRY_TIMEOUT"] == "7.0"
    assert spec.env["LAZYFS_WORK_DIR"] == str(Path("w").absolute())
    assert spec.env["LAZYFS_CACHE_DIR"] == str(Path("w/cache").absolute())
    assert spec.env["LAZYFS_CACHE_SIZE"] == str(1 << 30)
    assert "LAZYFS_PLATFORM" not in spec.env  # a flag left at its default stays out
    # What it is given reads back as the same settings.
    again = build_parser(dict(spec.env)).parse_args(["daemon"])
    assert (cache_dir(again), cache_size(again)) == (spec.cache_dir, 1 << 30)


# Every flag whose value is checked as parsed, at a value other than its default.
CHECKED = (
    "--docker_registry_timeout", "2.5", "--docker_registry_min_speed", "0",
    "--docker_registry_min_speed_time", "1e-3", "--docker_registry_blob_timeout", "600",
    "--cache_size", "1.5kb", "--platform", "linux/arm", "--max_layer_size", "7GiB",
    "--max_layer_ratio", "7", "--image_providers", "APPC,docker",
    "--image_provisioner_backend", "copy", "--debug",
)  # fmt: skip


def test_a_started_daemon_reads_every_checked_flag_back_through_the_parsers_checks() -> None:
    args = parse("--work_dir", "w", *CHECKED)
    spec = daemon_spec(args)
    again = build_parser(dict(spec.env)).parse_args(["daemon"])
    for flag in global_flags(()):
        if flag.name not in ("work_dir", "cache_dir", "cache_size"):  # made absolute, bytes
            assert getattr(again, flag.name) == getattr(args, flag.name), flag.name
    assert cache_size(again) == cache_size(args) == 1536
    assert registry_options(again).http == registry_options(args).http
    # Taken from its environment, so through Flag.value and its check, as a user's would be.
    given = {word.removeprefix("--") for word in CHECKED if word.startswith("--")}
    assert given <= set(again.flag_sources)


@pytest.mark.parametrize(
    ("variable", "bad"),
    [
        ("LAZYFS_DOCKER_REGISTRY_TIMEOUT", "0"),
        ("LAZYFS_DOCKER_REGISTRY_MIN_SPEED", "-1"),
        ("LAZYFS_DOCKER_REGISTRY_MIN_SPEED_TIME", "nan"),
        ("LAZYFS_DOCKER_REGISTRY_BLOB_TIMEOUT", "inf"),
        ("LAZYFS_CACHE_SIZE", "0"),
        ("LAZYFS_PLATFORM", "linux"),
        ("LAZYFS_MAX_LAYER_RATIO", "0"),
    ],
)
def test_a_bad_value_in_a_started_daemons_environment_is_a_usage_error(
    variable: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # What daemon_spec writes is checked where the daemon parses it, as the caller's was.
    spec = daemon_spec(parse("--work_dir", "w", *CHECKED))
    assert variable in spec.env
    with pytest.raises(SystemExit) as refused:
        build_parser({**spec.env, variable: bad}).parse_args(["daemon"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.startswith(f"lazyfs: {variable}={bad!r}: ")


LAYER = Layer(
    Digest("sha256:" + "ab" * 32),
    "application/vnd.oci.image.layer.v1.tar+gzip",
    1234,
    Digest("sha256:" + "cd" * 32),
    (("containerd.io/snapshot/stargz/toc.digest", "sha256:" + "ef" * 32),),
)


def test_a_remote_layer_reaches_the_mount_process_with_its_origin_and_annotations() -> None:
    origin = RemoteOrigin("127.0.0.1:5000", "lazyfs/rich")
    assert parse_layer_args(layer_arg(LAYER, origin)) == (LAYER, origin)
    assert parse_layer_args(layer_arg(LAYER)) == (LAYER, None)


def test_stored_manifests_keep_annotations_and_records_without_them_are_unchanged() -> None:
    plain = Layer(LAYER.digest, LAYER.media_type, LAYER.size, LAYER.diff_id)
    for layers in ((LAYER,), (plain,)):
        manifest = ImageManifest("r/x:1", Digest("sha256:" + "01" * 32), layers)
        text = json.dumps(manifest.to_json())
        assert ImageManifest.from_json(json.loads(text)) == manifest
        assert ("annotations" in text) == bool(layers[0].annotations)


def test_a_switch_turned_off_on_the_command_line_stays_off_in_the_daemon() -> None:
    # The daemon's environment is the caller's with the spec's over it.
    args = build_parser({"LAZYFS_NO_BACKGROUND_FETCH": "1", "LAZYFS_DEBUG": "1"}).parse_args(
        ["--no-no_background_fetch", "--no-debug", "daemon"]
    )
    spec = daemon_spec(args)
    assert spec.env["LAZYFS_NO_BACKGROUND_FETCH"] == "0" and spec.env["LAZYFS_DEBUG"] == "0"
    inherited = {"LAZYFS_NO_BACKGROUND_FETCH": "1", "LAZYFS_DEBUG": "1", **spec.env}
    again = build_parser(inherited).parse_args(["daemon"])
    assert again.no_background_fetch is False and again.debug is False


def test_a_started_daemon_imports_nothing_from_the_callers_directory(tmp_path: Path) -> None:
    # Root running `lazyfs provision` from a directory another user can write
    # must not run that user's `lazyfs` package in the daemon it starts.
    planted = tmp_path / "lazyfs"
    planted.mkdir()
    marker = tmp_path / "ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "__main__.py").write_text("")
    spec = daemon_spec(parse("--work_dir", str(tmp_path / "work")))
    command = [*spec.command, "--help"]  # the daemon's interpreter and module, not its loop
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: lazyfs" in done.stdout
    assert not marker.exists()


def test_relative_paths_among_the_flags_are_anchored_and_the_rest_kept(tmp_path: Path) -> None:
    args = parse("--work_dir", "w", "--docker_registry", "images", "--docker_config", CONFIG,
                 "--docker_registry_ca_file", "data:2024/ca.pem", "--image_gc_config",
                 "file://gc.json", "--appc_simple_discovery_uri_prefix", "aci/",
                 "--docker_store_dir", "")  # fmt: skip
    anchor_paths(args)
    here = Path.cwd()
    assert (args.work_dir, args.docker_registry) == (str(here / "w"), str(here / "images"))
    assert args.docker_registry_ca_file == str(here / "data:2024" / "ca.pem")
    assert args.docker_config == CONFIG and args.image_gc_config == f"file://{here}/gc.json"
    assert args.appc_simple_discovery_uri_prefix == f"{here}/aci/"
    assert args.docker_store_dir == ""
    url = parse("--docker_registry", "http://127.0.0.1:5000")
    anchor_paths(url)
    assert url.docker_registry == "http://127.0.0.1:5000"


def test_a_started_daemon_runs_in_the_root_and_reads_relative_flags_from_its_starter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It outlives its starter: in the starter's directory, it kept whatever filesystem
    # held that directory busy. A relative flag still means what it meant there.
    (tmp_path / "ca.pem").write_text("")
    monkeypatch.chdir(tmp_path)
    spec = daemon_spec(parse("--work_dir", "work", "--docker_registry_ca_file", "ca.pem"))
    try:
        ensure_daemon(spec)
        pid = recorded_daemon(tmp_path / "work" / "cache")
        assert pid is not None
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
    finally:
        kill_recorded(tmp_path / "work" / "cache")


def test_a_started_daemons_relative_paths_are_from_where_the_command_ran(tmp_path: Path) -> None:
    # A mount may start it again later, from another directory (its own runs in /).
    args = parse("--work_dir", "w", "--docker_config", "auth.json", "--docker_registry", "imgs")
    spec = daemon_spec(args)
    assert spec.env["LAZYFS_DOCKER_CONFIG"] == os.path.join(os.getcwd(), "auth.json")
    assert spec.env["LAZYFS_DOCKER_REGISTRY"] == os.path.join(os.getcwd(), "imgs")
    inline = daemon_spec(parse("--work_dir", "w", "--docker_config", CONFIG))
    assert inline.env["LAZYFS_DOCKER_CONFIG"] == CONFIG  # JSON, not a path
