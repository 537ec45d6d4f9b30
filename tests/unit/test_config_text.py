"""An image config's command, environment, working directory and user: text no container
can take is refused as the config is parsed, in one line naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.config_text import PATH_MAX
from providers.errors import BadImage
from providers.manifest import parse_image_config

SURROGATE = "\ud800"  # a JSON "\ud800" escape with no pair: no Unicode character


def _config(**fields: Any) -> bytes:
    # json.dumps writes the surrogate as the escape a hostile config holds.
    return json.dumps({"config": fields, "rootfs": {"diff_ids": []}}).encode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Entrypoint": ["/bin/sh", "-c\0"]}, "bad image config: Entrypoint entry '-c\\x00'"),
        ({"Cmd": [f"/bin/{SURROGATE}"]}, "bad image config: Cmd entry '/bin/\\ud800'"),
        ({"Cmd": f"/bin/{SURROGATE}"}, "bad image config: Cmd entry '/bin/\\ud800'"),  # bare
        ({"Env": [f"PATH=/{SURROGATE}"]}, "bad image config: Env entry 'PATH=/\\ud800'"),
        ({"Env": ["B=x\0y"]}, "bad image config: Env entry 'B=x\\x00y' holds a NUL byte"),
        ({"Env": [f"NONAME{SURROGATE}"]}, "bad image config: Env entry 'NONAME\\ud800'"),
        ({"WorkingDir": "/a\0b"}, "bad image config: WorkingDir '/a\\x00b' holds a NUL byte"),
        ({"WorkingDir": f"/{SURROGATE}"}, "bad image config: WorkingDir '/\\ud800'"),
        ({"User": "ro\0ot"}, "bad image config: User 'ro\\x00ot' holds a NUL byte"),
        ({"User": SURROGATE}, "bad image config: User '\\ud800'"),
    ],
)
def test_text_no_container_can_take_is_refused_naming_its_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadImage) as refused:
        parse_image_config(_config(**fields))
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert "NUL byte" in str(refused.value) or "lone surrogate" in str(refused.value)


def test_a_surrogate_pair_is_one_character_and_taken() -> None:
    # "\ud83d\ude00" in JSON is U+1F600, which UTF-8 has.
    runtime, _ = parse_image_config(_config(Cmd=["echo", "\U0001f600"], User="\U0001f600"))
    assert runtime.cmd == ("echo", "\U0001f600")
    assert runtime.user == "\U0001f600"


def test_a_working_dir_longer_than_a_path_may_be_is_refused() -> None:
    # As a hostile image gives it: ``d/..`` by the thousand, millions in 16 MiB.
    longest = "/" + "d" * (PATH_MAX - 2)  # with the kernel's ending NUL: PATH_MAX bytes
    runtime, _ = parse_image_config(_config(WorkingDir=longest))
    assert runtime.working_dir == longest
    for long in (longest + "d", "/d" * 1000 + "/.." * 1000, "/\u00e9" * 1400):
        with pytest.raises(BadImage) as refused:
            parse_image_config(_config(WorkingDir=long))
        size = len(long.encode())
        assert str(refused.value) == (
            f"bad image config: WorkingDir is {size} bytes long, longer than a path may be"
            f" ({PATH_MAX - 1} bytes)"
        )
