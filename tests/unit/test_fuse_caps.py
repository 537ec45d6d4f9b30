"""Which FUSE path a mount process takes: its pyfuse3, the kernel and LAZYFS_FUSE_NO_OPEN."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import pyfuse3
import pytest

from lazyfs.fs import caps as fuse_caps
from providers.errors import UsageError


def module(*, patched: bool) -> ModuleType:
    """A pyfuse3 as detection sees it: with or without the patch's marker."""
    found = ModuleType("pyfuse3")
    found.__version__ = "3.5.0"  # type: ignore[attr-defined]
    if patched:
        setattr(found, fuse_caps.MARKER, True)
    return found


PATCHED, STOCK = module(patched=True), module(patched=False)
NEW, OLD = "6.1.0-18-amd64", "5.0.21"


@pytest.mark.parametrize(
    ("asked", "pyfuse3_module", "release", "no_open"),
    [
        (None, PATCHED, NEW, True),
        ("", PATCHED, NEW, True),
        ("1", PATCHED, NEW, True),
        ("0", PATCHED, NEW, False),
        (None, STOCK, NEW, False),
        ("0", STOCK, NEW, False),
        (None, PATCHED, OLD, False),
        (None, PATCHED, "5.1.0", True),
        (None, PATCHED, "nonsense", False),
    ],
)
def test_the_path_follows_pyfuse3_the_kernel_and_the_switch(
    asked: str | None, pyfuse3_module: ModuleType, release: str, no_open: bool
) -> None:
    environ = {} if asked is None else {fuse_caps.ENV: asked}
    assert fuse_caps.no_open(environ, pyfuse3_module, release) is no_open


@pytest.mark.parametrize(
    ("asked", "pyfuse3_module", "release", "message"),
    [
        ("1", STOCK, NEW, r"pyfuse3 3\.5\.0 lacks the patch lazyfs carries"),
        ("1", PATCHED, OLD, r"kernel 5\.0\.21 is older than 5\.1"),
        ("yes", PATCHED, NEW, r"LAZYFS_FUSE_NO_OPEN must be 0 or 1, not 'yes'"),
    ],
)
def test_asking_for_what_cannot_work_is_a_clear_error(
    asked: str, pyfuse3_module: ModuleType, release: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        fuse_caps.no_open({fuse_caps.ENV: asked}, pyfuse3_module, release)


def test_a_marker_that_is_not_true_does_not_count() -> None:
    found = module(patched=False)
    setattr(found, fuse_caps.MARKER, "yes")
    assert not fuse_caps.pyfuse3_skips_open(found)


def test_the_running_pyfuse3_has_the_patch_scripts_setup_applies() -> None:
    """CI sets up with scripts/setup, which builds pyfuse3 with the patch: it must be here."""
    if not fuse_caps.pyfuse3_skips_open():
        pytest.skip(f"pyfuse3 {pyfuse3.__version__} is a stock build, not scripts/setup's")
    assert "+lazyfs." in pyfuse3.__version__
    info = pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(1), cache_readdir=True, noflush=True)
    assert info.cache_readdir and info.noflush
    assert pyfuse3.Operations.enable_atomic_o_trunc is True  # stock behaviour unless asked


def with_operations(*, cache_symlinks: bool) -> ModuleType:
    """A pyfuse3 whose Operations has ``enable_cache_symlinks`` (patch 0002) or not."""
    found = module(patched=True)
    attributes = {fuse_caps.CACHE_SYMLINKS: False} if cache_symlinks else {}
    found.Operations = type("Operations", (), attributes)  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("patched", [True, False])
def test_symlink_targets_are_cached_only_where_pyfuse3_can_ask(patched: bool) -> None:
    found = with_operations(cache_symlinks=patched)
    ops = found.Operations()
    assert fuse_caps.pyfuse3_caches_symlinks(found) is patched
    assert fuse_caps.cache_symlinks(ops, found) is patched
    # A stock pyfuse3 never reads the attribute; it is not even set there.
    assert getattr(ops, fuse_caps.CACHE_SYMLINKS, None) is (True if patched else None)
    assert getattr(found.Operations, fuse_caps.CACHE_SYMLINKS, None) is (False if patched else None)


def test_the_pyfuse3_scripts_setup_builds_from_these_patches_can_cache_symlinks() -> None:
    """Held to this checkout's patches: a .venv set up before patch 0002 is skipped, not failed."""
    patches = sorted((Path(__file__).parents[2] / "scripts" / "pyfuse3").glob("*.patch"))
    stamp = hashlib.sha256(b"".join(p.read_bytes() for p in patches)).hexdigest()[:12]
    if not pyfuse3.__version__.endswith(f"+lazyfs.{stamp}"):
        pytest.skip(f"pyfuse3 {pyfuse3.__version__} is not built from these patches ({stamp})")
    assert fuse_caps.pyfuse3_caches_symlinks()
    assert pyfuse3.Operations.enable_cache_symlinks is False  # stock behaviour unless asked
