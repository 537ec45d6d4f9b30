"""The rich test image's tag, and the tools it is built and converted with.

``tests.support.images.build_rich_image`` builds the image; the session
fixtures in ``tests/conftest.py`` tag it ``RICH_TAG`` and convert it into
every local form.
"""

from __future__ import annotations

import shutil

import pytest

RICH_TAG = "1.0"


def need_tools() -> None:
    """Skip unless umoci and skopeo, which build and convert the images, are here."""
    missing = [tool for tool in ("umoci", "skopeo") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
