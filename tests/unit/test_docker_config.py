"""providers.docker_config: where credentials are looked for, and helpers' answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from providers.docker_config import (
    CredentialChain,
    DockerConfig,
    _helper_answer,
    default_config_paths,
    load_docker_config,
)
from providers.errors import UsageError
from providers.registry_auth import Credentials


def test_default_paths_in_docker_then_podman_order() -> None:
    environ = {"DOCKER_CONFIG": "/d", "HOME": "/h", "XDG_RUNTIME_DIR": "/run/user/7"}
    assert default_config_paths(environ) == [
        Path("/d/config.json"),
        Path("/h/.docker/config.json"),
        Path("/run/user/7/containers/auth.json"),
    ]
    assert default_config_paths({"HOME": "/h"}) == [Path("/h/.docker/config.json")]


def test_helpers_are_keyed_by_normalized_host() -> None:
    doc = {"credHelpers": {"https://index.docker.io/v1/": "hub", "Reg.example:5000": "reg"}}
    config = load_docker_config(json.dumps(doc), "cfg")
    assert config.helper("docker.io") == "hub"
    assert config.helper("reg.example:5000") == "reg"
    assert config.helper("other.example") is None


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"credHelpers": ["x"]}, "credHelpers is not a map"),
        ({"credHelpers": {"h": ""}}, "credHelpers is not a map"),
        ({"credsStore": 3}, "credsStore is not a helper name"),
        # Run as docker-credential-NAME: these would name programs elsewhere.
        ({"credsStore": "/../../tmp/evil"}, "'/../../tmp/evil' is not a credential helper's"),
        ({"credHelpers": {"h": "x/../../y"}}, "'x/../../y' is not a credential helper's"),
        ({"credsStore": "-h"}, "'-h' is not a credential helper's"),
    ],
)
def test_bad_helper_entries_name_the_config(doc: dict[str, object], reason: str) -> None:
    with pytest.raises(UsageError, match=f"^cfg: {reason}"):
        load_docker_config(json.dumps(doc), "cfg")


def test_the_first_config_with_credentials_wins() -> None:
    first = DockerConfig("a", {"one": Credentials("u1", "p1")})
    second = DockerConfig("b", {"one": Credentials("u2", "p2"), "two": Credentials("u3", "p3")})
    chain = CredentialChain([first, second])
    assert chain.get("one") == Credentials("u1", "p1")
    assert chain.get("two") == Credentials("u3", "p3")
    assert chain.get("three") is None
    assert sorted(chain) == ["one", "two"]
    assert chain.describe() == "read a, b"


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        (b'{"ServerURL": "h", "Username": "u", "Secret": "s"}', Credentials("u", "s")),
        # An identity token is for Docker's own login flow: anonymous here.
        (b'{"ServerURL": "h", "Username": "<token>", "Secret": "s"}', None),
        (b'{"ServerURL": "h", "Username": "", "Secret": ""}', None),
    ],
)
def test_helper_answers(stdout: bytes, expected: Credentials | None) -> None:
    assert _helper_answer(stdout, "docker-credential-x", "cfg") == expected


@pytest.mark.parametrize(
    "stdout",
    [b"not json s3cret", b"[]", b'{"Username": "u", "Secret": 5}', b'{"Secret": "s3cret"}'],
)
def test_an_unusable_answer_is_one_line_without_its_content(stdout: bytes) -> None:
    with pytest.raises(UsageError) as caught:
        _helper_answer(stdout, "docker-credential-x", "cfg")
    assert str(caught.value) == "cfg: credential helper docker-credential-x answered no usable JSON"
