"""Under CI, a test that skips fails instead: CI sets itself up with everything.

On a developer's machine a test that needs root, FUSE or a peer tool that is
missing skips with its reason; under CI (``CI`` set, as CI runs
``.ci/run``) that skip is a broken setup and must not pass quietly.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """A skipped test's report, turned into a failure under CI."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"
