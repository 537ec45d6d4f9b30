"""Usage as the parser answers it: every ``(see `lazyfs help ...`)`` names help that
works, nested actions too; a missing IMAGE is the usage error any missing argument
is (status 2); and every option of a command has its dashed and underscored spelling."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cli import build_parser, main
from lazyfs.cli_parser import parse_command_line


@pytest.fixture(autouse=True)
def no_lazyfs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LAZYFS_"):
            monkeypatch.delenv(name)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every command and action parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


COMMAND_PARSERS = [p for p in _parsers(build_parser({})) if p.prog != "lazyfs"]


@pytest.mark.parametrize("parser", COMMAND_PARSERS, ids=lambda p: p.prog)
def test_the_help_a_usage_error_names_describes_the_command(
    parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parser.error("something is missing")
    assert refused.value.code == 2
    said = capsys.readouterr().err
    hint = said.split("(see `", 1)[1].split("`)", 1)[0]
    assert hint == f"lazyfs help {parser.prog.removeprefix('lazyfs ')}"
    assert main(hint.split()[1:]) == 0
    assert capsys.readouterr().out == parser.format_help()


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate' (choose from 'cache', 'daemon',"),
        (["images", "frob"], "invalid choice: 'frob' (choose from 'prune', 'rm')"),
        (["images", "rm", "x"], "`lazyfs images rm` has no action 'x'"),
        (["ps", "x"], "`lazyfs ps` has no action 'x'"),
    ],
)
def test_help_for_what_is_no_command_is_one_line(
    words: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["help", *words])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lazyfs: argument COMMAND: ") and err.count("\n") == 1, err
    assert said in err


@pytest.mark.parametrize(
    ("argv", "named", "command"),
    [
        (["run"], "image (or --image-file or --container-info)", "run"),
        (["run", "-e", "A=1", "--read-only"], "image (or --image-file or --container-info)", "run"),
        (["pull"], "image (or --image-file)", "pull"),
        (["pull", ""], "image (or --image-file)", "pull"),
        (["provision", "c1"], "image (or --image-file or --container-info)", "provision"),
        (["mount", "", "/mnt"], "image", "mount"),
        # Half a mount command line is no listing (`lazyfs mount` alone).
        (["mount", "busybox"], "mountpoint", "mount"),
        (["mount", "--writable"], "image, mountpoint", "mount"),
        (["mount", "--json", ""], "image, mountpoint", "mount"),
    ],
)
def test_a_missing_image_is_a_usage_error(
    tmp_path: Path,
    argv: list[str],
    named: str,
    command: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--work_dir", str(tmp_path / "work"), *argv])
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"lazyfs: the following arguments are required: {named} (see `lazyfs help {command}`)\n"
    )
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["pull", "--image-file", "f.json"],
        ["run", "--image_file", "f.json", "--", "true"],
        ["provision", "c1", "--container-info", "c.json"],
        ["run", "--container_info", "c.json"],
    ],
)
def test_an_image_named_otherwise_needs_no_image(argv: list[str]) -> None:
    parse_command_line(build_parser({}), argv)


def test_every_command_option_has_both_spellings() -> None:
    for parser in COMMAND_PARSERS:
        for action in parser._actions:
            spellings = {s for s in action.option_strings if s.startswith("--")}
            names = {s[2:].replace("-", "_") for s in spellings}
            for name in names:
                if "_" in name:
                    both = {f"--{name}", f"--{name.replace('_', '-')}"}
                    assert both <= spellings, f"{parser.prog}: {sorted(spellings)}"


def test_the_daemon_takes_its_seconds_with_dashes() -> None:
    args = parse_command_line(build_parser({}), ["daemon", "--idle-exit", "5", "--first-idle=1"])
    assert (args.idle_exit, args.first_idle) == (5.0, 1.0)
    args = parse_command_line(build_parser({}), ["daemon", "--idle_exit", "5", "--first_idle=1"])
    assert (args.idle_exit, args.first_idle) == (5.0, 1.0)
