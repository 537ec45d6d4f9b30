"""The conformance cases as registry eStargz images, for the fuse-lazy variant.

``tests/conformance/conftest.py``'s ``lazy_cases`` fixture makes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.registry_servers import Registry


@dataclass(frozen=True)
class LazyCases:
    """Every case converted to eStargz by ctr-remote and pushed to a loopback registry."""

    registry: Registry
    images: dict[str, str]  # case name -> docker:HOST/NAME:esgz
