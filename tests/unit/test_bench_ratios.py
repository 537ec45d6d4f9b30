"""The bench's ratios: of medians, and by round (each round's lazyfs sample / the peer's)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def measure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import benchlib.measure

    yield benchlib.measure
    for name in [n for n in sys.modules if n == "benchlib" or n.startswith("benchlib.")]:
        del sys.modules[name]


def _contender(measure: Any, name: str, mine: bool, seconds: list[float]) -> Any:
    contender = measure.Contender(name, mine, lambda: measure.Timing(0.0))
    contender.samples = [measure.Timing(s) for s in seconds]
    return contender


def test_by_round_follows_the_load_each_round_was_taken_under(measure: Any) -> None:
    # The machine's load tripled after two rounds: both got slower.
    fuse = _contender(measure, "lazyfs fuse", True, [0.10, 0.11, 0.30, 0.33, 0.34])
    peer = _contender(measure, "kernel overlayfs", False, [0.05, 0.055, 0.15, 0.165, 0.10])
    ((mine, other, by_median),) = measure.ratios([fuse, peer])
    ((_, _, by_round),) = measure.paired_ratios([fuse, peer])
    assert (mine, other) == ("lazyfs fuse", "kernel overlayfs")
    assert by_median == pytest.approx(0.30 / 0.10)
    assert by_round == pytest.approx(2.0)  # rounds: 2, 2, 2, 2, 3.4
    result = measure.Result("start", "debian", [fuse, peer]).to_json()
    assert result["paired_ratios"] == [
        {"lazyfs": "lazyfs fuse", "peer": "kernel overlayfs", "ratio": pytest.approx(2.0)}
    ]


def test_no_ratio_by_round_without_a_sample_of_each_round(measure: Any) -> None:
    fuse = _contender(measure, "lazyfs fuse", True, [0.10, 0.11, 0.12])
    peer = _contender(measure, "kernel overlayfs", False, [0.05, 0.06])
    assert measure.ratios([fuse, peer])
    assert measure.paired_ratios([fuse, peer]) == []
