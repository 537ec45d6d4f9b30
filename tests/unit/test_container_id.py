"""The container ids the provisioner takes: the whole id is checked."""

from __future__ import annotations

import pytest

from lazyfs.provision.records import check_container_id
from providers.errors import UsageError


@pytest.mark.parametrize("container_id", ["abc", "run-0123abcd", "a.b_c-d", "a" * 128])
def test_taken(container_id: str) -> None:
    check_container_id(container_id)


@pytest.mark.parametrize(
    "container_id",
    ["abc\n", "abc\n\n", "\nabc", "", ".abc", "a..b", "a/b", "a" * 129, "a" * 128 + "\n"],
)
def test_refused(container_id: str) -> None:
    with pytest.raises(UsageError, match="invalid container id"):
        check_container_id(container_id)
