"""Under CI a skipped test fails, so a machine missing a tool cannot pass quietly."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
INNER = """
import pytest

def test_needs_a_tool():
    pytest.skip("needs sometool")

def test_passes():
    pass
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_skip_fails_only_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    pytester.makeconftest(
        "from tests.support.ci_skips import pytest_runtest_makereport  # noqa: F401\n"
    )
    pytester.makepyfile(INNER)
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    if ci:
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(["*skipped under CI*needs sometool*"])
    else:
        result.assert_outcomes(passed=1, skipped=1)
