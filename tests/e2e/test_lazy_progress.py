"""A lazy mount's progress on a terminal: a bar per remote layer for what it
fetches before it is ready, then how much of the image is local and remote.

Real processes: ``lazyfs mount`` and ``lazyfs provision --backend fuse`` of
an eStargz image in a loopback ``docker-registry``, the cache daemon the
mount starts, and a pty 80 columns wide for stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cache_daemons import kill_recorded
from tests.support.estargz_writer import File, write_estargz
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_images import ROOT, Pushed, lazyfs, lazyfs_argv, push_estargz_image
from tests.support.registry_servers import Registry, run_registry
from tests.support.terminal import run_on_terminal, screen_lines

pytestmark = pytest.mark.integration

COLUMNS = 80
# Bytes that do not compress: the layers' sizes are what the bars count.
BOTTOM = write_estargz(
    [
        File("app", type="dir", mode=0o755),
        File("app/first", os.urandom(512 << 10)),
        File("app/later", os.urandom(4 << 20)),
    ],
    chunk_size=256 << 10,
    prefetch=2,  # app/first is prefetched, app/later is not
)
TOP = write_estargz([File("etc", type="dir", mode=0o755), File("etc/motd", b"top\n" * 500)])
# "nothing remote" (no remote size, no how): the cache had it all when the mount was ready.
SUMMARY = re.compile(
    r"lazyfs: (?P<local>[\d.]+ \w+) local \((?P<share>\d+)%\), "
    r"(?:(?P<remote>[\d.]+ \w+) remote, (?P<how>.*)|nothing remote)"
)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Pushed]]:
    work = tmp_path_factory.mktemp("lazy-progress-registry")
    with run_registry(work, work / "storage") as registry:
        yield registry, push_estargz_image(registry.url, "lazy/progress", "v1", [BOTTOM, TOP])


def ref(registry: Registry) -> str:
    return f"docker:{registry.host}/lazy/progress:v1"


@contextlib.contextmanager
def cleaned(work: Path, registry: Registry, undo: list[str]) -> Iterator[None]:
    """Undo what the block made (``lazyfs UNDO``), and end the daemon its mount started."""
    try:
        yield
    finally:
        gone = lazyfs(work, registry.url, *undo)
        kill_recorded(work / "cache")
        assert gone.returncode == 0, gone.stderr


def on_terminal(
    work: Path, registry: Registry, pushed: Pushed, *args: str, background: bool = True
) -> dict[str, str]:
    """``lazyfs ARGS`` on a terminal: it succeeds, its lines fit, each layer has its bar,
    and one summary ends it, whose parts this returns."""
    argv = lazyfs_argv(work, registry.url, *args, background=background)
    status, shown = run_on_terminal(argv, COLUMNS, cwd=ROOT)
    assert status == 0, shown
    lines = screen_lines(shown)
    assert all(len(line) <= COLUMNS for line in lines), lines
    for digest in pushed.layers:
        bars = [line for line in lines if line.startswith(digest[:19])]
        assert bars, (digest, lines)
        assert all("%" in bar for bar in bars), bars
    assert any(line.startswith("total") for line in lines), lines
    assert sum(1 for line in lines if SUMMARY.fullmatch(line.strip())) == 1, lines
    last = SUMMARY.fullmatch(lines[-1].strip())
    assert last is not None, lines
    summary = last.groupdict(default="")  # remote and how "" when nothing is remote
    assert int(summary["share"]) > 0, summary  # the footers and TOCs at least
    return summary


def test_a_lazy_mount_shows_each_layer_and_what_stays_remote(
    image: tuple[Registry, Pushed], tmp_path: Path
) -> None:
    need_fuse()
    registry, pushed = image
    work, mountpoint = tmp_path / "work", tmp_path / "mnt"
    mountpoint.mkdir()
    with cleaned(work, registry, ["umount", str(mountpoint)]):
        summary = on_terminal(work, registry, pushed, "mount", ref(registry), str(mountpoint),
                              background=False)  # fmt: skip
        # The footers, TOCs and the prefetched file are local; app/later is not.
        assert int(summary["share"]) < 100 and summary["remote"] != "0 B", summary
        assert summary["how"] == "read on demand", summary
        assert (mountpoint / "etc/motd").read_bytes() == b"top\n" * 500


def test_a_lazy_provision_says_the_rest_comes_in_the_background(
    image: tuple[Registry, Pushed], tmp_path: Path
) -> None:
    need_fuse()
    registry, pushed = image
    work = tmp_path / "work"
    with cleaned(work, registry, ["destroy", "c1"]):
        summary = on_terminal(work, registry, pushed, "provision", "c1", ref(registry),
                              "--backend", "fuse")  # fmt: skip
        # Unless the background fetch had it all by then: then no rest is promised.
        assert summary["how"] == "fetching in the background" or (
            summary["share"] == "100" and summary["how"] == ""
        ), summary


def test_a_lazy_provision_draws_nothing_on_a_pipe(
    image: tuple[Registry, Pushed], tmp_path: Path
) -> None:
    need_fuse()
    registry, _ = image
    work = tmp_path / "work"
    with cleaned(work, registry, ["destroy", "c1"]):
        done = lazyfs(work, registry.url, "provision", "c1", ref(registry), "--backend", "fuse")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
