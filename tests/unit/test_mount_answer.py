"""What the mount process tells ``lazyfs.fs.mount`` about a layer it refused, and its layers.

A refusal crosses the pipe as one line and is raised again in the caller as
the same error: class, message and facts, so the CLI prints the same one
line and exits the same way as when indexing ran in the caller.
"""

from __future__ import annotations

import errno

import pytest

from lazyfs.fs.mount import REFUSED, layer_arg, parse_layer_arg, refusal, refused_error
from providers.digest import Digest
from providers.errors import (
    BackendError,
    BadEntry,
    BadImage,
    DigestMismatch,
    LazyfsError,
    NotFound,
    UnsafeLayer,
)
from providers.manifest import OCI_LAYER_GZIP, Layer

DIGEST = Digest("sha256:" + "ab" * 32)


def round_trip(error: LazyfsError | OSError) -> Exception:
    line = refusal(error)
    assert line.startswith(REFUSED) and line.endswith(b"\n") and line.count(b"\n") == 1
    return refused_error(line[len(REFUSED) :])


@pytest.mark.parametrize(
    "error",
    [
        BadImage(f"bad layer {DIGEST}: unpacks to more than 5 bytes, see --max_layer_size"),
        UnsafeLayer(DIGEST, "../escape", "goes above the root\nor so"),
        BadEntry(DIGEST, "link", "is a hardlink to 'gone', which does not exist"),
        NotFound(f"blob {DIGEST} is not in the store at /s"),
        DigestMismatch(f"layer {DIGEST} diff_id", expected="sha256:1", actual="sha256:2"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_lazyfs_error_comes_back_as_itself(error: LazyfsError) -> None:
    back = round_trip(error)
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def test_an_os_error_comes_back_with_its_errno_and_file() -> None:
    back = round_trip(OSError(errno.ENOSPC, "No space left on device", "/store/tmp/x"))
    assert isinstance(back, OSError)
    assert (back.errno, back.strerror, back.filename) == (
        errno.ENOSPC,
        "No space left on device",
        "/store/tmp/x",
    )
    assert isinstance(round_trip(FileNotFoundError(errno.ENOENT, "gone")), FileNotFoundError)


def test_an_error_class_this_side_does_not_know_comes_back_as_its_known_base() -> None:
    class Newer(BadImage):
        pass

    back = round_trip(Newer("bad layer x: something new"))
    assert type(back) is BadImage and str(back) == "bad layer x: something new"


def test_a_damaged_refusal_is_a_backend_error() -> None:
    back = refused_error(b"{not json")
    assert isinstance(back, BackendError) and "damaged answer" in str(back)


@pytest.mark.parametrize("diff_id", [None, Digest("sha256:" + "cd" * 32)])
def test_a_layer_descriptor_crosses_the_command_line_whole(diff_id: Digest | None) -> None:
    layer = Layer(DIGEST, OCI_LAYER_GZIP, 1234, diff_id)
    assert parse_layer_arg(layer_arg(layer)) == layer


def test_the_shared_mount_parser_starts_every_parse_afresh() -> None:
    """The mount server parses once before it forks; its children share the parser."""
    from lazyfs.fs.mount_wire import parse_mount_args, warm_up

    warm_up()
    layers = [
        Layer(DIGEST, OCI_LAYER_GZIP, 10, None),
        Layer(Digest("sha256:" + "cd" * 32), OCI_LAYER_GZIP, 20, None),
    ]
    base = ["--mountpoint", "/m", "--store", "/s", "--ready-fd", "7"]
    first = parse_mount_args([*base, *(f"--layer={layer_arg(la)}" for la in layers), "--suid"])
    assert [layer for layer, _ in first.layer] == layers and first.suid and first.ready_fd == 7
    again = parse_mount_args(base)  # nothing of the first parse is left in the parser
    assert again.layer == [] and not again.suid and again.upper is None
