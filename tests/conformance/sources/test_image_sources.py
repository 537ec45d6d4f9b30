"""ImageSource conformance: every source resolves what it holds, the same way each time.

Runs against the local puller (docker save tars in three forms, OCI layout
tar and directory), the registry client, the Appc store, Appc simple
discovery and the fake (``conftest.IMAGE_CASES``).
"""

from __future__ import annotations

import hashlib

import pytest

from providers.errors import NotFound
from tests.support.source_cases import ImageCase


def test_resolve_gives_the_layers_bottom_first_and_the_config(image_case: ImageCase) -> None:
    image = image_case.source.resolve(image_case.reference)
    assert image.layers
    if image_case.diff_ids is not None:
        assert tuple(layer.diff_id for layer in image.layers) == image_case.diff_ids
    assert image.config == image_case.config


def test_resolve_is_idempotent(image_case: ImageCase) -> None:
    first = image_case.source.resolve(image_case.reference)
    assert image_case.source.resolve(image_case.reference) == first


def test_each_layer_descriptor_describes_its_bytes(image_case: ImageCase) -> None:
    for layer in image_case.source.resolve(image_case.reference).layers:
        data = image_case.blob(layer)
        algorithm, _, hex_digest = layer.digest.partition(":")
        assert hashlib.new(algorithm, data).hexdigest() == hex_digest
        assert layer.size == len(data)


def test_an_image_it_does_not_hold_is_not_found(image_case: ImageCase) -> None:
    with pytest.raises(NotFound):
        image_case.source.resolve(image_case.missing)
