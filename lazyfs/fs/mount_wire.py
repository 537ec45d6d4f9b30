"""What the caller of ``lazyfs.fs.mount`` and the mount process say to each other.

``layer_arg`` and ``parse_layer_args``: a layer's descriptor as the mount
process's ``--layer`` argument (JSON: digest, media type, size, diff_id,
annotations, and for a layer still in a registry its ``origin``).
``read_answer``: the mount process's last answer on its ready pipe.
``refusal`` and ``refused_error``: an error the mount process raised while
indexing, as the answer line that carries it back, and the same error again
on the caller's side; ``failure``: why it failed otherwise. The answers
themselves (``INDEXED``, ``READY``) are described in ``lazyfs.fs.mount``.

Light: providers only; ``lazyfs.cache.remote`` is loaded for a remote
layer's origin alone, so a mount process of local layers starts without it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers import errors
from providers.digest import Digest
from providers.errors import BackendError, LazyfsError
from providers.manifest import Layer

if TYPE_CHECKING:
    from lazyfs.cache.remote import RemoteOrigin
    from providers.layer_limits import LayerLimits

# The mount process's answers on its ready pipe (``lazyfs.fs.mount`` says when each comes).
INDEXED = b"indexed\n"
READY = b"ready\n"
REFUSED = b"refused "


def layer_arg(layer: Layer, origin: RemoteOrigin | None = None) -> str:
    """``layer`` as the mount process's ``--layer`` argument (``parse_layer_arg`` reads it).

    With ``origin`` the layer is remote: read from that registry through the daemon.
    """
    fields: dict[str, Any] = {"digest": layer.digest, "media_type": layer.media_type}
    fields["size"] = layer.size
    if layer.diff_id is not None:
        fields["diff_id"] = layer.diff_id
    if layer.annotations:
        fields["annotations"] = dict(layer.annotations)
    if origin is not None:
        fields["origin"] = [origin.host, origin.repository]
    return json.dumps(fields, separators=(",", ":"))


def parse_layer_arg(text: str) -> Layer:
    return parse_layer_args(text)[0]


def parse_layer_args(text: str) -> tuple[Layer, RemoteOrigin | None]:
    """The layer a ``layer_arg`` describes, and its origin when it is remote."""
    data = json.loads(text)
    diff_id = data.get("diff_id")
    notes = data.get("annotations") or {}
    layer = Layer(
        Digest(data["digest"]),
        str(data["media_type"]),
        int(data["size"]),
        Digest(diff_id) if diff_id else None,
        tuple(sorted((str(k), str(v)) for k, v in notes.items())),
    )
    origin = data.get("origin")
    if origin is None:
        return layer, None
    from lazyfs.cache.remote import RemoteOrigin

    return layer, RemoteOrigin(str(origin[0]), str(origin[1]))


def refusal(error: LazyfsError | OSError) -> bytes:
    """The answer line that hands ``error`` to the caller of ``mount``, to raise there.

    A lazyfs error travels as its class names (most derived first), its
    message and its plain facts; an OSError as its errno, text and file.
    """
    fields: dict[str, Any]
    if isinstance(error, OSError):
        fields = {"errno": error.errno, "strerror": error.strerror, "filename": error.filename}
        fields["filename"] = None if fields["filename"] is None else os.fsdecode(error.filename)
    else:
        classes = [cls.__name__ for cls in type(error).__mro__ if issubclass(cls, LazyfsError)]
        facts = {
            key: value
            for key, value in vars(error).items()
            if isinstance(value, (str, int, float, bool)) or value is None
        }
        fields = {"classes": classes, "message": str(error), "facts": facts}
    return REFUSED + json.dumps(fields).encode() + b"\n"


def refused_error(text: bytes) -> Exception:
    """The error a ``refusal`` line describes: the same class, message and facts."""
    try:
        fields = json.loads(text)
        if "errno" in fields:
            return OSError(fields["errno"], fields["strerror"], fields["filename"])
        # The nearest class this side knows; LazyfsError at worst.
        cls = next(
            found
            for name in fields["classes"]
            if isinstance(found := getattr(errors, name, None), type)
            and issubclass(found, LazyfsError)
        )
        error: LazyfsError = cls.__new__(cls)
        # Not cls(...): each error has its own constructor; its message is made already.
        Exception.__init__(error, str(fields["message"]))
        error.__dict__.update(fields["facts"])
        return error
    except (ValueError, KeyError, TypeError, StopIteration):
        return BackendError(f"the mount process refused with a damaged answer: {text!r}")


def parse_mount_args(argv: Sequence[str]) -> argparse.Namespace:
    """The mount process's command line (``lazyfs.fs.mount_main``)."""
    return _mount_parser().parse_args(argv)


