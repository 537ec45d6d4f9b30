"""Image config and manifest parsing, table-driven."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.errors import BadImage
from providers.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    ImageManifest,
    Layer,
    RuntimeConfig,
    parse_image_config,
    parse_image_manifest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("doc", "runtime", "diff_ids"),
    [
        (
            {
                "config": {
                    "Entrypoint": ["/bin/sh", "-c"],
                    "Cmd": ["echo hi"],
                    "Env": ["A=1", "B=2"],
                    "WorkingDir": "/w",
                    "User": "1000:1000",
                },
                "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
            },
            RuntimeConfig(("/bin/sh", "-c"), ("echo hi",), ("A=1", "B=2"), "/w", "1000:1000"),
            (D1, D2),
        ),
        ({}, RuntimeConfig(), ()),
        ({"config": None, "rootfs": None}, RuntimeConfig(), ()),
        ({"config": {"Cmd": None, "Entrypoint": None, "Env": None}}, RuntimeConfig(), ()),
        # Old Docker configs give a bare string for Cmd.
        ({"config": {"Cmd": "/bin/true"}}, RuntimeConfig(cmd=("/bin/true",)), ()),
        # Mesos falls back to container_config when config is absent.
        ({"container_config": {"Cmd": ["old"]}}, RuntimeConfig(cmd=("old",)), ()),
        (
            {"config": {"Cmd": ["new"]}, "container_config": {"Cmd": ["old"]}},
            RuntimeConfig(cmd=("new",)),
            (),
        ),
        ({"config": {"WorkingDir": "", "User": None}}, RuntimeConfig(), ()),
        ({"rootfs": {"type": "layers"}}, RuntimeConfig(), ()),
        ({"config": {"Unknown": 1}, "history": [{}]}, RuntimeConfig(), ()),
    ],
)
def test_parse_image_config(doc: Any, runtime: RuntimeConfig, diff_ids: tuple[str, ...]) -> None:
    assert parse_image_config(_json(doc)) == (runtime, diff_ids)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (_json([]), "not a JSON object"),
        (_json("config"), "not a JSON object"),
        (_json({"config": ["Cmd"]}), "config is not an object"),
        (_json({"config": {"Cmd": [1]}}), "Cmd is not a list of strings"),
        (_json({"config": {"Entrypoint": {"a": 1}}}), "Entrypoint"),
        (_json({"config": {"Env": "A=1"}}), None),  # a bare string is accepted as one item
        (_json({"config": {"WorkingDir": 5}}), "WorkingDir is not a string"),
        (_json({"config": {"User": ["root"]}}), "User is not a string"),
        (_json({"rootfs": ["x"]}), "rootfs is not an object"),
        (_json({"rootfs": {"diff_ids": D1}}), "diff_ids is not a list"),
        (_json({"rootfs": {"diff_ids": [1]}}), "diff_ids is not a list"),
        (_json({"rootfs": {"diff_ids": ["sha256:abc"]}}), "invalid digest"),
        (_json({"rootfs": {"diff_ids": ["md5:" + "1" * 32]}}), "invalid digest"),
        (_json({"rootfs": {"diff_ids": ["sha256:" + "1" * 64 + "\n"]}}), "invalid digest"),
    ],
)
def test_parse_image_config_rejects(data: bytes, message: str | None) -> None:
    if message is None:
        parse_image_config(data)
        return
    with pytest.raises(BadImage, match=message):
        parse_image_config(data)


def _manifest(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 20},
            {"mediaType": OCI_LAYER_ZSTD, "digest": D3, "size": 30, "annotations": {"a": "b"}},
        ],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def test_parse_oci_manifest() -> None:
    parsed = parse_image_manifest(_json(_manifest()))
    assert parsed.media_type == OCI_MANIFEST
    assert (parsed.config.digest, parsed.config.size, parsed.config.media_type) == (
        D1,
        10,
        OCI_CONFIG,
    )
    assert [(d.media_type, d.digest, d.size) for d in parsed.layers] == [
        (OCI_LAYER_GZIP, D2, 20),
        (OCI_LAYER_ZSTD, D3, 30),
    ]
    assert parsed.layers[1].annotations == {"a": "b"}


@pytest.mark.parametrize(
    ("overrides", "fallback", "kind"),
    [
        ({"mediaType": None}, "", OCI_MANIFEST),
        ({"mediaType": None}, DOCKER_MANIFEST, DOCKER_MANIFEST),
        (
            {
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "digest": D1, "size": 1},
                "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": D2, "size": 2}],
            },
            "",
            DOCKER_MANIFEST,
        ),
        ({"layers": []}, "", OCI_MANIFEST),
    ],
)
def test_parse_manifest_kinds(overrides: dict[str, Any], fallback: str, kind: str) -> None:
    assert parse_image_manifest(_json(_manifest(**overrides)), fallback).media_type == kind


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (_json([1]), "not a JSON object"),
        (_json(_manifest(mediaType=OCI_INDEX)), "got an index"),
        (_json(_manifest(mediaType=DOCKER_MANIFEST_LIST)), "got an index"),
        (_json({**_manifest(mediaType=None), "manifests": []}), "got an index"),
        (_json(_manifest(mediaType="application/json")), "unsupported manifest media type"),
        (_json(_manifest(schemaVersion=1)), "schemaVersion"),
        (_json(_manifest(schemaVersion=None)), "schemaVersion"),
        (_json(_manifest(config=None)), "config descriptor"),
        (_json(_manifest(config={"digest": D1})), "no valid size"),
        (_json(_manifest(config={"digest": "sha256:x", "size": 1})), "invalid digest"),
        (_json(_manifest(config={"digest": D1, "size": -1})), "no valid size"),
        (_json(_manifest(config={"digest": D1, "size": "big"})), "no valid size"),
        (_json(_manifest(config={"size": 1})), "has no digest"),
        (_json(_manifest(layers=None)), "no layers list"),
        (_json(_manifest(layers={"a": 1})), "no layers list"),
        (_json(_manifest(layers=["x"])), "layer 0 is not a JSON object"),
        (
            _json(_manifest(layers=[{"mediaType": "text/plain", "digest": D2, "size": 1}])),
            "unsupported layer media type",
        ),
    ],
)
def test_parse_manifest_rejects(data: bytes, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        parse_image_manifest(data)


def test_image_manifest_round_trips_through_json() -> None:
    image = ImageManifest(
        reference="docker.io/library/busybox:latest",
        digest=D1,  # type: ignore[arg-type]
        layers=(
            Layer(D2, OCI_LAYER_GZIP, 20, D3),  # type: ignore[arg-type]
            Layer(D3, OCI_LAYER_ZSTD, 30),  # type: ignore[arg-type]
        ),
        config=RuntimeConfig(("/bin/sh",), ("-c", "x"), ("A=1",), "/", "nobody"),
    )
    assert ImageManifest.from_json(json.loads(json.dumps(image.to_json()))) == image
