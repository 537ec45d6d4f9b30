"""The program asked for from the TOCs before the mount indexes (``lazyfs.fs.predict_toc``):
the file the merged tree would give for the first executable candidate, found in the
union of the layers' TOCs, its compressed bytes asked of the daemon; TOCs read once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.fs.predict import MAX_FILE_BYTES
from lazyfs.fs.predict_toc import MAX_DEPTH, ask_program, program_span
from lazyfs.index.estargz_index import fetch_toc
from lazyfs.index.estargz_toc import Chunk, EntryType, Toc, TocEntry
from lazyfs.index.stored_remote import ensure_remote_index, unindexed_toc
from providers.digest import Digest, digest_bytes
from providers.errors import DigestMismatch
from providers.manifest import OCI_LAYER_GZIP, TOC_DIGEST_ANNOTATION, Layer
from tests.support.blob_sources import Prefetching
from tests.support.estargz_writer import Blob, File, write_estargz

LOWER, UPPER, TOP = (Digest(f"sha256:{n * 64}") for n in "abc")
CHUNK_DIGEST = Digest("sha256:" + "d" * 64)
PATH = ["/usr/local/bin/python3", "/usr/bin/python3", "/bin/python3"]


def reg(name: str, start: int, end: int, mode: int = 0o755) -> TocEntry:
    middle = (start + end) // 2
    chunks = (
        Chunk(start, 0, 10, CHUNK_DIGEST, 0, middle),
        Chunk(middle, 10, 10, CHUNK_DIGEST, 0, end),
    )
    return TocEntry(name, tuple(name.split("/")), EntryType.REG, 20, mode, chunks=chunks)


def link(name: str, target: str, kind: EntryType = EntryType.SYMLINK) -> TocEntry:
    return TocEntry(name, tuple(name.split("/")), kind, mode=0o777, link_name=target)


def other(name: str, kind: EntryType = EntryType.DIR) -> TocEntry:
    return TocEntry(name, tuple(name.split("/")), kind, mode=0o755)


def toc(*entries: TocEntry) -> Toc:
    return Toc(entries, 1 << 40)


def test_the_program_behind_a_lower_layers_directory_link_and_its_own_link() -> None:
    lower = toc(other("usr"), other("usr/bin"), link("bin", "usr/bin"))
    upper = toc(link("usr/bin/python3", "python3.11"), reg("usr/bin/python3.11", 100, 5000))
    assert program_span([(LOWER, lower), (UPPER, upper)], ["/bin/python3"]) == (UPPER, 100, 4900)


def test_the_first_candidate_that_is_an_executable_file() -> None:
    layer = toc(
        reg("usr/local/bin/python3", 10, 20, mode=0o644),  # no exec bit: runc would not run it
        other("usr/bin/python3"),  # a directory
        reg("bin/python3", 300, 400),
    )
    assert program_span([(LOWER, layer)], PATH) == (LOWER, 300, 100)


def test_the_highest_layer_gives_the_file() -> None:
    lower = toc(reg("usr/bin/python3", 100, 200))
    upper = toc(reg("usr/bin/python3", 700, 900))
    assert program_span([(LOWER, lower), (UPPER, upper)], PATH) == (UPPER, 700, 200)


def test_a_whiteout_or_an_opaque_directory_above_hides_the_file() -> None:
    lower = toc(reg("usr/bin/python3", 100, 200), reg("bin/python3", 300, 400))
    whiteout = toc(other("usr/bin/.wh.python3", EntryType.REG))
    assert program_span([(LOWER, lower), (UPPER, whiteout)], PATH) == (LOWER, 300, 100)
    opaque = toc(other("usr/bin"), other("usr/bin/.wh..wh..opq", EntryType.REG))
    assert program_span([(LOWER, lower), (UPPER, opaque)], PATH) == (LOWER, 300, 100)
    gone = toc(other("usr/.wh.bin", EntryType.REG), other("bin/.wh.python3", EntryType.REG))
    assert program_span([(LOWER, lower), (UPPER, gone)], PATH) is None


def test_a_file_above_a_lower_whiteout_is_given() -> None:
    lower = toc(reg("usr/bin/python3", 100, 200))
    upper = toc(other("usr/bin/.wh.python3", EntryType.REG))
    top = toc(reg("usr/bin/python3", 900, 950))
    layers = [(LOWER, lower), (UPPER, upper), (TOP, top)]
    assert program_span(layers, ["/usr/bin/python3"]) == (TOP, 900, 50)


def test_a_hardlink_gives_its_target_in_its_layer() -> None:
    layer = toc(reg("usr/bin/python3.11", 100, 600), link("usr/bin/python3", "usr/bin/python3.11",
                                                           EntryType.HARDLINK))  # fmt: skip
    assert program_span([(LOWER, layer)], ["/usr/bin/python3"]) == (LOWER, 100, 500)


def test_hostile_links_stay_inside_and_end() -> None:
    escape = toc(link("bin/python3", "../../../../../usr/bin/real"), reg("usr/bin/real", 5, 9))
    assert program_span([(LOWER, escape)], ["/bin/python3"]) == (LOWER, 5, 4)
    loop = toc(link("bin/a", "b"), link("bin/b", "a"), link("bin/c", "/bin/c/x"))
    assert program_span([(LOWER, loop)], ["/bin/a", "/bin/c"]) is None


def test_the_bytes_asked_for_are_bounded() -> None:
    huge = toc(reg("bin/python3", 1000, 1000 + 10 * MAX_FILE_BYTES))
    assert program_span([(LOWER, huge)], ["/bin/python3"]) == (LOWER, 1000, MAX_FILE_BYTES)


def test_a_file_or_link_above_hides_a_lower_directory_s_contents() -> None:
    lower = toc(reg("usr/bin/python3", 100, 200))
    middle = toc(other("usr", EntryType.REG))  # usr is a file here
    top = toc(other("usr"), other("usr/bin"))  # and a new directory here
    layers = [(LOWER, lower), (UPPER, middle), (TOP, top)]
    assert program_span(layers, ["/usr/bin/python3"]) is None
    assert program_span([(LOWER, lower), (TOP, top)], ["/usr/bin/python3"]) == (LOWER, 100, 100)


def test_one_budget_of_steps_for_all_candidates() -> None:
    # Each walk of /l follows links of 800 "d/.." pairs until the walk's own bound ends it.
    burn = "d/../" * 800
    layer = toc(link("l", burn + "m"), link("m", burn + "n"), link("n", burn + "l"),
                reg("bin/real", 5, 9))  # fmt: skip
    assert program_span([(LOWER, layer)], ["/bin/real"]) == (LOWER, 5, 4)
    assert program_span([(LOWER, layer)], ["/l", "/bin/real"]) == (LOWER, 5, 4)
    assert program_span([(LOWER, layer)], ["/l", "/l", "/l", "/bin/real"]) is None


def test_paths_deeper_than_any_program_s_are_not_walked() -> None:
    deep = "/".join(["d"] * MAX_DEPTH)
    layer = toc(reg(f"{deep}/tool", 5, 9), reg("bin/tool", 20, 30))
    assert program_span([(LOWER, layer)], [f"/{deep}/tool", "/bin/tool"]) == (LOWER, 20, 10)


# Any tree of links, directories and files: an answer is one of its files' spans.
_NAMES = st.sampled_from(["bin", "usr", "a", "python3", "..", "."])
_PATHS = st.lists(_NAMES, min_size=1, max_size=4).map("/".join)
_ENTRIES = st.lists(
    st.one_of(
        st.builds(link, _PATHS.filter(lambda p: not p.startswith(".")), _PATHS),
        st.builds(lambda n, s: reg(n, s, s + 50), _PATHS.filter(lambda p: ".." not in p
                                                                   and not p.startswith(".")),
                  st.integers(0, 1000)),
    ),
    max_size=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(lower=_ENTRIES, upper=_ENTRIES, candidates=st.lists(_PATHS.map("/".__add__), max_size=4))
def test_any_answer_is_the_span_of_a_file_in_the_layers(
    lower: list[TocEntry], upper: list[TocEntry], candidates: list[str]
) -> None:
    layers = [(LOWER, toc(*lower)), (UPPER, toc(*upper))]
    found = program_span(layers, candidates)
    spans = {
        (digest, e.chunks[0].offset, e.chunks[-1].end - e.chunks[0].offset)
        for digest, t in layers
        for e in t.entries
        if e.type is EntryType.REG
    }
    assert found is None or found in spans


def estargz_layer(files: list[File]) -> tuple[Layer, Blob]:
    blob = write_estargz(files, chunk_size=4096)
    annotations = ((TOC_DIGEST_ANNOTATION, blob.toc_digest),)
    layer = Layer(digest_bytes(blob.data), OCI_LAYER_GZIP, len(blob.data), None, annotations)
    return layer, blob


def test_the_program_is_asked_for_and_each_toc_read_once(tmp_path: Path) -> None:
    program = bytes(range(256)) * 64
    base, base_blob = estargz_layer([File("usr/", type="dir", mode=0o755),
                                     File("bin", type="symlink", link="usr/bin")])  # fmt: skip
    app, app_blob = estargz_layer([File("usr/bin/tool", program, mode=0o755),
                                   File("usr/bin/other", b"x" * 9000)])  # fmt: skip
    blobs = Prefetching({base.digest: base_blob.data, app.digest: app_blob.data})
    layers_dir, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers_dir.mkdir()
    tmp.mkdir()

    tocs = ask_program(layers_dir, [base, app], blobs, ["/sbin/tool", "/bin/tool"])

    assert set(tocs) == {base, app}
    chunks = next(e for e in tocs[app].entries if e.name == "usr/bin/tool").chunks
    asked = ("prefetch", app.digest, chunks[0].offset, chunks[-1].end - chunks[0].offset)
    assert asked in blobs.events
    assert tocs[app] == fetch_toc(app, blobs, Digest(app_blob.toc_digest))

    # Indexing from the TOCs read reads none of them again.
    blobs.events.clear()
    found = ensure_remote_index(layers_dir, tmp, app, blobs, toc=tocs[app])
    assert found is not None
    assert blobs.events == []
    # One layer indexed now: a layer whose TOC is not read here could hide the program, or
    # hold one earlier on the PATH, so no guess is made, and no TOC is read for it.
    assert unindexed_toc(layers_dir, app) is None
    assert ask_program(layers_dir, [base, app], blobs, ["/bin/tool"]) == {}
    assert blobs.events == []


def test_no_program_asked_for_without_candidates_or_when_none_is_found(tmp_path: Path) -> None:
    app, app_blob = estargz_layer([File("usr/bin/tool", b"x" * 5000, mode=0o644)])
    blobs = Prefetching({app.digest: app_blob.data})
    assert ask_program(tmp_path, [app], blobs, []) == {}  # nothing to guess: read when indexed
    assert set(ask_program(tmp_path, [app], blobs, ["/usr/bin/tool"])) == {app}
    assert [e for e in blobs.events if e[0] == "prefetch"] == []


def test_a_layer_named_again_with_another_toc_digest_is_refused_as_indexing_refuses_it(
    tmp_path: Path,
) -> None:
    one, one_blob = estargz_layer([File("bin/tool", b"1" * 5000, mode=0o755)])
    other_blob = write_estargz([File("bin/tool", b"2" * 5000, mode=0o755)], chunk_size=4096)
    # The same layer digest, another TOC digest: a hostile image may name them so.
    other = Layer(one.digest, one.media_type, one.size, None,
                  ((TOC_DIGEST_ANNOTATION, other_blob.toc_digest),))  # fmt: skip
    blobs = Prefetching({one.digest: one_blob.data})
    tocs = ask_program(tmp_path, [one], blobs, ["/bin/tool"])
    assert set(tocs) == {one}
    with pytest.raises(DigestMismatch):
        ask_program(tmp_path, [one, other], blobs, ["/bin/tool"])


def test_the_files_every_start_reads_are_asked_for_with_the_program(tmp_path: Path) -> None:
    """runc's user lookup, ld.so's cache and tzset's zone, found as the tree would give them."""
    zone = "usr/share/zoneinfo/Etc/UTC"
    base, base_blob = estargz_layer([File("etc/", type="dir", mode=0o755),
                                     File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n" * 300),
                                     File("etc/group", b"old\n" * 2000),
                                     File("etc/hosts", b"127.0.0.1 localhost\n" * 300),
                                     File("etc/localtime", type="symlink", link=f"/{zone}"),
                                     File(zone, b"TZif2" * 900)])  # fmt: skip
    # The upper layer replaces group by a link to its own file, and holds the program;
    # the image has no ld.so.cache (a static program's image need not).
    app, app_blob = estargz_layer([File("etc/group", type="symlink", link="../srv/group"),
                                   File("srv/group", b"root:x:0:\n" * 900),
                                   File("bin/tool", b"\x7fELF" * 3000, mode=0o755)])  # fmt: skip
    blobs = Prefetching({base.digest: base_blob.data, app.digest: app_blob.data})
    told: list[int] = []  # how much was asked when ``found`` (a thread's start) was told

    def found(tree: object, program: object, source: object) -> None:
        told.append(len(blobs.events))

    tocs = ask_program(tmp_path, [base, app], blobs, ["/bin/tool"], found=found)

    def span(layer: Layer, name: str) -> tuple[str, Digest, int, int]:
        chunks = next(e for e in tocs[layer].entries if e.name == name).chunks
        return ("prefetch", layer.digest, chunks[0].offset, chunks[-1].end - chunks[0].offset)

    asked = [event for event in blobs.events if event[0] == "prefetch"]
    assert asked == [
        span(app, "bin/tool"),
        span(base, "etc/passwd"),
        span(app, "srv/group"),
        span(base, zone),
    ]
    # Told last: the tree it gets is then used by no one else (its lookups are not thread-safe).
    assert told == [len(blobs.events)]
