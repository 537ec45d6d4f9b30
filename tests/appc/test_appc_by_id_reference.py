"""An appc image provisioned by id is listed as a reference the command line takes back.

It was listed as ``appc:sha512-HEX``: the id read as an image name, which
``run`` and ``provision`` looked up by discovery and did not find.  Now it
is ``appc:NAME[,LABEL=VALUE...]@sha512-HEX``, which names that one image.
Also an appc image with labels as a ``--volume`` without a mode, through the
command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.images.spec import parse_image
from providers.errors import BadImage
from providers.image_pb2 import Image
from tests.support.acis import aci_bytes, manifest_doc, put_aci
from tests.support.lazyfs_cli import AppcLazyfs

ID = "sha512-" + "ab" * 64


def _id_of(info: dict[str, object]) -> str:
    image = info["image"]
    assert isinstance(image, dict)
    return "sha512-" + str(image["digest"]).removeprefix("sha512:")


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        (f"appc:example.com/app,version=1.0,os=linux@{ID}", [("version", "1.0"), ("os", "linux")]),
        (f"appc:example.com/app@{ID}", []),
    ],
)
def test_an_appc_reference_may_pin_its_id(text: str, labels: list[tuple[str, str]]) -> None:
    image = parse_image(text)
    assert image.type == Image.APPC
    assert (image.appc.name, image.appc.id) == ("example.com/app", ID)
    assert [(label.key, label.value) for label in image.appc.labels.labels] == labels


@pytest.mark.parametrize(
    "text", ["appc:example.com/app@sha512-abc", f"appc:example.com/app@{ID}0", "appc:@" + ID[1:]]
)
def test_a_malformed_pinned_id_is_refused(text: str) -> None:
    with pytest.raises(BadImage) as refused:
        parse_image(text)
    assert "\n" not in str(refused.value)


def test_an_image_provisioned_by_id_is_listed_as_a_reference_that_runs_and_is_removed(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, tmp_path: Path
) -> None:
    doc = manifest_doc("example.com/app", version="1.0")
    put_aci(aci_dir, "example.com/app", aci_bytes(doc, {"v": b"1"}), version="1.0")
    first = json.loads(appc_lazyfs("provision", "c1", "appc:example.com/app,version=1.0").stdout)
    image_id = _id_of(first)
    appc_lazyfs("destroy", "c1")
    spec = tmp_path / "image.json"
    labels = {"labels": [{"key": "version", "value": "1.0"}]}
    appc = {"name": "example.com/app", "id": image_id, "labels": labels}
    spec.write_text(json.dumps({"type": "APPC", "appc": appc}))
    appc_lazyfs("provision", "c2", "--image-file", str(spec), prefix="")
    appc_lazyfs("destroy", "c2")
    listed = json.loads(appc_lazyfs("images", "--json").stdout)
    by_id = f"appc:example.com/app,version=1.0@{image_id}"
    assert sorted(item["reference"] for item in listed) == sorted(
        ["appc:example.com/app,version=1.0", by_id]
    )
    # What is listed provisions the same image, from the store alone.
    again = json.loads(appc_lazyfs("provision", "c3", by_id, prefix="").stdout)
    assert _id_of(again) == image_id
    assert (Path(str(again["rootfs"])) / "v").read_bytes() == b"1"
    appc_lazyfs("destroy", "c3")
    appc_lazyfs("images", "rm", by_id)
    listed = json.loads(appc_lazyfs("images", "--json").stdout)
    assert [item["reference"] for item in listed] == ["appc:example.com/app,version=1.0"]


def test_an_appc_image_with_labels_is_a_volume_without_a_mode(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    put_aci(aci_dir, "example.com/base", aci_bytes(manifest_doc("example.com/base"), {"b": b"b"}))
    doc = manifest_doc("example.com/hello", version="1.0")
    put_aci(aci_dir, "example.com/hello", aci_bytes(doc, {"etc/who": b"hello\n"}), version="1.0")
    volume = "/opt/app:appc:example.com/hello,version=1.0"
    result = appc_lazyfs("provision", "c1", "appc:example.com/base", "--volume", volume)
    try:
        (made,) = json.loads(result.stdout)["volumes"]
        assert (made["container_path"], made["mode"]) == ("/opt/app", "ro")
        assert made["image"]["reference"] == "appc:example.com/hello,version=1.0"
        assert (Path(made["rootfs"]) / "etc" / "who").read_bytes() == b"hello\n"
    finally:
        appc_lazyfs("destroy", "c1")
