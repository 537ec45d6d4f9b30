"""Layer indexes kept in the store: read back, checked, built once per layer.

``<layers_dir>/<hex>/`` holds a layer's ``index.json`` and what it points
into (``lazyfs.index.model.layer_data``): the zstd copy ``tar`` or the gzip
checkpoints ``gzip-index``.

``ensure_index`` builds and stores the index once per layer digest, with
what it points into: under an flock, each file written to a scratch
directory and renamed into place, the index last, so a present index.json
implies its tar copy or checkpoint file is complete.  It reads them back on
every later call.  ``load_index`` and ``check_data_present`` are what a
mount process needs: they read, and never build.  Blocking.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.index.model import (
    INDEX_NAME,
    TAR_NAME,
    LayerData,
    LayerIndex,
    dumps,
    layer_data,
    loads,
    stored_files,
)
from providers.digest import Digest, hex_part
from providers.errors import BadImage
from providers.fslock import exclusive_lock

if TYPE_CHECKING:
    # Only building an index needs the tar parsers, not a mount process.
    from providers.tar_stream import LayerLimits


def index_path(layers_dir: Path, digest: Digest) -> Path:
    return layers_dir / hex_part(digest) / INDEX_NAME


def load_index(layers_dir: Path, digest: Digest, *, entries: bool = True) -> LayerIndex | None:
    """The stored index of ``digest``; None if there is none or it is stale or damaged.

    ``entries=False``: its header only (no entries), read from the first line.
    """
    try:
        with index_path(layers_dir, digest).open(encoding="utf-8") as stream:
            text = stream.read() if entries else stream.readline()
        index = loads(text, entries=entries)
    except (OSError, ValueError):
        return None
    return index if index.digest == digest else None


def ensure_index(
    layers_dir: Path,
    tmp_dir: Path,
    digest: Digest,
    blob: Path,
    *,
    entries: bool = True,
    limits: LayerLimits | None = None,
) -> LayerIndex:
    """The index of the verified layer blob ``blob``, built and stored if missing.

    Rebuilt too when what it points into (``check_data_present``) is gone
    or damaged.  The zstd copy or gzip checkpoints are renamed into place
    before the index that promises them; a gzip layer's tar copy left by
    format 1 is removed.  With ``entries=False`` a stored index is checked
    and returned by its header alone (no entries): what a caller that only
    makes sure the index is there needs.  Raises BadImage for a corrupt
    layer or one that unpacks past ``limits`` (a stored index was built
    within the limits of its day), UnsafeLayer for a hostile one; nothing
    is stored then.
    """
    found = _usable(layers_dir, blob, load_index(layers_dir, digest, entries=entries))
    if found is not None:
        return found
    # Here to keep the build (tarfile, decompressors) out of mount startup.
    from lazyfs.index.build import build_index

    home = layers_dir / hex_part(digest)
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / "lock"):
        found = _usable(layers_dir, blob, load_index(layers_dir, digest))
        if found is not None:  # another process built it while we waited
            return found
        scratch = Path(tempfile.mkdtemp(dir=tmp_dir, prefix=f"{os.getpid()}."))
        try:
            index = build_index(digest, blob, scratch, limits=limits)
            for name in stored_files(index):
                os.rename(scratch / name, home / name)
            if index.compression == "gzip":
                _drop_old_copy(home / TAR_NAME)
            staged = scratch / INDEX_NAME
            staged.write_text(dumps(index), encoding="utf-8")
            os.rename(staged, home / INDEX_NAME)
        finally:
            # Never one cleanup error in place of the build's own.
            shutil.rmtree(scratch, ignore_errors=True)
    return index


def _drop_old_copy(tar: Path) -> None:
    """Remove format 1's tar copy of a gzip layer, unless a mount process still names it.

    Format 1's mount processes were started with ``--layer DIGEST=<the copy>``
    and open it on their first read of the layer: removing it under one of
    them would turn its reads into EIO.  Such a copy stays until a rebuild
    finds it unused.
    """
    if not tar.exists():
        return
    named = b"=" + os.fsencode(tar) + b"\0"
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if named in (process / "cmdline").read_bytes():
                return
        except OSError:
            continue  # gone meanwhile, or not ours to read
    tar.unlink(missing_ok=True)


def _usable(layers_dir: Path, blob: Path, index: LayerIndex | None) -> LayerIndex | None:
    """``index``, unless what it points into went missing or changed size."""
    if index is None:
        return None
    try:
        check_data_present(layers_dir, blob, index)
    except BadImage:
        return None  # built again, its files first
    return index


def check_data_present(layers_dir: Path, blob: Path, index: LayerIndex) -> LayerData:
    """``layer_data``, refusing an index whose tar copy or checkpoint file is unusable.

    Cheap (a stat, an open): the tar copy must have ``tar_size`` bytes, the
    checkpoint file must open for reading and have ``checkpoints_size``.
    """
    data = layer_data(layers_dir, blob, index)
    try:
        size = data.path.stat().st_size
    except OSError as error:
        raise BadImage(
            f"layer {index.digest}: its tar data {data.path} is unreadable: {error}"
        ) from None
    if index.compression == "zstd" and size != index.tar_size:
        raise BadImage(f"layer {index.digest}: {data.path} has {size} bytes, want {index.tar_size}")
    if data.checkpoints is not None:
        try:
            with data.checkpoints.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
        except OSError as error:
            raise BadImage(
                f"layer {index.digest}: its checkpoints {data.checkpoints} are unreadable: {error}"
            ) from None
        if size != index.checkpoints_size:
            raise BadImage(
                f"layer {index.digest}: its checkpoints {data.checkpoints} have {size} bytes,"
                f" want {index.checkpoints_size}"
            )
    return data
