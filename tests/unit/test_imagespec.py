"""lazyfs.images.spec: the CLI's image argument and Image JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from lazyfs.images.spec import check_image, image_from_file, parse_image
from providers.errors import BadImage, InvalidReference
from providers.image_pb2 import Image


def labels_of(image: Image) -> list[tuple[str, str]]:
    return [(label.key, label.value) for label in image.appc.labels.labels]


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("docker:busybox", "busybox"),
        ("docker:busybox:1.36", "busybox:1.36"),
        ("docker://busybox", "busybox"),
        ("docker:localhost:5000/app@sha256:" + "a" * 64, "localhost:5000/app@sha256:" + "a" * 64),
        # No prefix: Docker.
        ("busybox", "busybox"),
        ("localhost:5000/app:1", "localhost:5000/app:1"),
        ("docker:docker:5000/app", "docker:5000/app"),
    ],
)
def test_docker_specs(spec: str, name: str) -> None:
    image = parse_image(spec)
    assert image.type == Image.DOCKER
    # Kept as written; providers normalize.
    assert image.docker.name == name
    assert not image.HasField("appc")
    assert image.cached
    assert image.IsInitialized()


@pytest.mark.parametrize(
    ("spec", "reference", "reason"),
    [
        ("docker:", "", "empty reference"),
        ("docker:Busybox", "Busybox", "must be lowercase"),
        ("Busybox", "Busybox", "must be lowercase"),
        ("docker:busybox:", "busybox:", "empty tag"),
        ("busybox@sha256:abc", "busybox@sha256:abc", "bad digest"),
        ("docker://", "", "empty reference"),
    ],
)
def test_bad_docker_specs(spec: str, reference: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_image(spec)
    assert caught.value.reference == reference
    assert reason in caught.value.reason


def test_empty_spec() -> None:
    with pytest.raises(BadImage, match="empty image"):
        parse_image("")


@pytest.mark.parametrize(
    ("spec", "name", "labels"),
    [
        ("appc:example.com/app", "example.com/app", []),
        ("appc:app,version=1.0", "app", [("version", "1.0")]),
        (
            "appc:coreos.com/etcd,version=v3.5,os=linux,arch=amd64",
            "coreos.com/etcd",
            [("version", "v3.5"), ("os", "linux"), ("arch", "amd64")],
        ),
        ("appc:a~b_c-d.e/f,k=v=w", "a~b_c-d.e/f", [("k", "v=w")]),
    ],
)
def test_appc_specs(spec: str, name: str, labels: list[tuple[str, str]]) -> None:
    image = parse_image(spec)
    assert image.type == Image.APPC
    assert image.appc.name == name
    assert labels_of(image) == labels
    assert image.appc.HasField("labels") == bool(labels)
    assert not image.HasField("docker")
    assert image.cached


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("appc:", "invalid appc image name ''"),
        ("appc:,version=1", "invalid appc image name ''"),
        ("appc:App", "invalid appc image name 'App'"),
        ("appc:a//b", "invalid appc image name"),
        ("appc:-a", "invalid appc image name"),
        ("appc:app,version", "appc label 'version': want KEY=VALUE"),
        ("appc:app,=1", "want KEY=VALUE"),
        ("appc:app,", "want KEY=VALUE"),
        ("appc:app,version=", "appc label 'version' has no value"),
        ("appc:app,os=linux,os=darwin", "appc label 'os' given twice"),
    ],
)
def test_bad_appc_specs(spec: str, reason: str) -> None:
    with pytest.raises(BadImage) as caught:
        parse_image(spec)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def write_json(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "image.json"
    path.write_text(json.dumps(document))
    return path


def test_docker_image_from_file(tmp_path: Path) -> None:
    document = {"type": "DOCKER", "docker": {"name": "busybox:1.36"}, "cached": False}
    image = image_from_file(write_json(tmp_path, document))
    assert image.type == Image.DOCKER
    assert image.docker.name == "busybox:1.36"
    assert not image.cached


def test_appc_image_from_file(tmp_path: Path) -> None:
    document = {
        "type": "APPC",
        "appc": {
            "name": "coreos.com/etcd",
            "id": "sha512-" + "0" * 64,
            "labels": {"labels": [{"key": "version", "value": "v3.5"}]},
        },
    }
    image = image_from_file(str(write_json(tmp_path, document)))
    assert image.appc.name == "coreos.com/etcd"
    assert image.appc.id == "sha512-" + "0" * 64
    assert labels_of(image) == [("version", "v3.5")]
    # Absent "cached" takes the proto2 default, as in Mesos.
    assert image.cached


def test_file_and_spec_agree(tmp_path: Path) -> None:
    image = parse_image("appc:app,version=1.0")
    path = tmp_path / "image.json"
    path.write_text(json_format.MessageToJson(image))
    assert image_from_file(path) == image


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a JSON object"),
        ("[]", "not a JSON object"),
        ("null", "not a JSON object"),
        ("{", "Failed to load JSON"),
        ('{"type": "DOCKER", "docker": {"name": "a"}, "colour": 1}', 'no field named "colour"'),
        ('{"type": "OCI"}', "Invalid enum value OCI"),
        ('{"type": "DOCKER", "cached": "yes"}', "Failed to parse cached field"),
        ('{"type": "DOCKER", "type": "APPC"}', "duplicate key"),
        ("{}", "missing required field(s): type"),
        ('{"type": "DOCKER", "docker": {}}', "missing required field(s): docker.name"),
        ('{"appc": {}}', "missing required field(s): type, appc.name"),
        ('{"type": "DOCKER"}', "type DOCKER needs a 'docker' message"),
        ('{"type": "APPC"}', "type APPC needs an 'appc' message"),
        (
            '{"type": "DOCKER", "docker": {"name": "a"}, "appc": {"name": "a"}}',
            "type DOCKER but an 'appc' message is set",
        ),
        (
            '{"type": "APPC", "docker": {"name": "a"}, "appc": {"name": "a"}}',
            "type APPC but a 'docker' message is set",
        ),
        ('{"type": "APPC", "appc": {"name": "A"}}', "invalid appc image name 'A'"),
        (
            '{"type": "APPC", "appc": {"name": "a", "labels": {"labels": [{"key": ""}]}}}',
            "appc label with an empty key",
        ),
    ],
)
def test_bad_image_files(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "image.json"
    path.write_text(text)
    with pytest.raises(BadImage) as caught:
        image_from_file(path)
    message = str(caught.value)
    assert reason in message
    assert message.startswith(f"image file {path}: ")
    # One line, for the CLI to print as it is.
    assert "\n" not in message


def test_bad_reference_in_file_names_the_file(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"type": "DOCKER", "docker": {"name": "Busybox"}})
    with pytest.raises(InvalidReference) as caught:
        image_from_file(path)
    assert caught.value.reference == "Busybox"
    assert "must be lowercase" in caught.value.reason
    assert str(path) in str(caught.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match=r"cannot read image file .*: No such file or directory"):
        image_from_file(tmp_path / "missing.json")
    with pytest.raises(BadImage, match=r"cannot read image file .*: Is a directory"):
        image_from_file(tmp_path)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"type": "DOCKER", "docker": {"name": "caf\xe9"}}')
    with pytest.raises(BadImage, match="not UTF-8 text"):
        image_from_file(path)


def test_check_image_accepts_a_built_message() -> None:
    image = Image(type=Image.DOCKER, docker=Image.Docker(name="busybox"), cached=False)
    assert check_image(image) is image
    with pytest.raises(BadImage, match=r"^from the agent: missing required field"):
        check_image(Image(docker=Image.Docker(name="busybox")), "from the agent")


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("oci:/srv/layout", "oci:/srv/layout"),
        ("oci:/srv/layout:1.0", "oci:/srv/layout:1.0"),
        ("oci-archive:/srv/x.tar:latest", "oci-archive:/srv/x.tar:latest"),
        ("docker-archive:/srv/x.tar", "docker-archive:/srv/x.tar"),
        ("docker-archive:/srv/x.tar:app:1.0", "docker-archive:/srv/x.tar:app:1.0"),
        # Made absolute: the store keeps the name after this directory is gone.
        ("oci:layout:1.0", f"oci:{Path.cwd() / 'layout'}:1.0"),
    ],
)
def test_skopeo_transports_are_kept_as_written(spec: str, name: str) -> None:
    image = parse_image(spec)
    assert image.type == Image.DOCKER
    assert image.docker.name == name


def test_a_transport_path_with_a_colon_is_taken_whole_when_only_that_exists(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "busybox:1.0.tar"
    archive.write_bytes(b"")
    assert parse_image(f"oci-archive:{archive}").docker.name == f"oci-archive:{archive}"
    # Where the part before the colon exists, it is the path, as in skopeo.
    (tmp_path / "busybox").write_bytes(b"")
    name = parse_image(f"oci-archive:{tmp_path / 'busybox'}:1.0.tar").docker.name
    assert name == f"oci-archive:{tmp_path / 'busybox'}:1.0.tar"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("oci:", "no path"),
        ("oci-archive:/x.tar:", "empty REF"),
        ("docker-archive:/x.tar:@0", "want docker-archive:FILE[:NAME[:TAG]]"),
        ("containers-storage:busybox", "transport is not supported"),
        ("dir:/srv/image", "transport is not supported"),
    ],
)
def test_bad_transports(spec: str, reason: str) -> None:
    with pytest.raises(BadImage) as caught:
        parse_image(spec)
    assert reason in str(caught.value)


def test_an_image_file_may_name_a_transport(tmp_path: Path) -> None:
    path = tmp_path / "image.json"
    path.write_text(json.dumps({"type": "DOCKER", "docker": {"name": "oci:/srv/layout:1.0"}}))
    assert image_from_file(path).docker.name == "oci:/srv/layout:1.0"
