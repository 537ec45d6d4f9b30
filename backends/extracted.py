"""Layers extracted once into the store, shared by every container using them.

``extracted_layer(layers_dir, tmp_dir, layer, form, limits)`` returns
``<layers_dir>/<hex>/<form>``, the tree of one layer blob:

- ``rootfs``: the layer applied to an empty directory, whiteouts applied
  (there is nothing under them to hide), as the bind backend mounts it;
- ``overlay``: the layer in overlayfs' lower-layer form (whiteouts as 0/0
  character devices, opaque directories marked), as the overlay backend
  stacks it.  Next to it, ``overlay.implicit.json`` lists the directories the
  layer made without a header (see ``backends.apply``), read back with
  ``implicit_dirs``.

Extraction is atomic and happens once: under an flock on
``<layers_dir>/<hex>/lock`` the tree is built in a scratch directory
``<tmp_dir>/<pid>.<random>`` (on the same filesystem, so the store's clean-up
finds what a crashed extraction left) and renamed into place, its sidecar
first.  A tree that is present is complete and never changes afterwards.
``<layers_dir>/<hex>`` is closed to other users (``0700``, see
``providers.private_dir``): the tree holds the layer's setuid files.
Blocking.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from backends.apply import apply_layers
from backends.base import LayerFile
from providers.digest import hex_part
from providers.errors import BackendError
from providers.fslock import exclusive_lock
from providers.fstree import remove_tree
from providers.layer_rules import RelPath
from providers.private_dir import private_dir
from providers.tar_stream import LayerLimits

Form = Literal["rootfs", "overlay"]
_IMPLICIT_SUFFIX = ".implicit.json"


def extracted_layer(
    layers_dir: Path,
    tmp_dir: Path,
    layer: LayerFile,
    form: Form,
    limits: LayerLimits | None = None,
) -> Path:
    """The tree of ``layer`` in ``form`` under the store, extracted if missing.

    Extraction refuses a layer that unpacks past ``limits`` (BadImage), leaving nothing.
    """
    home = layers_dir / hex_part(layer.digest)
    target = home / form
    if target.is_dir():
        return target
    private_dir(home)
    with exclusive_lock(home / "lock"):
        if target.is_dir():  # another process extracted it while we waited
            return target
        scratch = Path(tempfile.mkdtemp(dir=tmp_dir, prefix=f"{os.getpid()}."))
        try:
            tree = scratch / form
            tree.mkdir(mode=0o755)
            whiteouts: Literal["apply", "overlay"] = "overlay" if form == "overlay" else "apply"
            implicit = apply_layers(tree, [layer], whiteouts=whiteouts, limits=limits)
            if form == "overlay":
                sidecar = scratch / (form + _IMPLICIT_SUFFIX)
                sidecar.write_text(json.dumps(sorted(list(p) for p in implicit)))
                # The tree's presence promises its sidecar: rename that first.
                os.rename(sidecar, home / sidecar.name)
            os.rename(tree, target)
        finally:
            # The layer may be deeper than shutil.rmtree can recurse.
            with contextlib.suppress(OSError):
                remove_tree(scratch)
    return target


def implicit_dirs(tree: Path) -> frozenset[RelPath]:
    """The directories the layer at ``tree`` (an ``overlay`` form) made on its own."""
    sidecar = tree.with_name(tree.name + _IMPLICIT_SUFFIX)
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError) as error:
        raise BackendError(f"extracted layer {tree} has no readable {sidecar.name}") from error
    return frozenset(tuple(str(part) for part in path) for path in data)
