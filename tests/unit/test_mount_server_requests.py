"""The mount server serves only well-formed mount requests (``lazyfs.fs.mount_server._check``).

What the arguments mean is the mount process's to parse, as when exec'd; the
server checks their shape, keeps ``--ready-fd`` its own, and takes exactly
three descriptors.
"""

from __future__ import annotations

from typing import Any

import pytest

from lazyfs.fs import mount_server_client as server_client
from lazyfs.fs.mount_server import Refused, _check
from lazyfs.fs.mount_server_child import MountRequest

GOOD: dict[str, Any] = {
    "op": "mount",
    "key": "k",
    "args": ["--mountpoint", "/m", "--store", "/s"],
    "env": {"PATH": "/usr/bin", "EMPTY": ""},
    "umask": 0o022,
    "limits": {"fsize": [1 << 20, -1], "nofile": [1024, 4096]},
}
FDS = [10, 11, 12]


def test_a_well_formed_request_is_taken_as_sent() -> None:
    assert _check(dict(GOOD), FDS) == MountRequest(GOOD["args"], GOOD["env"], 0o022, GOOD["limits"])


@pytest.mark.parametrize(
    ("change", "fds", "why"),
    [
        ({"op": "exec"}, FDS, "unknown request"),
        ({}, FDS[:2], "2 descriptors"),
        ({}, [*FDS, 13], "4 descriptors"),
        ({"args": "--mountpoint /m"}, FDS, "not a list of strings"),
        ({"args": ["--mountpoint", 7]}, FDS, "not a list of strings"),
        ({"args": ["--mountpoint", "/m\0/etc"]}, FDS, "not a list of strings"),
        ({"args": ["--ready-fd", "0"]}, FDS, "--ready-fd is the server's"),
        ({"args": ["--ready-fd=0"]}, FDS, "--ready-fd is the server's"),
        ({"env": [["PATH", "/bin"]]}, FDS, "not strings"),
        ({"env": {"PATH": 1}}, FDS, "not strings"),
        ({"env": {"A=B": "c"}}, FDS, "without a name"),
        ({"env": {"": "c"}}, FDS, "without a name"),
        ({"umask": "022"}, FDS, "no umask"),
        ({"umask": 0o1000}, FDS, "no umask"),
        ({"umask": -1}, FDS, "no umask"),
        ({"limits": None}, FDS, "no resource limits"),
        ({"limits": {"fsize": [1, 2, 3]}}, FDS, "no resource limits"),
        ({"limits": {"fsize": [1, -2]}}, FDS, "no resource limits"),
        ({"limits": {"fsize": [1.0, 2]}}, FDS, "no resource limits"),
        ({"limits": {"fsize": [True, 2]}}, FDS, "no resource limits"),
        ({"limits": {"ofile": [1, 2]}}, FDS, "no resource limits"),
        ({"limits": {"fsize": [1 << 63, -1]}}, FDS, "no resource limits"),
    ],
)
def test_a_malformed_request_is_refused_with_its_reason(
    change: dict[str, Any], fds: list[int], why: str
) -> None:
    with pytest.raises(Refused, match=why):
        _check({**GOOD, **change}, fds)


def test_the_choice_of_path_reads_the_environment() -> None:
    assert server_client.wanted({}) is None
    assert server_client.wanted({server_client.ENV: "0"}) is False
    assert server_client.wanted({server_client.ENV: "1"}) is True
    assert server_client.wanted({server_client.ENV: "yes"}) is None


def test_the_code_key_names_this_code_and_changes_with_the_import_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = server_client.code_key()
    assert key == server_client.code_key()
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert server_client.code_key() != key
