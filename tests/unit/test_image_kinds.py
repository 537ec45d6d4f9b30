"""What is not a container image, or not a whole one, is refused in one line naming it.

OCI artifacts (a Helm chart, a cosign signature, anything with ``artifactType``),
non-distributable layers whose blob lazyfs does not have, a reference pinned to
another digest than its tag names, and image Env entries runc would refuse.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from providers.digest import digest_bytes
from providers.docker_local import LocalPuller
from providers.errors import BadImage, DigestMismatch, NotFound
from providers.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_FOREIGN,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDIST_GZIP,
    OCI_MANIFEST,
    parse_descriptor,
    parse_image_config,
    parse_image_manifest,
)
from providers.registry_http import HttpOptions, RegistryHttp
from tests.support.httpserver import serve

EMPTY = "application/vnd.oci.empty.v1+json"
HELM = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
COSIGN = "application/vnd.dev.cosign.simplesigning.v1+json"
SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64


def _desc(media_type: str, digest: str = SHA_A, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": 2, **extra}


def _manifest(config_type: str, *layer_types: str, **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc(config_type),
        "layers": [_desc(t, SHA_B) for t in layer_types],
        **extra,
    }
    return json.dumps(doc).encode()


# --- parse_image_manifest: artifacts ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (  # the spec's artifact with no config: artifactType MUST be set
            _manifest(EMPTY, "application/vnd.example.thing", artifactType="application/x.sbom"),
            "not a container image: an OCI artifact of type 'application/x.sbom'",
        ),
        (  # artifactType makes it an artifact whatever the config and layers
            _manifest(OCI_CONFIG, OCI_LAYER_GZIP, artifactType="application/x.sbom"),
            "not a container image: an OCI artifact of type 'application/x.sbom'",
        ),
        (  # a Helm chart: its own config type, no artifactType
            _manifest(HELM, HELM_CHART),
            f"not a container image: an OCI artifact of type '{HELM}'",
        ),
        (  # the empty config without artifactType (against the spec): still no image
            _manifest(EMPTY, OCI_LAYER_GZIP),
            f"not a container image: an OCI artifact of type '{EMPTY}'",
        ),
        (  # a cosign signature: an image config, but no filesystem layer at all
            _manifest(OCI_CONFIG, COSIGN),
            f"not a container image: an OCI artifact (unsupported layer media type '{COSIGN}')",
        ),
    ],
)
def test_artifacts_are_refused_as_not_images(data: bytes, message: str) -> None:
    with pytest.raises(BadImage) as caught:
        parse_image_manifest(data)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "data",
    [
        _manifest(OCI_CONFIG, OCI_LAYER_GZIP),
        _manifest(DOCKER_CONFIG, OCI_LAYER_GZIP),
        # A referrer that is an image (subject set, no artifactType) is an image.
        _manifest(OCI_CONFIG, OCI_LAYER_GZIP, subject=_desc(OCI_MANIFEST)),
        # A config descriptor with no media type says nothing of an artifact.
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"digest": SHA_A, "size": 2},
                "layers": [_desc(OCI_LAYER_GZIP, SHA_B)],
            }
        ).encode(),
        _manifest(OCI_CONFIG, OCI_LAYER_GZIP, artifactType=""),
    ],
)
def test_images_stay_images(data: bytes) -> None:
    assert [d.digest for d in parse_image_manifest(data).layers] == [SHA_B]


def test_one_unknown_layer_among_filesystem_layers_is_still_unsupported() -> None:
    with pytest.raises(BadImage) as caught:
        parse_image_manifest(_manifest(OCI_CONFIG, OCI_LAYER_GZIP, COSIGN))
    assert str(caught.value) == f"unsupported layer media type '{COSIGN}'"


# --- parse_image_config: Env --------------------------------------------------------


def _config(env: list[str]) -> bytes:
    return json.dumps({"config": {"Env": env}, "rootfs": {"diff_ids": []}}).encode()


def test_env_entries_without_equals_are_left_out_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="providers.manifest"):
        runtime, _ = parse_image_config(_config(["A=1", "B", "C=", "D=x=y"]))
    assert runtime.env == ("A=1", "C=", "D=x=y")
    assert "'B' is not NAME=VALUE" in caplog.text


def test_env_entry_without_a_name_is_refused() -> None:
    with pytest.raises(BadImage) as caught:
        parse_image_config(_config(["A=1", "=x"]))
    assert str(caught.value) == "bad image config: Env entry '=x' is not NAME=VALUE"


def test_env_entry_holding_a_nul_byte_is_refused() -> None:
    with pytest.raises(BadImage) as caught:
        parse_image_config(_config(["A=1", "B=x\0y"]))
    assert str(caught.value) == "bad image config: Env entry 'B=x\\x00y' holds a NUL byte"


# --- non-distributable layers -------------------------------------------------------


def test_descriptor_urls_are_kept_and_named_without_credentials() -> None:
    from providers.manifest import nondistributable

    url = "https://user:secret@example.com/layers/base.tgz?sig=t0k"
    desc = parse_descriptor(_desc(DOCKER_LAYER_FOREIGN, urls=[url, 3]), "layer 0")
    assert desc.urls == (url,)
    assert nondistributable(desc, "the registry") == (
        f"layer {SHA_A} is non-distributable (only at https://example.com/layers/base.tgz): "
        "lazyfs fetches layers from the registry only"
    )
    bare = parse_descriptor(_desc(OCI_LAYER_NONDIST_GZIP, urls="nope"), "layer 0")
    assert bare.urls == ()
    assert nondistributable(bare, "x") == (
        f"layer {SHA_A} is non-distributable: lazyfs fetches layers from x only"
    )
    assert nondistributable(parse_descriptor(_desc(OCI_LAYER_GZIP), "l"), "x") is None


class _NoBlobs(BaseHTTPRequestHandler):
    """A registry that has no blob: 404 BLOB_UNKNOWN to every GET."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}'
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_registry_blob_stream_says_why_a_missing_blob_is_missing() -> None:
    from providers.registry_blob import BlobStream

    why = f"layer {SHA_A} is non-distributable: lazyfs fetches layers from the registry only"
    with serve(_NoBlobs) as base:
        http = RegistryHttp(HttpOptions(attempts=1))
        url = f"{base}/v2/app/blobs/{SHA_A}"
        told = BlobStream(http, url, image="app:1", scope="s", size=2, missing=why)
        with pytest.raises(NotFound) as caught:
            told.read(2)
        plain = BlobStream(http, url, image="app:1", scope="s", size=2)
        with pytest.raises(NotFound) as untold:
            plain.read(2)
    assert str(caught.value) == f"app:1: {why}"
    assert caught.value.url == url and caught.value.image == "app:1"
    assert "non-distributable" not in str(untold.value)


