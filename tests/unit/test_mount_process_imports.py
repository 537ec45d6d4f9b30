"""A mount process of local layers loads only what serving them needs.

A mount process starts for every fuse rootfs, so what it imports is part of
every container's start.  The cache daemon's client and its protocol
(protobuf), the eStargz TOC and chunk code, the writable operations and the
tar parsers are for remote layers, eStargz layers, writable mounts and
building indexes, and ``lazyfs.fs.mount`` is for the mount's caller: a
read-only mount of local plain layers whose indexes are stored loads none
of them, neither when it merges their tree nor when it loads the tree kept
from an earlier mount, nor the daemon's remote-layer values, the mount
server's code or the request log.  Every module of lazyfs and providers it
loads is named in ``START_MODULES``, so a new one on this path is a choice.
Checked in a fresh interpreter, by the modules it has loaded: importing
``lazyfs.fs.mount_main``, and then running the steps its ``main`` runs
before mounting.
"""

from __future__ import annotations

import functools
import io
import subprocess
import sys
from pathlib import Path

from lazyfs.fs.mount_wire import layer_arg
from lazyfs.index.stored import ensure_index
from lazyfs.store.disk import Store
from lazyfs.tree.kept import tree_path
from providers.digest import digest_bytes
from providers.manifest import OCI_LAYER_TAR, Layer
from tests.support.images import Entry, whiteout, write_layer

ROOT = Path(__file__).resolve().parents[2]
# Loaded by a mount that needs them, never by a read-only one of local plain layers.
NOT_FOR_LOCAL_LAYERS = {
    "google.protobuf",
    "lazyfs.cache",  # the daemon's client and protocol, and the remote layers' origins
    "lazyfs.index.estargz",
    "lazyfs.index.estargz_toc",
    "lazyfs.index.estargz_chunks",
    "lazyfs.index.estargz_index",
    "lazyfs.blobs.estargz_reader",
}
NOT_FOR_READ_ONLY = {"lazyfs.fs.upper", "lazyfs.fs.writable", "lazyfs.fs.writable_no_open"}
# The caller's side of the mount API and of the mount server: the process it
# starts needs only the wire format. The request log is for --debug alone.
NOT_FOR_THE_MOUNT_PROCESS = {
    "lazyfs.fs.mount",
    "lazyfs.fs.mount_server",
    "lazyfs.fs.mount_server_client",
    "lazyfs.fs.mount_server_wire",
    "lazyfs.fs.debug",
}
NOT_FOR_STORED_INDEXES = {"tarfile", "providers.tar_stream", "providers.tar_sparse", "zstandard"}
# Reading through gzip checkpoints (indexed_gzip, which also reads package metadata at import).
NOT_FOR_PLAIN_TAR = {
    "indexed_gzip",
    "lazyfs.index.gzip_checkpoints",
    "lazyfs.index.gzip_reads",
    "lazyfs.index.gzip_points",
}
NOT_LOADED = (
    NOT_FOR_LOCAL_LAYERS
    | NOT_FOR_READ_ONLY
    | NOT_FOR_STORED_INDEXES
    | NOT_FOR_THE_MOUNT_PROCESS
    | NOT_FOR_PLAIN_TAR
)
# What a mount of eStargz layers (remote, read through the daemon) imports on
# its way, each where it first needs it: no tar parser, no gzip checkpoints.
LAZY_PATH = (
    "lazyfs.fs.mount_main",
    "lazyfs.fs.mount_layers",
    "lazyfs.fs.predict_toc",
    "lazyfs.fs.predict_libs",
    "lazyfs.cache.client",
    "lazyfs.blobs.gzip_remote",
    "lazyfs.blobs.estargz_reader",
    "lazyfs.index.estargz_store",
    "lazyfs.index.stored_remote",
    "lazyfs.index.estargz_index",
)

# Every module of lazyfs and providers such a start loads, each needed by it:
# a module new on this path is a cost to every container's start, so it is
# added here only with the reason it cannot wait (or be left to its caller).
START_MODULES = {
    "lazyfs",
    "lazyfs.fs",
    "lazyfs.fs.mount_layers",
    "lazyfs.fs.mount_main",
    "lazyfs.fs.mount_options",
    "lazyfs.fs.mount_wire",
    "lazyfs.fs.caps",
    "lazyfs.fs.kernel_read_ahead",  # the mount's read-ahead is raised as it answers INIT
    "lazyfs.fs.read_only",
    "lazyfs.fs.boundary",
    "lazyfs.fs.upper_state",  # UpperError, which the handler boundary answers
    "lazyfs.fs.upper_disk",
    "lazyfs.blobs",
    "lazyfs.blobs.ranges",
    "lazyfs.index",
    "lazyfs.index.model",
    "lazyfs.index.stored",
    "lazyfs.index.formats",
    "lazyfs.index.estargz_footer",  # the stored index's tail size; no eStargz code
    # Loaded by lazyfs.index.stored for indexes published beside an image; a
    # local layer's start uses neither: a candidate to load only when asked.
    "lazyfs.index.published",
    "lazyfs.index.artifact",
    "lazyfs.store",
    "lazyfs.store.atomic",
    "lazyfs.store.blobs",
    "lazyfs.store.disk",
    "lazyfs.store.usage_lock",
    "lazyfs.tree",
    "lazyfs.tree.kept",
    "lazyfs.tree.merge",
    "lazyfs.tree.lower",  # the kept tree, mapped: read in place, not unmarshalled
    "lazyfs.tree.mapped",
    "lazyfs.tree.packed",
    "lazyfs.tree.packed_read",
    "lazyfs.tree.packed_write",
    "providers",
    "providers.config_text",  # providers.manifest's check of an image config's text
    "providers.digest",
    "providers.durable",  # lazyfs.store.atomic's sync_directory
    "providers.errors",
    "providers.extents",
    "providers.fileio",
    "providers.fslock",
    "providers.fstree",
    "providers.layer_entry",
    "providers.layer_rules",
    "providers.locked_temps",  # lazyfs.store.atomic's flocked temporary file: the tree kept
    "providers.manifest",
    "providers.private_dir",
    "providers.source",
    "providers.untrusted_json",  # the layer index's parser, for one from a registry
}

