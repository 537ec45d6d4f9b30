"""An ACI's app section: text no container can take (a NUL byte, a lone surrogate, a
working directory longer than a path) is refused as the manifest is parsed, in one line
naming the field, as it is in a Docker image config (``tests/unit/test_config_text.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from providers.appc_manifest import parse_aci_manifest
from providers.config_text import PATH_MAX
from providers.errors import BadImage
from tests.support.acis import aci_bytes, manifest_doc, put_aci
from tests.support.lazyfs_cli import AppcLazyfs, one_line_error

SURROGATE = "\ud800"  # a JSON "\ud800" escape with no pair: no Unicode character
APP = {"exec": ["/bin/sh", "-c", "true"], "user": "0", "group": "0"}


def _manifest(**app: Any) -> bytes:
    # json.dumps writes the surrogate as the escape a hostile manifest holds.
    return json.dumps(manifest_doc("example.com/app", app={**APP, **app})).encode()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ({"exec": ["/bin/sh\0", "-c"]}, "bad image config: app.exec[0] '/bin/sh\\x00'"),
        ({"exec": ["/bin/sh", "-c", f"echo {SURROGATE}"]}, "bad image config: app.exec[2] 'echo"),
        ({"exec": [f"/bin/{SURROGATE}"]}, "bad image config: app.exec[0] '/bin/\\ud800'"),
        (
            {"environment": [{"name": "A", "value": "x\0y"}]},
            "bad image config: app.environment A value 'x\\x00y' holds a NUL byte",
        ),
        (
            {"environment": [{"name": "PATH", "value": f"/{SURROGATE}"}]},
            "bad image config: app.environment PATH value '/\\ud800'",
        ),
        (
            {"workingDirectory": "/a\0b"},
            "bad image config: app.workingDirectory '/a\\x00b' holds a NUL byte",
        ),
        (
            {"workingDirectory": f"/{SURROGATE}"},
            "bad image config: app.workingDirectory '/\\ud800'",
        ),
        ({"user": "ro\0ot"}, "bad image config: app.user 'ro\\x00ot' holds a NUL byte"),
        ({"user": SURROGATE}, "bad image config: app.user '\\ud800'"),
        ({"group": "0\0"}, "bad image config: app.group '0\\x00' holds a NUL byte"),
        ({"group": SURROGATE}, "bad image config: app.group '\\ud800'"),
    ],
)
def test_text_no_container_can_take_is_refused_naming_its_field(
    app: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadImage) as refused:
        parse_aci_manifest(_manifest(**app))
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert "NUL byte" in str(refused.value) or "lone surrogate" in str(refused.value)


@pytest.mark.parametrize("name", ["A\0", f"A{SURROGATE}"])
def test_an_environment_name_with_such_text_is_refused_too(name: str) -> None:
    with pytest.raises(BadImage) as refused:
        parse_aci_manifest(_manifest(environment=[{"name": name, "value": "x"}]))
    assert str(refused.value) == f"invalid ACI manifest: environment name {name!r}"


def test_a_surrogate_pair_is_one_character_and_taken() -> None:
    # "\ud83d\ude00" in JSON is U+1F600, which UTF-8 has.
    smile = "\U0001f600"
    parsed = parse_aci_manifest(
        _manifest(
            exec=["/bin/echo", smile],
            environment=[{"name": "A", "value": smile}],
            workingDirectory=f"/{smile}",
            user=smile,
            group=smile,
        )
    )
    assert parsed.config.cmd == (smile,)
    assert parsed.config.env == (f"A={smile}",)
    assert parsed.config.working_dir == f"/{smile}"
    assert parsed.config.user == f"{smile}:{smile}"


def test_a_working_directory_longer_than_a_path_may_be_is_refused() -> None:
    longest = "/" + "d" * (PATH_MAX - 2)  # with the kernel's ending NUL: PATH_MAX bytes
    assert parse_aci_manifest(_manifest(workingDirectory=longest)).config.working_dir == longest
    for long in (longest + "d", "/d" * 1000 + "/.." * 1000, "/\u00e9" * 1400):
        with pytest.raises(BadImage) as refused:
            parse_aci_manifest(_manifest(workingDirectory=long))
        size = len(long.encode())
        assert str(refused.value) == (
            f"bad image config: app.workingDirectory is {size} bytes long, longer than a path"
            f" may be ({PATH_MAX - 1} bytes)"
        )


def test_the_pull_of_such_an_aci_fails_in_one_line_and_keeps_nothing(tmp_path: Path) -> None:
    # Before, it was stored and provisioned, and its command went into runc's config.json,
    # where Go reads a lone surrogate as U+FFFD: another command than the image's.
    aci_dir = tmp_path / "acis"
    doc = manifest_doc("example.com/bad", app={**APP, "exec": ["/bin/sh", f"{SURROGATE}"]})
    put_aci(aci_dir, "example.com/bad", aci_bytes(doc, {"bin/sh": b""}))
    lazyfs = AppcLazyfs(tmp_path / "work", str(aci_dir) + "/")
    try:
        line = one_line_error(lazyfs("provision", "c1", "appc:example.com/bad", check=False))
    finally:  # a provision that went through (the bug) leaves no mount behind
        lazyfs("destroy", "c1", check=False)
    assert "bad image config: app.exec[1] '\\ud800' holds a lone surrogate" in line
    assert not (lazyfs.work_dir / "provisioner" / "containers" / "c1").exists()
    images = lazyfs.work_dir / "store" / "appc" / "images"
    assert not images.exists() or list(images.iterdir()) == []
