"""Appc references as the Appc ImageSources take them, read without I/O."""

from __future__ import annotations

import pytest

from providers.appc_source import AppcRef, parse_appc_ref
from providers.errors import BadImage

ID = "sha512-" + "ab" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com/app", AppcRef("example.com/app")),
        ("example.com/app,version=1.0", AppcRef("example.com/app", (("version", "1.0"),))),
        (
            "a/b,version=1@x,os=linux",
            AppcRef("a/b", (("version", "1@x"), ("os", "linux"))),
        ),
        (f"example.com/app@{ID}", AppcRef("example.com/app", (), ID)),
        (f"app,arch=amd64@{ID}", AppcRef("app", (("arch", "amd64"),), ID)),
    ],
)
def test_references_read_and_write_back(text: str, expected: AppcRef) -> None:
    assert parse_appc_ref(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text", ["", ",version=1", "app,version", "app,=1", "app@sha512-12", f"@{ID}"]
)
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(BadImage):
        parse_appc_ref(text)
