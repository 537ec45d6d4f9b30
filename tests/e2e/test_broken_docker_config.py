"""A broken ``~/.docker/config.json`` stops no command that needs no registry, as
docker only warns about it; a ``--docker_config`` that is broken is refused,
since the user named it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs, one_line_error

BROKEN = {
    "not JSON": "{ this is not json",
    "auths of the wrong type": '{"auths": ["registry.example"]}',
    "credsStore of the wrong type": '{"credsStore": 7}',
}


def run(lazyfs: Lazyfs, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``lazyfs ARGS`` with HOME at ``home`` and no other place for a Docker config."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")}
    env = {k: v for k, v in env.items() if not k.startswith("LAZYFS_")}
    env["HOME"] = str(home)
    return subprocess.run(
        lazyfs.argv(*args), capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture(params=list(BROKEN), ids=list(BROKEN))
def broken_home(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(BROKEN[request.param])
    return home


def test_local_images_ignore_a_broken_default_config(lazyfs: Lazyfs, broken_home: Path) -> None:
    pulled = run(lazyfs, broken_home, "pull", "busybox:latest")
    assert pulled.returncode == 0, pulled.stderr
    # Never read, so not even warned about: no registry was asked.
    assert "config" not in pulled.stderr
    provisioned = run(lazyfs, broken_home, "provision", "--backend", "copy", "c1", "busybox:latest")
    assert provisioned.returncode == 0, provisioned.stderr
    assert "config" not in provisioned.stderr
    assert run(lazyfs, broken_home, "destroy", "c1").returncode == 0
    ran = run(lazyfs, broken_home, "run", "--backend", "copy", "busybox:latest", "--", "true")
    assert ran.returncode == 0, ran.stderr


def test_a_broken_config_named_by_the_flag_is_refused(lazyfs: Lazyfs, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    named = tmp_path / "given.json"
    named.write_text(BROKEN["not JSON"])
    result = run(lazyfs, home, "--docker_config", str(named), "pull", "busybox:latest")
    assert one_line_error(result) == "lazyfs: --docker_config: not valid JSON"
