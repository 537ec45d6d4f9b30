"""An image of a kind no provider is enabled for is refused naming the flag that enables it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.provision.provisioner import Provisioner
from lazyfs.store.disk import Store
from providers.errors import BadImage
from providers.image_pb2 import Image


def test_an_appc_image_without_its_provider_names_the_flag(tmp_path: Path) -> None:
    provisioner = Provisioner(tmp_path / "work", Store(tmp_path / "store"), {}, "copy")
    image = Image(type=Image.APPC)
    image.appc.name = "example.com/app"
    with pytest.raises(BadImage) as refused:
        provisioner._provider(image)
    assert str(refused.value) == "no appc image provider enabled (--image_providers: none)"
