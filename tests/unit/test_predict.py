"""Finding what an executable loads in a mount's tree, as ld.so would, and reading it ahead
(``lazyfs.fs.predict``): inside the tree only, bounded, whatever the image holds."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lazyfs.blobs.ranges import TarRangeReader, open_layers
from lazyfs.blobs.trace_run import Recorder
from lazyfs.cache.remote import DEFAULT_PATH, executable_paths
from lazyfs.fs.predict import MAX_FILES, MAX_LINKS, Predictor, find_library, resolve
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.index.trace import Read, load_trace
from lazyfs.tree.lower import LowerTree, as_lower
from lazyfs.tree.merge import ROOT_INO, DataRef, merge
from providers.digest import Digest, digest_bytes
from providers.errors import TemporaryFailure
from tests.support.elf_files import elf
from tests.support.tar_members import Member, dir_, layer, reg, sym

APP = elf(needed=[b"libfoo.so.1", b"libc.so.6"], runpath=b"/opt/app/lib").data
LIBC = elf(interp=None, needed=[b"ld-linux-x86-64.so.2"]).data
MEMBERS = [
    dir_("usr"), dir_("usr/lib"), dir_("usr/lib/x86_64-linux-gnu"), dir_("usr/bin"),
    sym("lib", "usr/lib"), sym("lib64", "usr/lib64"), dir_("usr/lib64"),
    sym("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    reg("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", b"LD" * 100),
    reg("usr/lib/x86_64-linux-gnu/libc.so.6", LIBC),
    sym("usr/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2"),
    reg("usr/lib/x86_64-linux-gnu/libfoo.so.1.2", b"FOO" * 1000),
    dir_("opt"), dir_("opt/app"), dir_("opt/app/lib"),
    reg("opt/app/lib/libc.so.6", b"the app's own libc"),
    reg("usr/bin/app", APP, mode=0o755),
    dir_("etc"), reg("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
    # Hostile: loops, escapes, a directory where a library should be.
    sym("usr/lib/x86_64-linux-gnu/libloop.so", "libloop2.so"),
    sym("usr/lib/x86_64-linux-gnu/libloop2.so", "/lib/x86_64-linux-gnu/libloop.so"),
    sym("usr/lib/x86_64-linux-gnu/libup.so", "../../../../../../etc/passwd"),
    sym("usr/lib/x86_64-linux-gnu/libabs.so", "/../../etc/passwd"),
    dir_("usr/lib/x86_64-linux-gnu/libdir.so"),
    sym("usr/lib/x86_64-linux-gnu/libdangling.so", "nowhere/at/all"),
    sym("usr/lib/x86_64-linux-gnu/libthrough.so", "libc.so.6/inside"),
    # A chain longer than any walk follows.
    *[sym(f"chain{i}", f"chain{i + 1}") for i in range(MAX_LINKS + 5)],
    reg(f"chain{MAX_LINKS + 5}", b"end"),
]  # fmt: skip


def _tree(tmp_path: Path, members: list[Member]) -> tuple[LowerTree, TarRangeReader, Digest]:
    tar = tmp_path / "layer.tar"
    tar.write_bytes(layer(*members).getvalue())
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    digest = digest_bytes(tar.read_bytes())
    index = ensure_index(layers, tmp, digest, tar)
    source = open_layers({digest: check_data_present(layers, tar, index)})
    return as_lower(merge([index])), source, digest


@pytest.fixture
def tree(tmp_path: Path) -> LowerTree:
    return _tree(tmp_path, MEMBERS)[0]


def _path(tree: LowerTree, path: str) -> int | None:
    """The inode of ``path`` walked without following a final symlink (the test's own walk)."""
    current = ROOT_INO
    for name in path.strip("/").split("/"):
        found = tree.lookup(current, name.encode())
        if found is None:
            return None
        current = found
    return current


@pytest.mark.parametrize(
    ("path", "lands_on"),
    [
        ("/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        ("/lib/x86_64-linux-gnu/libfoo.so.1", "usr/lib/x86_64-linux-gnu/libfoo.so.1.2"),
        ("usr/./lib//x86_64-linux-gnu/../x86_64-linux-gnu/libc.so.6",
         "usr/lib/x86_64-linux-gnu/libc.so.6"),
        ("/../../../etc/passwd", "etc/passwd"),
        ("/lib/x86_64-linux-gnu/libup.so", "etc/passwd"),
        ("/lib/x86_64-linux-gnu/libabs.so", "etc/passwd"),
        ("/lib/x86_64-linux-gnu/libloop.so", None),
        ("/lib/x86_64-linux-gnu/libdangling.so", None),
        ("/lib/x86_64-linux-gnu/libthrough.so", None),
        ("/usr/bin/app/x", None),
        ("/chain0", None),
        (f"/chain{5}", f"chain{MAX_LINKS + 5}"),
        ("/" + "a/" * 3000, None),
    ],
    ids=["interp", "symlinked-dir+link", "dots", "dotdot-at-root", "relative-escape",
         "absolute-escape", "cycle", "dangling", "through-a-file", "under-a-file",
         "too-many-links", "links-within-bound", "too-long"],
)  # fmt: skip
def test_paths_resolve_inside_the_tree_only(
    tree: LowerTree, path: str, lands_on: str | None
) -> None:
    want = None if lands_on is None else _path(tree, lands_on)
    assert lands_on is None or want is not None
    assert resolve(tree, path.encode()) == want


@pytest.mark.parametrize(
    ("name", "search", "found_at"),
    [
        (b"libfoo.so.1", (), "usr/lib/x86_64-linux-gnu/libfoo.so.1.2"),
        (b"libc.so.6", (), "usr/lib/x86_64-linux-gnu/libc.so.6"),
        (b"libc.so.6", (b"/opt/app/lib",), "opt/app/lib/libc.so.6"),
        (b"libc.so.6", (b"$ORIGIN/../lib", b"opt/app/lib"), "usr/lib/x86_64-linux-gnu/libc.so.6"),
        (b"libmissing.so", (), None),
        (b"libdir.so", (), None),
        (b"libloop.so", (), None),
        (b"../../../etc/passwd", (), None),
        (b"x86_64-linux-gnu/libc.so.6", (), None),
        (b"..", (), None),
        (b"", (), None),
        (b"l" * 300, (), None),
    ],
    ids=["symlinked", "standard", "runpath-first", "origin-and-relative-skipped", "missing",
         "directory", "loop", "dotdot", "slash", "dotdot-alone", "empty", "too-long"],
)  # fmt: skip
def test_libraries_are_found_as_ld_so_finds_them(
    tree: LowerTree, name: bytes, search: tuple[bytes, ...], found_at: str | None
) -> None:
    want = None if found_at is None else _path(tree, found_at)
    assert find_library(tree, name, search) == want


class _Recording:
    """A layer reader that tells when bytes of ``wanted`` were read (the predictor's source)."""

    def __init__(self, source: TarRangeReader) -> None:
        self.source = source
        self.lock = threading.Lock()
        self.reads: list[tuple[int, int]] = []
        self.changed = threading.Condition(self.lock)
        self.recorder: Recorder | None = None  # told every range, as the cache client tells it

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        if self.recorder is not None:
            self.recorder.read(digest, offset, length)
        with self.lock:
            self.reads.append((offset, length))
            self.changed.notify_all()
        return self.source.read_range(digest, offset, length)

    def wait_for(self, data: DataRef) -> bool:
        def covered() -> bool:
            return any(o <= data.offset < o + n for o, n in self.reads)

        with self.lock:
            return self.changed.wait_for(covered, timeout=60)


def _data(tree: LowerTree, path: str) -> DataRef:
    ino = _path(tree, path)
    assert ino is not None
    found = tree.inode(ino)
    assert found is not None and found.data is not None
    return found.data


def test_an_executables_head_has_its_libraries_and_their_libraries_read(tmp_path: Path) -> None:
    tree, source, digest = _tree(tmp_path, MEMBERS)
    recording = _Recording(source)
    predictor = Predictor(tree, recording, {digest})
    app = _data(tree, "usr/bin/app")
    predictor.head_read(app, APP[:4096])
    for path in (
        "usr/lib/x86_64-linux-gnu/libfoo.so.1.2",
        "opt/app/lib/libc.so.6",  # the RUNPATH's, not the standard one
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",  # PT_INTERP, through /lib64
    ):
        assert recording.wait_for(_data(tree, path)), path


def test_only_elf_files_of_remote_layers_are_predicted(tmp_path: Path) -> None:
    tree, source, digest = _tree(tmp_path, MEMBERS)
    local = Predictor(tree, source, set())
    local.head_read(_data(tree, "usr/bin/app"), APP)
    remote = Predictor(tree, source, {digest})
    remote.head_read(_data(tree, "etc/passwd"), b"root:x:0:0")
    assert local.predicted == [] and remote.predicted == []


def test_a_mount_predicts_a_bounded_number_of_files(tmp_path: Path) -> None:
    libs = [b"lib%d.so" % i for i in range(90)]
    # The app needs 30, each of those two more: 90 files reachable, past the bound.
    needs = {i: [libs[30 + i], libs[60 + i]] if i < 30 else [] for i in range(90)}
    members = [
        dir_("lib"), reg("app", elf(needed=libs[:30]).data),
        *[reg(f"lib/{libs[i].decode()}", elf(interp=None, needed=needs[i]).data) for i in needs],
    ]  # fmt: skip
    tree, source, digest = _tree(tmp_path, members)
    recording = _Recording(source)
    predictor = Predictor(tree, recording, {digest})
    predictor.head_read(_data(tree, "app"), b"\x7fELF")
    with recording.lock:
        recording.changed.wait_for(lambda: len(predictor.predicted) >= MAX_FILES - 1, timeout=60)
    assert len(predictor.predicted) == MAX_FILES - 1  # the app itself is the first file


@pytest.mark.parametrize(
    ("argv", "env", "workdir", "want"),
    [
        (["python3", "x.py"], ["PATH=/usr/local/bin:/usr/bin"], "/",
         ("/usr/local/bin/python3", "/usr/bin/python3")),
        (["sh"], [], "", tuple(f"{d}/sh" for d in DEFAULT_PATH.split(":"))),
        (["sh"], ["PATH=/a", "PATH=relative:/b/"], "", ("/b/sh",)),
        (["/bin/app"], ["PATH=/x"], "/srv", ("/bin/app",)),
        (["./run"], [], "/srv", ("/srv/./run",)),
        (["bin/run"], [], "", ("//bin/run",)),
        ([], ["PATH=/x"], "/", ()),
        ([""], ["PATH=/x"], "/", ()),
        (["x"], ["PATH=" + ":".join(f"/d{i}" for i in range(100))], "/",
         tuple(f"/d{i}/x" for i in range(16))),
        # Hostile configs: what reaches the mount's command line is an absolute path.
        (["a/b"], [], "-x", ()),
        (["/bin/a\0b"], [], "/", ()),
        (["/" + "a" * 5000], [], "/", ()),
    ],
    ids=["path-order", "default-path", "last-path-wins", "absolute", "relative", "no-workdir",
         "no-argv", "empty-argv0", "bounded", "option-like-workdir", "nul", "too-long"],
)  # fmt: skip
def test_where_the_program_may_be_is_searched_as_runc_does(
    argv: list[str], env: list[str], workdir: str, want: tuple[str, ...]
) -> None:
    assert executable_paths(argv, env, workdir) == want


def test_the_program_known_at_mount_is_read_ahead_with_its_libraries(tmp_path: Path) -> None:
    tree, source, digest = _tree(tmp_path, MEMBERS)
    recording = _Recording(source)
    predictor = Predictor(tree, recording, {digest})
    # The first that is there and executable, as runc finds it (/lib is usr/lib, so its
    # .. is /usr): /etc/passwd is there, but no program.
    predictor.start(["/usr/local/bin/app", "/etc/passwd", "/lib/../bin/app"])
    for path in ("usr/bin/app", "usr/lib/x86_64-linux-gnu/libfoo.so.1.2"):
        assert recording.wait_for(_data(tree, path)), path
    assert _data(tree, "etc/passwd") not in predictor.predicted


def test_a_trace_recorded_beside_the_read_ahead_keeps_the_programs_reads_in_its_order(
    tmp_path: Path,
) -> None:
    # Each file in 64 KiB units of its own: the recorder counts what is new in those.
    lib, big = b"L" * (256 << 10), b"B" * (256 << 10)
    members = [
        dir_("lib"), reg("lib/libfoo.so.1", lib), reg("lib/big", big),
        reg("app", elf(interp=None, needed=[b"libfoo.so.1"]).data, mode=0o755),
    ]  # fmt: skip
    tree, source, digest = _tree(tmp_path, members)
    recording = _Recording(source)
    key = f"{Digest('sha256:' + 'ab' * 32)}@{'c' * 32}"
    recorder = recording.recorder = Recorder(tmp_path, key, settle=3600.0, limit=3600.0)
    predictor = Predictor(tree, recording, {digest})
    predictor.start(["/app"])  # at mount, before the program reads anything
    foo, app = _data(tree, "lib/libfoo.so.1"), _data(tree, "app")
    assert recording.wait_for(foo) and recording.wait_for(app)
    # The program's own reads, in an order of its own: the library's middle, the app's head, a
    # file nothing predicted. Read ahead before, in the predictor's order, none of that is kept.
    program = [
        (foo.offset + (128 << 10), 4096),
        (app.offset, 512),
        (_data(tree, "lib/big").offset, 100),
    ]
    for offset, length in program:
        recording.read_range(digest, offset, length)
    recorder.serving()
    assert recorder.finish() is not None
    trace = load_trace(tmp_path, key)
    assert trace is not None
    assert trace.reads == tuple(Read(digest, offset, length) for offset, length in program)


def test_one_budget_of_steps_bounds_all_of_a_mounts_path_walks(tmp_path: Path) -> None:
    tree, source, digest = _tree(tmp_path, MEMBERS)
    steps: list[int] = []

    def spend() -> bool:
        steps.append(1)
        return len(steps) <= 4

    # "", usr, bin, app: four steps; a budget of three ends the walk.
    assert resolve(tree, b"/usr/bin/app", spend) is not None
    steps.clear()
    steps.append(1)
    assert resolve(tree, b"/usr/bin/app", spend) is None
    # A predictor's walks share one budget: hostile links that spent it leave nothing to find.
    predictor = Predictor(tree, _Recording(source), {digest})
    while predictor._spend():
        pass
    predictor.start(["/usr/bin/app"])
    assert predictor.predicted == []


class _Failing(_Recording):
    """A source whose every read fails, as when the cache daemon is gone."""

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        super().read_range(digest, offset, length)
        raise TemporaryFailure("the cache daemon is gone")


def test_a_failed_read_ahead_stops_reading_ahead(tmp_path: Path) -> None:
    tree, source, digest = _tree(tmp_path, MEMBERS)
    predictor = Predictor(tree, _Failing(source), {digest})
    predictor.start(["/usr/bin/app"])
    # Each read left would meet the same failure, a wait each: none is made.
    assert predictor.stopped.wait(60)
