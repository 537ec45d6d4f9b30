"""JSON nested past the interpreter's stack, from a registry, an image or a publisher.

Python's json raises RecursionError for arrays or objects nested a few
thousand deep, which is not a ValueError: a parser that catches only
ValueError let it out as an unexpected error with a traceback. A few KiB
make one. Each parser of JSON from outside parses it through
``providers.untrusted_json``, which makes it a ValueError, and answers
with its own one-line error, as it does for any other JSON it cannot read.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from lazyfs.fs import mount_server
from lazyfs.fs.mount_server_wire import LENGTH
from lazyfs.gc.config import parse_gc_config
from lazyfs.index import artifact, artifact_manifest, estargz_toc, model, trace
from lazyfs.provision.volumes import container_from_file
from lazyfs.publish import traces
from providers import referrers, registry_auth, registry_http, schema1, untrusted_json
from providers.digest import digest_bytes
from providers.docker_config import _helper_answer
from providers.errors import BadImage, UsageError
from providers.manifest import load_json

DEPTH = 200_000
DEEP = b"[" * DEPTH + b"]" * DEPTH
DEEP_OBJECT = '{"a":' * DEPTH + "1" + "}" * DEPTH
SUBJECT = digest_bytes(b"a manifest")
INDEX_HEADER = json.dumps(
    {"version": model.FORMAT_VERSION, "digest": str(SUBJECT), "compression": "gzip",
     "tar_size": 1, "checkpoints_size": 0, "entries": 1}
)  # fmt: skip


def _signed_schema1() -> bytes:
    protected = base64.urlsafe_b64encode(DEEP).decode().rstrip("=")
    return json.dumps({"schemaVersion": 1, "signatures": [{"protected": protected}]}).encode()


PARSERS: dict[str, tuple[Callable[[], object], type[Exception]]] = {
    "image manifest": (lambda: load_json(DEEP, "manifest"), BadImage),
    "schema 1 signature": (lambda: schema1.schema1_digest(_signed_schema1()), BadImage),
    "referrers list": (lambda: referrers.referrer_entries(DEEP), BadImage),
    "token server answer": (lambda: registry_auth.parse_token_response(DEEP), ValueError),
    "docker config": (lambda: registry_auth.docker_config_document(DEEP_OBJECT), UsageError),
    "index artifact manifest": (lambda: artifact_manifest.artifact_layers(DEEP, SUBJECT), BadImage),
    "index artifact header": (lambda: artifact.decode(DEEP + b"\n"), BadImage),
    "layer index header": (lambda: model.loads(DEEP.decode() + "\n[]"), ValueError),
    "layer index entries": (lambda: model.loads(INDEX_HEADER + "\n" + DEEP.decode()), ValueError),
    "trace manifest": (lambda: traces.trace_blobs(DEEP, SUBJECT), BadImage),
    "trace": (lambda: trace.decode(DEEP), trace.TraceError),
    "eStargz TOC": (lambda: estargz_toc.parse_toc(DEEP, toc_offset=0, layer="l"), BadImage),
    "credential helper answer": (lambda: _helper_answer(DEEP, "helper", "cfg"), UsageError),
    "--image_gc_config": (lambda: parse_gc_config(DEEP_OBJECT), UsageError),
    "the loader itself": (lambda: untrusted_json.loads(DEEP), ValueError),
}


@pytest.mark.parametrize("parse", PARSERS.values(), ids=PARSERS.keys())
def test_json_nested_too_deep_is_refused_in_one_line(
    parse: tuple[Callable[[], object], type[Exception]],
) -> None:
    call, error = parse
    with pytest.raises(error) as caught:
        call()
    assert not isinstance(caught.value, RecursionError)
    assert "\n" not in str(caught.value)


def test_a_registry_error_body_nested_too_deep_gives_no_message() -> None:
    assert registry_http._registry_message(DEEP) == ""


def test_a_heads_note_nested_too_deep_is_no_note() -> None:
    note = {artifact_manifest.HEADS_ANNOTATION: DEEP.decode()}
    assert artifact_manifest.listed_heads(note) is None


def test_a_mount_server_request_nested_too_deep_is_refused() -> None:
    # Only its own uid and root reach a mount server; the request is refused all the same,
    # as a ValueError the server answers (``_handle``), not an error that ends it.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        message = b"[" * 2000 + b"]" * 2000  # what one read takes whole
        theirs.sendall(LENGTH.pack(len(message)) + message)
        with pytest.raises(ValueError):
            mount_server._receive(ours, [])


def test_a_container_spec_file_nested_too_deep_is_refused_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "container.json"
    spec.write_bytes(DEEP)
    with pytest.raises(UsageError, match="not JSON") as caught:
        container_from_file(spec)
    assert "\n" not in str(caught.value)
