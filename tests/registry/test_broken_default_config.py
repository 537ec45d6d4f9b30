"""A registry pull with a broken default Docker config warns once, in one line,
and goes on without credentials, as docker does: a registry that wants none
serves the image, one that wants some refuses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.registry_servers import Registry

pytestmark = pytest.mark.integration


def pull(registry: Registry, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``lazyfs pull rich:oci`` from ``registry`` with a broken ~/.docker/config.json."""
    config = tmp_path / "home" / ".docker" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text("{ this is not json")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")}
    env = {k: v for k, v in env.items() if not k.startswith("LAZYFS_")}
    env["HOME"] = str(tmp_path / "home")
    argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(tmp_path / "work")]
    argv += ["--docker_registry", registry.url, "pull", "rich:oci"]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def warning(tmp_path: Path) -> str:
    config = tmp_path / "home" / ".docker" / "config.json"
    return (
        f"lazyfs: WARNING: error loading config file {config}: not valid JSON; "
        "going on without its credentials"
    )


def test_a_registry_that_wants_no_credentials_serves_the_image(
    plain_registry: Registry, tmp_path: Path
) -> None:
    result = pull(plain_registry, tmp_path)
    assert result.returncode == 0, result.stderr
    # That registry never asked for credentials: the config was not read.
    assert result.stderr == ""


def test_a_broken_default_config_is_warned_about_once_and_passed_over(
    basic_registry: Registry, tmp_path: Path
) -> None:
    result = pull(basic_registry, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0] == warning(tmp_path)
    # Went on, anonymous: the registry's refusal, not the config, ends the pull.
    assert "access denied: HTTP 401" in lines[1]
