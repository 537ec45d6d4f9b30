"""`lazyfs recover --keep` asks the kept containers' mounts side by side, as `ps` does.

One after another, each mount whose process is stopped cost the whole wait
for its answer (seconds), and a second such mount was asked only once the
first had been given up on: fifty made `recover` take minutes.
"""

from __future__ import annotations

import json

import pytest

from tests.support.lazyfs_cli import Lazyfs
from tests.support.statfs_calls import asked_side_by_side

pytestmark = pytest.mark.integration


def test_recover_asks_mounts_that_do_not_answer_side_by_side(lazyfs: Lazyfs) -> None:
    out, err = asked_side_by_side(lazyfs, "recover", "--keep", "f1", "f2")
    report = json.loads(out)
    assert report["kept"] == ["f1", "f2"], err
    assert not report["broken"] and not report["remounted"], report
    lazyfs("destroy", "f1")
    lazyfs("destroy", "f2")