# --- through the local puller: an OCI layout directory ----------------------------


class Layout:
    """A tiny OCI layout directory named ``NAME:TAG`` below an image directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = digest_bytes(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def manifest(
        self, config: dict[str, Any], layers: list[dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
        return self.blob(json.dumps({**doc, **extra}).encode(), OCI_MANIFEST)

    def write(self, *entries: dict[str, Any]) -> None:
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": entries})
        )


def _tar(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _image_config(layers: list[bytes], env: list[str] | None = None) -> bytes:
    conf: dict[str, Any] = {"Cmd": ["x"], **({"Env": env} if env is not None else {})}
    rootfs = {"type": "layers", "diff_ids": [digest_bytes(t) for t in layers]}
    return json.dumps({"config": conf, "rootfs": rootfs}).encode()


def _resolve_error(images: Path, reference: str) -> BaseException:
    with pytest.raises(BadImage) as caught:
        LocalPuller(images).resolve(reference)
    assert "\n" not in str(caught.value)
    return caught.value


def test_artifacts_in_a_layout_are_refused_naming_the_image(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "art:1")
    empty = layout.blob(b"{}", EMPTY)
    sbom = layout.blob(b'{"sbom": true}', "application/spdx+json")
    layout.write(layout.manifest(empty, [sbom], artifactType="application/spdx+json"))
    error = _resolve_error(tmp_path, "art:1")
    assert str(error) == (
        f"{layout.root}: art:1: not a container image: an OCI artifact of type "
        "'application/spdx+json'"
    )

    chart = Layout(tmp_path / "chart:0.1.0")
    config = chart.blob(b'{"name": "chart"}', HELM)
    content = chart.blob(gzip.compress(_tar("chart/Chart.yaml", b"name: chart\n")), HELM_CHART)
    chart.write(chart.manifest(config, [content]))
    error = _resolve_error(tmp_path, "chart:0.1.0")
    assert str(error) == (
        f"{chart.root}: chart:0.1.0: not a container image: an OCI artifact of type '{HELM}'"
    )


def test_a_bad_image_config_in_a_layout_names_the_image(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "env:1")
    tar = _tar("a", b"a")
    layer = layout.blob(gzip.compress(tar), OCI_LAYER_GZIP)
    config = layout.blob(_image_config([tar], ["PATH=/bin", "=x"]), OCI_CONFIG)
    layout.write(layout.manifest(config, [layer]))
    error = _resolve_error(tmp_path, "env:1")
    assert str(error) == (
        f"{layout.root}: env:1: bad image config: Env entry '=x' is not NAME=VALUE"
    )


def test_non_distributable_layers_in_a_layout(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "win:1")
    base, top = _tar("base", b"base"), _tar("top", b"top")
    url = "https://mcr.example.com/blobs/base"
    foreign = layout.blob(gzip.compress(base), DOCKER_LAYER_FOREIGN, urls=[url])
    plain = layout.blob(gzip.compress(top), OCI_LAYER_GZIP)
    config = layout.blob(_image_config([base, top]), OCI_CONFIG)
    layout.write(layout.manifest(config, [foreign, plain]))
    # Its blob is in the layout: used as any layer.
    image = LocalPuller(tmp_path).resolve("win:1")
    assert [layer.media_type for layer in image.layers] == [DOCKER_LAYER_FOREIGN, OCI_LAYER_GZIP]
    # Not there: said why, with where it lives.
    (layout.root / "blobs" / "sha256" / foreign["digest"].split(":")[1]).unlink()
    error = _resolve_error(tmp_path, "win:1")
    assert str(error) == (
        f"{layout.root}: layer {foreign['digest']} is non-distributable (only at {url}): "
        "lazyfs fetches layers from the layout only"
    )


def test_a_pinned_digest_that_is_not_the_tags_says_which(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "zstd:v1")
    tar = _tar("a", b"a")
    layer = layout.blob(gzip.compress(tar), OCI_LAYER_GZIP)
    config = layout.blob(_image_config([tar]), OCI_CONFIG)
    entry = layout.manifest(config, [layer])
    layout.write(entry)
    reference = f"zstd:v1@{SHA_B}"
    with pytest.raises(DigestMismatch) as caught:
        LocalPuller(tmp_path).resolve(reference)
    assert str(caught.value) == (
        f"{layout.root}: {reference}: its manifest is {entry['digest']}, "
        f"not the {SHA_B} the reference pins"
    )
    assert (caught.value.expected, caught.value.actual) == (SHA_B, entry["digest"])


def test_a_stored_config_of_an_older_lazyfs_keeps_only_what_a_pull_keeps() -> None:
    from providers.manifest import RuntimeConfig

    stored = {"env": ["A=1", "B", "=x", "C=\0", "D="]}
    assert RuntimeConfig.from_json(stored).env == ("A=1", "D=")
