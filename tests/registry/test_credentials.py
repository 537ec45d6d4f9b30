"""Credentials as Docker and podman find them, against a registry with htpasswd:
the default config files in order, ``credHelpers`` and ``credsStore`` through a
``docker-credential-*`` helper the test writes, and what a refusal says."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import one_line_error
from tests.support.registry_seed import PASSWORD, USER
from tests.support.registry_servers import Registry

pytestmark = pytest.mark.integration

HELPER = """#!/bin/sh
# A docker-credential helper: answers for one server, logs what it was asked.
server=$(cat)
printf '%s %s\\n' "$1" "$server" >> "{log}"
if [ "$1" = get ] && [ "$server" = "{server}" ]; then
    printf '{{"ServerURL": "%s", "Username": "{user}", "Secret": "{secret}"}}' "$server"
    exit 0
fi
echo "credentials not found in native keychain"
exit 1
"""


def auths(host: str, password: str = PASSWORD) -> dict[str, object]:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return {"auths": {f"http://{host}": {"auth": auth}}}


class Env:
    """A clean environment for ``lazyfs``: its own HOME, PATH with a helper dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.bin = root / "bin"
        self.home.mkdir()
        self.bin.mkdir()
        self.vars = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LAZYFS_") and k not in ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")
        }
        self.vars["HOME"] = str(self.home)
        self.vars["PATH"] = f"{self.bin}:{os.environ['PATH']}"

    def write(self, path: Path, doc: dict[str, object]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        return path

    def helper(self, name: str, server: str, secret: str = PASSWORD) -> Path:
        """``docker-credential-NAME`` answering for ``server``; returns its log."""
        log = self.root / f"{name}.log"
        script = self.bin / f"docker-credential-{name}"
        text = HELPER.format(log=log, server=server, user=USER, secret=secret)
        script.write_text(text)
        script.chmod(0o755)
        return log

    def pull(self, registry: Registry, *flags: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(self.root / "work")]
        argv += ["--docker_registry", registry.url, *flags, "pull", "rich:oci"]
        return subprocess.run(
            argv, capture_output=True, text=True, env=self.vars, timeout=120, check=False
        )


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def docker_config_dir(env: Env) -> Path:
    env.vars["DOCKER_CONFIG"] = str(env.root / "dockercfg")
    return env.root / "dockercfg" / "config.json"


def xdg_auth(env: Env) -> Path:
    env.vars["XDG_RUNTIME_DIR"] = str(env.root / "run")
    return env.root / "run" / "containers" / "auth.json"


@pytest.mark.parametrize(
    "where",
    [docker_config_dir, lambda env: env.home / ".docker" / "config.json", xdg_auth],
    ids=["DOCKER_CONFIG", "home", "XDG_RUNTIME_DIR"],
)
def test_credentials_from_each_default_config(
    basic_registry: Registry, env: Env, where: Callable[[Env], Path]
) -> None:
    env.write(where(env), auths(basic_registry.host))
    result = env.pull(basic_registry)
    assert result.returncode == 0, result.stderr


def test_the_first_config_with_credentials_for_the_host_wins(
    basic_registry: Registry, env: Env
) -> None:
    # DOCKER_CONFIG's has none for this host: ~/.docker's are used, not podman's wrong ones.
    env.write(docker_config_dir(env), auths("elsewhere.example"))
    env.write(env.home / ".docker" / "config.json", auths(basic_registry.host))
    env.write(xdg_auth(env), auths(basic_registry.host, password="wrong"))
    assert env.pull(basic_registry).returncode == 0
    # Reversed: the wrong ones come first and are refused.
    env.write(docker_config_dir(env), auths(basic_registry.host, password="wrong"))
    error = one_line_error(env.pull(basic_registry))
    assert "access denied: HTTP 401" in error
    assert str(env.root / "dockercfg" / "config.json") in error


@pytest.mark.parametrize("key", ["credHelpers", "credsStore"])
def test_a_credential_helper_is_asked(basic_registry: Registry, env: Env, key: str) -> None:
    log = env.helper("lazytest", basic_registry.host)
    helper: object = {basic_registry.host: "lazytest"} if key == "credHelpers" else "lazytest"
    # Inline auths beside a helper are not used for its hosts, as in Docker.
    doc = {**auths(basic_registry.host, password="wrong"), key: helper}
    env.write(env.home / ".docker" / "config.json", doc)
    result = env.pull(basic_registry)
    assert result.returncode == 0, result.stderr
    # Asked once for the host, however many requests the pull made.
    assert log.read_text().splitlines() == [f"get {basic_registry.host}"]
    assert PASSWORD not in result.stderr + result.stdout


def test_a_helper_without_credentials_means_anonymous(basic_registry: Registry, env: Env) -> None:
    log = env.helper("lazytest", "other.example")
    config = env.write(env.home / ".docker" / "config.json", {"credsStore": "lazytest"})
    error = one_line_error(env.pull(basic_registry))
    assert log.read_text().splitlines() == [f"get {basic_registry.host}"]
    assert "access denied: HTTP 401" in error
    assert f"lazyfs read {config}" in error
    assert "pass credentials with --docker_config FILE" in error


def test_a_refusal_without_any_config_says_where_it_looked(
    basic_registry: Registry, env: Env
) -> None:
    xdg_auth(env)
    error = one_line_error(env.pull(basic_registry))
    assert "found no Docker config (looked for " in error
    assert str(env.home / ".docker" / "config.json") in error
    assert str(env.root / "run" / "containers" / "auth.json") in error
    assert "--docker_config FILE" in error


def test_a_refusal_with_the_flag_names_it(basic_registry: Registry, env: Env) -> None:
    wrong = json.dumps(auths(basic_registry.host, password="wrong-Pa55word"))
    result = env.pull(basic_registry, "--docker_config", wrong)
    error = one_line_error(result)
    assert "lazyfs read --docker_config" in error
    assert "wrong-Pa55word" not in result.stderr


def test_a_missing_helper_is_one_line_naming_it(basic_registry: Registry, env: Env) -> None:
    config = env.write(env.home / ".docker" / "config.json", {"credsStore": "nosuchhelper"})
    error = one_line_error(env.pull(basic_registry))
    assert f"{config}: credential helper docker-credential-nosuchhelper is not on PATH" in error


def test_the_flag_replaces_the_default_configs(basic_registry: Registry, env: Env) -> None:
    env.write(env.home / ".docker" / "config.json", auths(basic_registry.host))
    given = env.write(env.root / "given.json", auths(basic_registry.host, password="wrong"))
    assert env.pull(basic_registry, "--docker_config", str(given)).returncode == 1
