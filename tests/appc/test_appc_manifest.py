"""The ACI manifest parser, table-driven."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.appc_manifest import parse_aci_manifest
from providers.appc_store import discovery_location, host_arch
from providers.errors import BadImage
from tests.support.acis import manifest_doc

GOOD_APP = {
    "exec": ["/bin/sh", "-c", "true"],
    "user": "0",
    "group": "0",
    "environment": [{"name": "PATH", "value": "/bin"}],
    "workingDirectory": "/tmp",
}


def test_a_full_manifest_gives_its_runtime_config() -> None:
    doc = manifest_doc(
        "example.com/app",
        app=GOOD_APP,
        dependencies=[
            {"imageName": "example.com/base", "labels": [{"name": "version", "value": "2"}]}
        ],
        path_whitelist=["/bin/sh"],
    )
    parsed = parse_aci_manifest(json.dumps(doc).encode())
    assert parsed.name == "example.com/app"
    assert parsed.label("version") == "latest"
    assert (parsed.config.entrypoint, parsed.config.cmd) == (("/bin/sh",), ("-c", "true"))
    assert parsed.config.env == ("PATH=/bin",)
    assert parsed.config.working_dir == "/tmp"
    assert parsed.config.user == "0:0"
    assert parsed.dependencies[0].name == "example.com/base"
    assert parsed.dependencies[0].labels == (("version", "2"),)
    assert parsed.path_whitelist == ("/bin/sh",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"acKind": "PodManifest"}, "acKind"),
        ({"acVersion": "one"}, "acVersion"),
        ({"name": "Example.com/App"}, "AC Identifier"),
        ({"name": ""}, "name"),
        ({"labels": [{"name": "Version", "value": "1"}]}, "AC Name"),
        ({"labels": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}, "twice"),
        ({"app": {**GOOD_APP, "exec": ["sh"]}}, "absolute"),
        ({"app": {**GOOD_APP, "exec": "sh"}}, "list"),
        ({"app": {k: v for k, v in GOOD_APP.items() if k != "user"}}, "app.user"),
        ({"app": {**GOOD_APP, "workingDirectory": "tmp"}}, "workingDirectory"),
        ({"app": {**GOOD_APP, "environment": [{"name": "A"}, {"name": "A"}]}}, "twice"),
        ({"dependencies": [{"imageName": "Bad"}]}, "dependency name"),
        ({"dependencies": [{"imageName": "ok", "imageID": "sha256-00"}]}, "image id"),
        ({"dependencies": [{"imageName": "ok", "size": -1}]}, "size"),
        ({"pathWhitelist": ["bin"]}, "pathWhitelist"),
        ({"dependencies": {}}, "not a list"),
    ],
)
def test_invalid_manifests_are_refused_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    doc = {**manifest_doc("example.com/app"), **change}
    with pytest.raises(BadImage, match=message):
        parse_aci_manifest(json.dumps(doc).encode())


def test_a_manifest_that_is_not_json_is_refused() -> None:
    with pytest.raises(BadImage, match="not valid JSON"):
        parse_aci_manifest(b"{nope")


@pytest.mark.parametrize(
    ("prefix", "labels", "want"),
    [
        ("http://h:1/", {}, f"http://h:1/example.com/app-latest-linux-{host_arch()}.aci"),
        (
            "https://h/x-",
            {"version": "2", "os": "freebsd", "arch": "arm64"},
            "https://h/x-example.com/app-2-freebsd-arm64.aci",
        ),
        ("/srv/acis/", {"version": "1"}, f"/srv/acis/example.com/app-1-linux-{host_arch()}.aci"),
        ("file:///srv/acis/", {}, f"/srv/acis/example.com/app-latest-linux-{host_arch()}.aci"),
    ],
)
def test_simple_discovery_locations_follow_the_template(
    prefix: str, labels: dict[str, str], want: str
) -> None:
    assert discovery_location(prefix, "example.com/app", labels) == want


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "amd64"), ("i686", "i386"), ("aarch64", "aarch64"), ("armv7l", "armv7l")],
)
def test_the_host_arch_is_named_as_the_spec_names_linux_arches(
    monkeypatch: pytest.MonkeyPatch, machine: str, arch: str
) -> None:
    monkeypatch.setattr("platform.machine", lambda: machine)
    assert host_arch() == arch
