"""A registry's refusal after a broken default Docker config was passed over names it,
as the warning did, instead of saying no config was found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.cli import build_parser
from lazyfs.cli_registry import registry_options, unauthorized_hint


def _hint(monkeypatch: pytest.MonkeyPatch, home: Path, runtime: Path) -> str:
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    args = build_parser().parse_args(["images"])
    credentials = registry_options(args).http.credentials
    assert credentials.get("registry.example") is None  # as a 401 asks first
    return unauthorized_hint(args, credentials)


def test_a_broken_config_alone_is_named_as_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / ".docker" / "config.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    hint = _hint(monkeypatch, tmp_path, tmp_path / "run")
    podman = tmp_path / "run" / "containers" / "auth.json"
    assert hint == (
        f"; lazyfs found no usable Docker config (looked for {broken}, {podman}); "
        f"skipped {broken}: not valid JSON; pass credentials with --docker_config FILE "
        "(a Docker config.json)"
    )


def test_a_broken_config_beside_a_read_one_is_named_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / ".docker" / "config.json"
    broken.parent.mkdir()
    broken.write_text("[]")
    podman = tmp_path / "run" / "containers" / "auth.json"
    podman.parent.mkdir(parents=True)
    podman.write_text(json.dumps({"auths": {}}))
    hint = _hint(monkeypatch, tmp_path, tmp_path / "run")
    assert hint.startswith(f"; lazyfs read {podman}; skipped {broken}: not a JSON object; pass")


def test_without_a_broken_config_nothing_is_said_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hint = _hint(monkeypatch, tmp_path, tmp_path / "run")
    assert hint.startswith("; lazyfs found no Docker config (looked for ")
    assert "skipped" not in hint
