"""``lazyfs images`` as a new user reads it: UNPACKED is the layers' tar bytes or
``-``, never an eStargz index's internal layout; its usage shows the action optional."""

from __future__ import annotations

import argparse
from pathlib import Path

from lazyfs.cli import build_parser
from lazyfs.cli_images import unpacked_size
from lazyfs.index.model import LayerIndex, dumps
from lazyfs.index.stored import index_path
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.manifest import ImageManifest, Layer

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
FIRST, SECOND = Digest("sha256:" + "a" * 64), Digest("sha256:" + "b" * 64)
MANIFEST = ImageManifest(
    "registry.test/app:1",
    Digest("sha256:" + "c" * 64),
    (Layer(FIRST, GZIP, 1000), Layer(SECOND, GZIP, 2000)),
)


def _indexed(store: Store, digest: Digest, compression: str, tar_size: int) -> None:
    path = index_path(store.layers, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(LayerIndex(digest, compression, tar_size, ())))


def test_indexed_gzip_layers_add_up_their_tar_sizes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _indexed(store, FIRST, "gzip", 3072)
    _indexed(store, SECOND, "gzip", 10240)
    assert unpacked_size(store, MANIFEST) == 3072 + 10240


def test_an_estargz_index_gives_no_unpacked_size(tmp_path: Path) -> None:
    # The README walkthrough's busybox: its index's end of the aligned files,
    # where the layer's tar is 2,168,832 bytes. Not known: shown as "-".
    store = Store(tmp_path / "store")
    _indexed(store, FIRST, "gzip", 3072)
    _indexed(store, SECOND, "estargz", 4079490)
    assert unpacked_size(store, MANIFEST) is None


def _images_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    images: argparse.ArgumentParser = commands.choices["images"]
    return images


def test_images_usage_shows_the_action_optional() -> None:
    images = _images_parser()
    assert images.format_usage() == "usage: lazyfs images [-h] [--json] [-q] [rm REF... | prune]\n"
    # The actions' own names are unchanged by it.
    (actions,) = (a for a in images._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(p.prog for p in actions.choices.values()) == [
        "lazyfs images prune",
        "lazyfs images rm",
    ]
    # And no action is needed: a plain ``images`` parses.
    assert build_parser().parse_args(["images"]).images_action is None