@functools.cache
def _mount_parser() -> argparse.ArgumentParser:
    """Made once a process: the mount server makes it before it forks (``warm_up``).

    Parsing leaves the parser as it was (an ``append`` default is copied
    into the namespace, not appended to), so every mount may share it.
    """
    parser = argparse.ArgumentParser(prog="lazyfs.fs.mount_main")
    parser.add_argument("--mountpoint", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True, help="the store root")
    parser.add_argument(
        "--layer",
        action="append",
        default=[],
        type=parse_layer_args,
        help="a layer's descriptor (JSON: digest, media_type, size, diff_id, annotations,"
        " origin), bottom first; without an origin its blob is in the store, its stored index"
        " says where its tar stream is read from (the blob, a tar copy, or gzip checkpoints)",
    )
    parser.add_argument("--cache-dir", type=Path, help="the cache daemon's, for remote layers")
    parser.add_argument(
        "--trace", help="record the prefetch trace of this key, or replay it (remote layers)"
    )
    parser.add_argument(
        "--trace-sent", action="store_true", help="the caller has asked the trace's replay"
    )
    parser.add_argument(
        "--executable",
        action="append",
        default=[],
        help="where the command's program may be:"
        " the first there, and what it loads, is read ahead (remote layers; repeatable)",
    )
    parser.add_argument("--max-layer-size", type=int, help="bytes a layer may unpack to")
    parser.add_argument("--max-layer-ratio", type=int, help="times its blob a layer may unpack")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--upper", type=Path, help="writable: the upper (new, or a former mount's)")
    parser.add_argument("--work", type=Path, help="writable: temporaries, on upper's filesystem")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--suid", action="store_true", help="honour setuid and setgid bits")
    parser.add_argument("--dev", action="store_true", help="let device nodes be opened")
    return parser


def warm_up() -> None:
    """Parse a command line once, for a mount server to fork its children from.

    The parser is made and the patterns argparse compiles while parsing are
    in ``re``'s cache: each forked mount process finds both ready instead
    of making them on its way to mounting.
    """
    parse_mount_args(["--mountpoint", "/", "--store", "/", "--ready-fd", "0"])


def mount_limits(args: argparse.Namespace) -> LayerLimits | None:
    """The limits asked for, None for the defaults (which need no tar parser loaded here)."""
    given = {"max_size": args.max_layer_size, "max_ratio": args.max_layer_ratio}
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return None
    from providers.layer_limits import LayerLimits

    return LayerLimits(**given)


def read_answer(fd: int, timeout: float) -> bytes:
    """The mount process's last answer on its ready pipe (see the module docstring).

    No deadline while it indexes (a big layer takes what it takes);
    ``timeout`` from its ``indexed`` on.  Whatever it wrote before closing
    the pipe, b"" if nothing (it died).
    """
    deadline: float | None = None
    answer = b""
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            return answer
        answer += chunk
        if answer.startswith(INDEXED):
            answer = answer[len(INDEXED) :]
            deadline = time.monotonic() + timeout
        if answer == READY:
            return answer
    return answer if answer else b"timed out waiting for the mount"


def failure(answer: bytes, log_path: Path) -> str:
    """Why a mount process failed, from its ``answer`` and its log: what libfuse or
    fusermount3 said there too (the log goes with the mount's record)."""
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    reason = answer.decode(errors="replace").strip() or (lines[-1] if lines else "")
    said = [line for line in lines if line.startswith(("fuse: ", "fusermount"))]
    if said and said[-1] not in reason:
        reason = f"{reason} ({said[-1]})" if reason else said[-1]
    return reason or "the mount process died"
