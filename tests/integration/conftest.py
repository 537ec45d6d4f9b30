"""The integration suite's fixtures live in ``tests/conftest.py``, shared with
the conformance suite; ``RICH_TAG`` stays importable from here."""

from __future__ import annotations

from tests.conftest import RICH_TAG

__all__ = ["RICH_TAG"]
