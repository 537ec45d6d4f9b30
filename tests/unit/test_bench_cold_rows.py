"""The bench's cold-start rows: named in LAZYFS_BENCH_COLD_ROWS, and the replayed trace's check."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyfs.cache.remote import trace_key
from lazyfs.index.trace import Read, Trace, store_trace
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.manifest import ImageManifest, Layer

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def benchlib(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import benchlib.cli
    import benchlib.cold_run

    yield benchlib
    for name in [n for n in sys.modules if n == "benchlib" or n.startswith("benchlib.")]:
        del sys.modules[name]


def test_a_row_name_that_is_no_rows_is_refused_naming_the_rows(
    benchlib: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "LAZYFS_BENCH_COLD_ROWS", "lazyfs fuse lazy (eStargz),lazyfs fuse (gzip warm)"
    )
    with pytest.raises(SystemExit) as exited:
        benchlib.cli.parse(["--only", "cold-start"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "names no row lazyfs fuse (gzip warm); known: " in error
    assert "lazyfs fuse (gzip, warm); lazyfs fuse (gzip, warm, page cache dropped)" in error


def test_row_names_with_commas_are_taken(benchlib: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LAZYFS_BENCH_COLD_ROWS",
        "lazyfs fuse lazy (gzip, replayed trace), lazyfs fuse (gzip, warm),skopeo copy + umoci "
        "unpack",
    )
    assert benchlib.cli.parse(["--only", "cold-start"]).only == ["cold-start"]
    assert "lazyfs fuse (gzip, replayed trace)" not in benchlib.cold.ROWS
    assert benchlib.cold.unknown_rows("lazyfs fuse (gzip, replayed trace)") == [
        "lazyfs fuse (gzip, replayed trace)"
    ]


def test_a_start_counts_as_replayed_only_with_a_fetched_trace_of_its_image(
    benchlib: Any, tmp_path: Path
) -> None:
    cold_run = benchlib.cold_run
    store = Store(tmp_path / "store" / "docker")
    layer = Layer(Digest("sha256:" + "1" * 64), "application/vnd.oci.image.layer.v1.tar+gzip", 9)
    image = ImageManifest("127.0.0.1:5000/bench/debian:plain", Digest("sha256:" + "a" * 64),
                          (layer,))  # fmt: skip
    store.put_image(image)
    assert cold_run.fetched_trace_reads(tmp_path) == {"trace_reads": 0}  # none fetched

    other = trace_key(Digest("sha256:" + "b" * 64), (), ("python3",), "/")
    assert other is not None
    store_trace(store.root, Trace(other, (Read(layer.digest, 0, 4),)))
    assert cold_run.fetched_trace_reads(tmp_path) == {"trace_reads": 0}  # another image's

    key = trace_key(image.digest, (), ("python3",), "/")
    assert key is not None
    store_trace(store.root, Trace(key, (Read(layer.digest, 0, 4), Read(layer.digest, 8, 1))))
    assert cold_run.fetched_trace_reads(tmp_path) == {"trace_reads": 2}

    def start(reads: int) -> Any:
        return lambda: benchlib.measure.Timing(1.0, facts={"trace_reads": reads})

    assert cold_run.replayed_only(start(2))().seconds == 1.0
    with pytest.raises(benchlib.util.ToolError, match="no trace replayed"):
        cold_run.replayed_only(start(0))()
