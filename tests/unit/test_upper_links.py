"""A writable mount's upper never links to a host file through an image's symlink.

An image may hold a symlink to a host path (``evil -> /etc/shadow``) with a
second name (a tar hardlink ``evil2 -> evil``). Copying that node up makes
its second name a hardlink of the first in the upper; ``linkat`` follows a
symlink unless told not to, and would link the host file into the upper,
where later ``chown -h`` or xattr changes through the container land on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lazyfs.blobs.ranges import open_layers
from lazyfs.fs.upper import Upper
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import digest_bytes
from tests.support.images import Entry, write_layer


def test_copying_up_a_symlink_with_two_names_links_the_symlink_not_its_target(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "host-secret"  # on the upper's filesystem, as /etc/shadow may be
    secret.write_text("host\n")
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    entries = [
        Entry("evil", "symlink", target=str(secret)),
        Entry("evil2", "hardlink", target="evil"),
    ]
    blob = write_layer(entries, tmp_path / "layer.tar")
    digest = digest_bytes(blob.read_bytes())
    index = ensure_index(layers, tmp, digest, blob)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    reader = open_layers({digest: check_data_present(layers, blob, index)})
    view = Upper(merge([index]), upper, work, reader)
    node = view.lookup(ROOT_INO, b"evil")
    assert node is not None and len(node.names) == 2
    view.copy_up_meta(node)
    host = os.stat(secret)
    for name in ("evil", "evil2"):
        copied = os.lstat(upper / name)
        assert (copied.st_dev, copied.st_ino) != (host.st_dev, host.st_ino), name
        assert os.readlink(upper / name) == str(secret)
    assert host.st_nlink == 1
