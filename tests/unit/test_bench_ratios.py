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


def test_each_row_runs_next_to_the_row_it_is_compared_with_in_turns(measure: Any) -> None:
    # The cold-start rows' shape: two rows against eStargz, two against the warm row.
    ran: list[str] = []

    def row(name: str, versus: str = "", mine: bool = True) -> Any:
        def once() -> Any:
            ran.append(name)
            return measure.Timing(1.0)

        return measure.Contender(name, mine, once, versus=versus)

    rows = [
        row("eStargz"),
        row("eStargz, trace"),
        row("index pushed", "eStargz"),
        row("second machine", "eStargz"),
        row("gzip, trace", "warm"),
        row("warm"),
        row("warm, dropped", "warm"),
        row("skopeo", mine=False),
    ]
    measure.compare(rows, 4, lambda _: None, "test")
    assert ran[:8] == [r.name for r in rows]  # the warm-up, in the list's order
    rounds = [ran[8 + 8 * n : 16 + 8 * n] for n in range(4)]
    for rotation in rounds:
        for mine, peer in [
            ("index pushed", "eStargz"),
            ("second machine", "eStargz"),
            ("gzip, trace", "warm"),
            ("warm, dropped", "warm"),
        ]:
            assert abs(rotation.index(mine) - rotation.index(peer)) == 1, (rotation, mine)
    # In turns: whoever of a pair went first in a round goes second in the next (ABBA).
    assert rounds[1] == rounds[0][::-1] and rounds[2] == rounds[0] and rounds[3] == rounds[1]
    by_name = {r.name: r for r in rows}
    for r in rows:
        assert [s.position for s in r.samples] == [rounds[n].index(r.name) for n in range(4)]
        assert all(s.started > 0 for s in r.samples)
        assert r.samples == sorted(r.samples, key=lambda s: s.started)
        if r.versus:
            assert measure.adjacent(r, by_name[r.versus])
    assert not measure.adjacent(by_name["eStargz, trace"], by_name["skopeo"])


def test_the_json_keeps_every_runs_facts_and_names_the_median_runs(measure: Any) -> None:
    contender = measure.Contender("row", True, lambda: measure.Timing(0.0))
    contender.samples = [
        measure.Timing(2.0, facts={"daemon_waits": 40}),
        measure.Timing(1.0, facts={"daemon_waits": 3}),
        measure.Timing(1.5, facts={"daemon_waits": 6}),
    ]
    (row,) = measure.Result("cold-start", "debian", [contender]).to_json()["contenders"]
    assert row["median_run_facts"] == {"daemon_waits": 6}
    assert row["facts_by_run"] == [{"daemon_waits": 40}, {"daemon_waits": 3}, {"daemon_waits": 6}]
    assert "facts" not in row  # the first run's alone, which read as the median run's
