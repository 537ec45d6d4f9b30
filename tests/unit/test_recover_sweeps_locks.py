"""``recover`` sweeps the store's lock files no process holds, as image GC does: one per
blob, image or adoption ever locked would otherwise stay for good. One held stays."""

from __future__ import annotations

from pathlib import Path

import trio

from providers.fslock import exclusive_lock
from tests.support.backend_variants import make_provisioner


def test_recover_removes_the_stores_lock_files_no_one_holds(tmp_path: Path) -> None:
    prov = make_provisioner(tmp_path / "work", tmp_path / "no-registry")
    locks = prov.store.locks
    stale = [locks / "blob-sha256-aa.lock", locks / "image-one.lock", locks / "adopt-x.lock"]
    for path in stale:
        path.touch()
    held = locks / "blob-sha256-bb.lock"
    other = locks / "usage.lock"  # not one per name: never swept
    other.touch()
    with exclusive_lock(held):
        report = trio.run(prov.recover, [])
        assert held.exists()
    assert not report.destroyed and not report.failed
    assert [p for p in stale if p.exists()] == []
    assert other.exists()
