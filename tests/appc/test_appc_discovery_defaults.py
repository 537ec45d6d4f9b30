"""Simple discovery keeps only an image the store finds again: the spec's defaults count.

A request without ``os`` or ``arch`` labels is looked up in the store with
the defaults (linux, the host's arch); discovery used to check only the
labels asked for, so an ACI for another arch was kept, never found, and
fetched again by every provision. No version is implied: a publisher's
``latest`` ACI is, as a rule, a link to one labelled with its own version.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.appc_source import AppcDiscoverySource, AppcStoreSource
from providers.appc_store import AppcStore, host_arch
from providers.errors import BadImage
from tests.support.acis import aci_bytes, manifest_doc, put_aci
from tests.support.lazyfs_cli import AppcLazyfs, one_line_error

OTHER_ARCH = "arm64" if host_arch() != "arm64" else "amd64"


def _doc(name: str, **labels: str) -> dict[str, object]:
    doc = manifest_doc(name)
    doc["labels"] = [{"name": k, "value": v} for k, v in labels.items()]
    return doc


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        ({"version": "1.0", "os": "linux", "arch": OTHER_ARCH}, f"arch={OTHER_ARCH!r}, not "),
        ({"version": "1.0", "os": "freebsd", "arch": host_arch()}, "os='freebsd', not 'linux'"),
    ],
)
def test_an_aci_for_another_os_or_arch_is_refused_and_not_kept(
    tmp_path: Path, aci_dir: Path, http_prefix: str, labels: dict[str, str], said: str
) -> None:
    # Served where linux and the host's arch are looked for (the request names neither).
    put_aci(aci_dir, "example.com/app", aci_bytes(_doc("example.com/app", **labels)), "1.0")
    store = AppcStore(tmp_path / "store")
    with pytest.raises(BadImage) as refused:
        AppcDiscoverySource(store, http_prefix).resolve("example.com/app,version=1.0")
    assert f"appc image {http_prefix}example.com/app-1.0-linux-" in str(refused.value)
    assert f"has the label {said}" in str(refused.value)
    assert list(store.images.iterdir()) == []


def test_an_aci_served_as_latest_with_its_own_version_is_taken(
    tmp_path: Path, aci_dir: Path, http_prefix: str
) -> None:
    # Asked for without a version: name-latest-OS-ARCH.aci, labelled 1.0 by its publisher.
    put_aci(aci_dir, "example.com/app", aci_bytes(manifest_doc("example.com/app", version="1.0")))
    store = AppcStore(tmp_path / "store")
    fetched = AppcDiscoverySource(store, http_prefix).resolve("example.com/app")
    assert fetched.layers and len(list(store.images.iterdir())) == 1


@pytest.mark.parametrize(
    "labels",
    [
        {"version": "1.0", "os": "linux", "arch": host_arch()},
        {"version": "1.0"},  # no os or arch label: the default matches
    ],
)
def test_an_aci_discovery_keeps_is_found_again_in_the_store(
    tmp_path: Path, aci_dir: Path, http_prefix: str, labels: dict[str, str]
) -> None:
    put_aci(aci_dir, "example.com/app", aci_bytes(_doc("example.com/app", **labels)), "1.0")
    store = AppcStore(tmp_path / "store")
    fetched = AppcDiscoverySource(store, http_prefix).resolve("example.com/app,version=1.0")
    stored = AppcStoreSource(store).resolve("example.com/app,version=1.0")
    assert stored.digest == fetched.digest


def test_a_dependency_for_another_arch_is_refused(
    appc_lazyfs: AppcLazyfs, aci_dir: Path, http_prefix: str
) -> None:
    dep = _doc("example.com/dep", version="1.0", os="linux", arch=OTHER_ARCH)
    put_aci(aci_dir, "example.com/dep", aci_bytes(dep, {"d": b"dep"}), "1.0")
    wants = [{"imageName": "example.com/dep", "labels": [{"name": "version", "value": "1.0"}]}]
    top = aci_bytes(manifest_doc("example.com/top", dependencies=wants), {"t": b"top"})
    put_aci(aci_dir, "example.com/top", top)
    result = appc_lazyfs("provision", "c1", "appc:example.com/top", check=False, prefix=http_prefix)
    line = one_line_error(result)
    assert f"example.com/dep-1.0-linux-{host_arch()}.aci has the label arch=" in line
    images = appc_lazyfs.work_dir / "store" / "appc" / "images"
    assert len(list(images.iterdir())) == 1  # the top image only
