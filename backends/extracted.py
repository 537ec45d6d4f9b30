"""Layers extracted once into the store, shared by every container using them.

``extracted_layer(layers_dir, tmp_dir, layer, form, limits)`` returns
``<layers_dir>/<hex>/<form>-v2``, the tree of one layer blob (``-v2``: made
by the layer rules of ``providers.layer_entry``; trees of earlier rules are
left alone and not used):

- ``rootfs``: the layer applied to an empty directory, whiteouts applied
  (there is nothing under them to hide), as the bind backend mounts it;
- ``overlay``: the layer in overlayfs' lower-layer form (whiteouts as 0/0
  character devices, opaque directories marked), as the overlay backend
  stacks it.  Next to it, ``overlay-v2.dirs.json`` lists the directories the
  layer made without a header and says whether it had one for its root
  (``backends.apply_tree.MadeDirs``), read back with ``made_dirs``.

An image may hold one layer twice, and overlayfs takes no directory twice in
one mount: ``replica`` n > 0 asks for another copy of the same tree,
``<form>-v2.<n>``.

``stale_name`` tells image GC which names in ``<layers_dir>/<hex>`` are
trees (or sidecars) of earlier rules that no backend uses any more: ``rootfs``
and ``overlay`` of before ``-v2``, with their ``.implicit.json`` sidecar.

Extraction is atomic and happens once: under an flock on
``<layers_dir>/<hex>/lock`` the tree is built in a scratch directory
``<tmp_dir>/<pid>.<random>`` (on the same filesystem, so the store's clean-up
finds what a crashed extraction left) and renamed into place, its sidecar
first, once what it wrote is on disk (``providers.durable``).  A tree that
is present is complete and never changes afterwards.
``<layers_dir>/<hex>`` is closed to other users (``0700``, see
``providers.private_dir``): the tree holds the layer's setuid files.
Blocking.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Literal

from backends.apply import LayerFile, apply_layers
from backends.apply_tree import MadeDirs
from providers.digest import hex_part
from providers.durable import sync_directory, written_back
from providers.errors import BackendError
from providers.fslock import exclusive_lock
from providers.locked_temps import locked_scratch
from providers.private_dir import private_dir, write_private
from providers.tar_stream import LayerLimits

Form = Literal["rootfs", "overlay"]
FORMS: tuple[Form, ...] = ("rootfs", "overlay")
_VERSION = "-v2"
_DIRS_SUFFIX = ".dirs.json"
# A tree's name: its form, the version of the rules that made it, a replica
# number, a sidecar's suffix.  Versions before -v2 had no suffix; their
# sidecar was .implicit.json.
_TREE_NAME = re.compile(
    r"(?P<form>rootfs|overlay)(?P<version>-v\d+)?(?:\.\d+)?(?P<sidecar>\.dirs\.json|\.implicit\.json)?"
)


def stale_name(name: str) -> bool:
    """Whether ``name`` in a layer's store directory is a tree (or its sidecar) of earlier rules.

    False for the trees of these rules and for any name that is no tree's:
    only what an earlier lazyfs made is stale, never what a later one might.
    """
    found = _TREE_NAME.fullmatch(name)
    if found is None:
        return False
    version = found["version"]
    if version is None:
        return True  # made before trees were versioned
    return int(version[2:]) < int(_VERSION[2:])


def extracted_layer(
    layers_dir: Path,
    tmp_dir: Path,
    layer: LayerFile,
    form: Form,
    limits: LayerLimits | None = None,
    *,
    replica: int = 0,
) -> Path:
    """The tree of ``layer`` in ``form`` (copy ``replica``) in the store; extracted if missing.

    Extraction refuses a layer that unpacks past ``limits`` (BadImage), leaving nothing.
    """
    home = layers_dir / hex_part(layer.digest)
    target = home / (f"{form}{_VERSION}.{replica}" if replica else f"{form}{_VERSION}")
    if target.is_dir():
        return target
    private_dir(home)
    with exclusive_lock(home / "lock"):
        if target.is_dir():  # another process extracted it while we waited
            return target
        # Flocked while it is made (no cleaner of the store's tmp/ takes it meanwhile);
        # the layer may be deeper than shutil.rmtree can recurse: remove_tree.
        with locked_scratch(tmp_dir) as scratch:
            tree = scratch / target.name
            sidecar = scratch / (target.name + _DIRS_SUFFIX)
            # Its bytes on disk before its name promises them, a crash or a power cut
            # after (a tree present is trusted whole, by every container of the layer).
            with written_back(scratch):
                tree.mkdir(mode=0o755)
                whiteouts: Literal["apply", "overlay"] = "overlay" if form == "overlay" else "apply"
                made = apply_layers(tree, [layer], whiteouts=whiteouts, limits=limits)
                if form == "overlay":
                    write_private(sidecar, _dirs_record(made).encode())
            if form == "overlay":
                # The tree's presence promises its sidecar: rename that first.
                os.rename(sidecar, home / sidecar.name)
            _rename_dir(tree, target)
            sync_directory(home)
    return target


def _rename_dir(tree: Path, target: Path) -> None:
    """Rename the directory ``tree`` to ``target``, in another directory.

    Moving a directory to another one rewrites its ``..``, which needs write
    permission on it: a user who is not root lacks it where the layer gave
    its root a mode such as 0555.  Then its owner gets it for the rename and
    the layer's mode is set back at once, on disk too (a crash in between
    leaves a tree whose root its owner may write in, nothing else).
    """
    mode = stat.S_IMODE(tree.stat().st_mode)
    if os.geteuid() == 0 or mode & stat.S_IWUSR:
        os.rename(tree, target)
        return
    tree.chmod(mode | stat.S_IWUSR)
    with written_back(target.parent):
        os.rename(tree, target)
        target.chmod(mode)


def _dirs_record(made: MadeDirs) -> str:
    """The sidecar of an overlay tree: what ``made_dirs`` reads back."""
    fields = {"implicit": made.implicit, "marker_only": made.marker_only}
    fields.update(kept=made.kept, whiteout_dirs=made.whiteout_dirs, walked=made.walked)
    record: dict[str, object] = {key: sorted(map(list, paths)) for key, paths in fields.items()}
    record["root_header"] = made.root_header
    return json.dumps(record)


def made_dirs(tree: Path) -> MadeDirs:
    """The directories the layer at ``tree`` (an ``overlay`` form) made on its own.

    A sidecar written before ``root_header`` was recorded gives None there,
    not known; ``backends.overlay_dirs`` says what it makes of that.
    """
    sidecar = tree.with_name(tree.name + _DIRS_SUFFIX)
    try:
        data = json.loads(sidecar.read_text())
        paths = {
            key: frozenset(tuple(str(part) for part in path) for path in data[key])
            for key in ("implicit", "marker_only", "kept", "whiteout_dirs", "walked")
        }
        root_header = data.get("root_header")
        if root_header is not None and not isinstance(root_header, bool):
            raise TypeError(f"root_header is {root_header!r}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BackendError(f"extracted layer {tree} has no readable {sidecar.name}") from error
    return MadeDirs(**paths, root_header=root_header)
