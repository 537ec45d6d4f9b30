"""Appc images as ``images`` lists, removes and keeps them, through the real command.

- ``images -q`` printed an appc image's ``sha512:`` digest, which ``images rm``
  refused (it took ``sha256:`` digests only).
- An appc Image message in ``excluded_images`` never matched the stored
  ``appc:NAME...`` reference: ``prune`` removed the image it excluded.
- ``appc:WRONG@sha512-ID`` took the stored image ``ID`` whatever its name, and
  recorded it under the name and labels written.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.acis import aci_bytes, manifest_doc, put_aci
from tests.support.lazyfs_cli import AppcLazyfs, one_line_error


def _references(lazyfs: AppcLazyfs) -> list[str]:
    return sorted(item["reference"] for item in json.loads(lazyfs("images", "--json").stdout))


def _pull(lazyfs: AppcLazyfs, aci_dir: Path, name: str, files: dict[str, bytes | str]) -> str:
    """Put the ACI ``name`` (version 1.0) to be discovered, and store it by a
    provision and destroy; its image id."""
    doc = manifest_doc(name, version="1.0")
    put_aci(aci_dir, name, aci_bytes(doc, files), version="1.0")
    info = json.loads(lazyfs("provision", "c", f"appc:{name},version=1.0").stdout)
    lazyfs("destroy", "c")
    return "sha512-" + str(info["image"]["digest"]).removeprefix("sha512:")


def test_what_images_q_prints_images_rm_takes(appc_lazyfs: AppcLazyfs, aci_dir: Path) -> None:
    _pull(appc_lazyfs, aci_dir, "example.com/app", {"a": b"1"})
    _pull(appc_lazyfs, aci_dir, "example.com/other", {"b": b"2"})
    digests = appc_lazyfs("images", "-q").stdout.split()
    assert len(digests) == 2
    assert all(digest.startswith("sha512:") for digest in digests)
    appc_lazyfs("images", "rm", *digests)
    assert _references(appc_lazyfs) == []


def test_an_appc_image_message_excludes_the_stored_image_it_names(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    _pull(appc_lazyfs, aci_dir, "example.com/app", {"a": b"1"})
    _pull(appc_lazyfs, aci_dir, "example.com/other", {"b": b"2"})
    labels = {"labels": [{"key": "version", "value": "1.0"}]}
    excluded = {"type": "APPC", "appc": {"name": "example.com/app", "labels": labels}}
    config = json.dumps({"excluded_images": [excluded]})
    appc_lazyfs("--image_gc_config", config, "images", "prune")
    assert _references(appc_lazyfs) == ["appc:example.com/app,version=1.0"]


def test_an_image_pinned_by_id_must_have_the_name_and_labels_written(
    appc_lazyfs: AppcLazyfs, aci_dir: Path
) -> None:
    image_id = _pull(appc_lazyfs, aci_dir, "example.com/app", {"a": b"1"})
    for wrong, message in [
        (
            f"appc:example.com/wrong@{image_id}",
            "is named 'example.com/app', not 'example.com/wrong'",
        ),
        (f"appc:example.com/app,version=2.0@{image_id}", "has the label version='1.0', not '2.0'"),
    ]:
        line = one_line_error(appc_lazyfs("provision", "c", wrong, prefix="", check=False))
        assert message in line
    # Nothing recorded under what was written: only the image as it was pulled.
    assert _references(appc_lazyfs) == ["appc:example.com/app,version=1.0"]
    # The name and labels it has still pin it.
    appc_lazyfs("provision", "c", f"appc:example.com/app,version=1.0@{image_id}", prefix="")
    appc_lazyfs("destroy", "c")