# What ``mount_main.main`` does before ``pyfuse3.init``, twice: the first
# time merges the layers' tree and keeps it, the second loads the kept one.
START = """
import sys
from pathlib import Path
from lazyfs.fs import mount_main
from lazyfs.fs.mount_wire import parse_layer_args
store, *args = sys.argv[1:]
layers = [parse_layer_args(arg) for arg in args]
for _ in range(2):
    indexed = mount_main.index_layers(Path(store), layers, None)
    mount_main._operations(indexed, None, None, no_open=False)
print("\\n".join(sys.modules))
"""


def loaded(code: str, *args: str) -> set[str]:
    """Every module a fresh interpreter has loaded after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


def unwanted(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == name or m.startswith(name + ".") for name in NOT_LOADED)
    )


def unlisted(modules: set[str]) -> list[str]:
    """The modules of lazyfs and providers loaded that ``START_MODULES`` does not name."""
    ours = {m for m in modules if m.split(".")[0] in ("lazyfs", "providers", "backends")}
    return sorted(ours - START_MODULES)


def stored_layers(tmp_path: Path) -> tuple[Store, list[Layer]]:
    """A store holding two plain tar layers and their indexes, as a mount's caller leaves it."""
    store = Store(tmp_path / "store")
    lower = [Entry("etc", "dir"), Entry("etc/a", data=b"a\n"), Entry("etc/b", data=b"b\n")]
    upper = [Entry("etc", "dir"), whiteout("etc/b"), Entry("etc/c", data=b"c\n")]
    layers: list[Layer] = []
    for number, entries in enumerate((lower, upper)):
        blob = write_layer(entries, tmp_path / f"{number}.tar").read_bytes()
        layer = Layer(digest_bytes(blob), OCI_LAYER_TAR, len(blob))
        path = store.ingest(layer, functools.partial(io.BytesIO, blob))
        ensure_index(store.layers, store.tmp, layer.digest, path)
        layers.append(layer)
    return store, layers


def test_importing_the_mount_process_loads_nothing_a_local_read_only_mount_does_not_need() -> None:
    modules = loaded("import sys, lazyfs.fs.mount_main; print('\\n'.join(sys.modules))")
    assert "lazyfs.fs.mount_main" in modules
    assert unwanted(modules) == []


def test_starting_a_read_only_mount_of_stored_local_layers_loads_nothing_more(
    tmp_path: Path,
) -> None:
    store, layers = stored_layers(tmp_path)
    modules = loaded(START, str(store.root), *(layer_arg(layer) for layer in layers))
    assert "lazyfs.tree.kept" in modules
    # The first pass kept the tree, so the second took the kept tree's path.
    assert tree_path(store.layers, [layer.digest for layer in layers]).is_file()
    assert unwanted(modules) == []
    assert unlisted(modules) == []


def test_the_check_can_see_a_module_loaded(tmp_path: Path) -> None:
    """The probe is not blind: a module a mount does load shows."""
    store, layers = stored_layers(tmp_path)
    code = START.replace("print(", "import lazyfs.fs.writable; print(")
    modules = loaded(code, str(store.root), *(layer_arg(layer) for layer in layers))
    assert "lazyfs.fs.writable" in unwanted(modules)
    assert "lazyfs.fs.writable" in unlisted(modules)


def test_a_lazy_mount_loads_no_tar_parser_or_gzip_checkpoints() -> None:
    code = f"import sys, {', '.join(LAZY_PATH)}; print('\\n'.join(sys.modules))"
    modules = loaded(code)
    assert "lazyfs.index.estargz_index" in modules
    heavy = NOT_FOR_STORED_INDEXES | NOT_FOR_PLAIN_TAR
    assert sorted(m for m in modules if m.split(".")[0] in heavy or m in heavy) == []


def test_the_mount_process_reads_no_package_metadata() -> None:
    """pyfuse3 as scripts/setup builds it (patch 0005) takes its version from a file."""
    modules = loaded("import sys, lazyfs.fs.mount_main; print('\\n'.join(sys.modules))")
    assert "pyfuse3" in modules
    assert "importlib.metadata" not in modules
