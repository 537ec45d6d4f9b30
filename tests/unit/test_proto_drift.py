"""The committed protobuf code is what scripts/gen-proto makes from the .proto.

Fails when someone edits a .proto (providers/image.proto,
lazyfs/cache/cache.proto) without regenerating, or edits the generated files
by hand. Runs the script itself, so the test and the
script cannot disagree about how the code is generated.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from providers.image_pb2 import Image

ROOT = Path(__file__).resolve().parents[2]
GENERATED = (
    "providers/image_pb2.py",
    "providers/image_pb2.pyi",
    "lazyfs/cache/cache_pb2.py",
    "lazyfs/cache/cache_pb2.pyi",
)


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    # The interpreter running the tests has the pinned grpcio-tools (dev extras).
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        [str(ROOT / "scripts" / "gen-proto"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen-proto failed:\n{result.stderr}"
    stale = [
        name for name in GENERATED if (tmp_path / name).read_bytes() != (ROOT / name).read_bytes()
    ]
    version = metadata.version("grpcio-tools")
    assert not stale, (
        f"{', '.join(stale)} differ from what scripts/gen-proto makes from their .proto "
        f"(with grpcio-tools {version}, pinned in pyproject.toml): run scripts/gen-proto and "
        "commit the result"
    )


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        # Mesos' numbers: an Image encoded by a Mesos agent decodes the same here.
        ("Image", "type", 1),
        ("Image", "appc", 2),
        ("Image", "docker", 3),
        ("Image", "cached", 4),
        ("Image.Appc", "name", 1),
        ("Image.Appc", "id", 2),
        ("Image.Appc", "labels", 3),
        ("Image.Docker", "name", 1),
        ("Image.Docker", "credential", 2),
        ("Image.Docker", "config", 3),
        ("Volume", "container_path", 1),
        ("Volume", "host_path", 2),
        ("Volume", "mode", 3),
        ("Volume", "image", 4),
        ("Credential", "principal", 1),
        ("Credential", "secret", 2),
        ("Labels", "labels", 1),
        ("Label", "key", 1),
        ("Label", "value", 2),
    ],
)
def test_field_numbers_match_mesos(message: str, field: str, number: int) -> None:
    descriptor = Image.DESCRIPTOR.file.message_types_by_name[message.split(".")[0]]
    for nested in message.split(".")[1:]:
        descriptor = descriptor.nested_types_by_name[nested]
    assert descriptor.fields_by_name[field].number == number


def test_cached_defaults_to_true() -> None:
    image = Image(type=Image.DOCKER)
    assert image.cached
    assert not image.HasField("cached")
    assert Image.FromString(image.SerializeToString()).cached
