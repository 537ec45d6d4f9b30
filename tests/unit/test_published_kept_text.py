"""A published index is kept as its publisher wrote it, when that reads back the same, as cheaply.

``store_published`` writes the index text ``decode_text`` inflated and
parsed, rather than encoding the parsed index again.  The store reads the
file as UTF-8 with universal newlines, and cheap readers read its first
line only (``load_published(entries=False)``).  So a text is kept as it is
only when it is ASCII, its first line is the header ``dumps`` writes, and
it carries no carriage return, tab, extra line or run of spaces; any other
is encoded anew.  Either way the index read back equals the one decoded.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from lazyfs.index.artifact import LayerArtifact, decode_text, encode
from lazyfs.index.model import INDEX_NAME, IndexEntry, Kind, dumps, header_line
from lazyfs.index.published import load_published, store_published
from providers.digest import Digest, digest_bytes, hex_part
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.images import Entry, write_layer
from tests.support.published_artifacts import artifact_of


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> LayerArtifact:
    tmp = tmp_path_factory.mktemp("published")
    files = [Entry("etc/hostname", data=b"box\n"), Entry("bin/sh", data=b"x" * 300_000)]
    tar = write_layer(files, tmp / "layer.tar").read_bytes()
    blob = tmp / "blob"
    blob.write_bytes(gzip.compress(tar))
    artifact, _windows = artifact_of(blob, digest_bytes(blob.read_bytes()), tmp / "scratch")
    return artifact


def _with_text(artifact: LayerArtifact, text: bytes) -> bytes:
    """``artifact``'s head blob with its index text replaced by ``text``."""
    head, _, _ = encode(artifact).partition(b"\n")
    header = json.loads(head)
    body = zlib.compress(text)
    header["index_bytes"] = len(body)
    return json.dumps(header).encode() + b"\n" + body


def _keep_and_load(artifact: LayerArtifact, text: bytes, tmp: Path) -> bytes:
    """Decode a head carrying ``text``, keep it, read it back both ways; the file kept."""
    head = _with_text(artifact, text)
    decoded, parsed_from = decode_text(head, layer=artifact.layer)
    assert parsed_from == text
    blob = digest_bytes(head)
    where = store_published(tmp, blob, decoded, text=parsed_from)
    layer = Layer(artifact.layer, "application/vnd.oci.image.layer.v1.tar+gzip",
                  artifact.layer_size, None, ((INDEX_BLOB_ANNOTATION, blob),))  # fmt: skip
    whole = load_published(tmp, layer)
    assert whole is not None, "the kept index does not read back"
    assert whole[0] == decoded.index
    heads_only = load_published(tmp, layer, entries=False)
    assert heads_only is not None, "the kept index's header does not read back"
    assert heads_only[0] == dataclasses.replace(decoded.index, entries=())
    return (where / hex_part(artifact.layer) / INDEX_NAME).read_bytes()


def test_the_index_is_kept_as_published(published: LayerArtifact, tmp_path: Path) -> None:
    # Spaced unlike dumps's entries: a text encoded anew would differ.
    text = dumps(published.index).replace('","', '", "').encode()
    assert text != dumps(published.index).encode()
    assert _keep_and_load(published, text, tmp_path) == text


def _named(artifact: LayerArtifact, name: str) -> LayerArtifact:
    first = artifact.index.entries[0]
    entry = IndexEntry(tuple(name.split("/")), Kind.DIR, 0o755, mtime_ns=first.mtime_ns)
    index = dataclasses.replace(artifact.index, entries=(*artifact.index.entries, entry))
    return dataclasses.replace(artifact, index=index)


def _header_padded(artifact: LayerArtifact) -> bytes:
    """The header line made a megabyte long with spaces: what a cheap reader would read."""
    text = dumps(artifact.index)
    head, _, rest = text.partition("\n")
    return (head[:-1] + " " * (1 << 20) + "}\n" + rest).encode()


TEXTS: dict[str, Callable[[LayerArtifact], bytes]] = {
    "utf-8": lambda a: (
        dumps(_named(a, "caf\u00e9").index).replace("caf\\u00e9", "caf\u00e9").encode()
    ),
    "not-utf-8": lambda a: (
        dumps(_named(a, "caf\udce9").index)
        .replace("caf\\udce9", "caf\udce9")
        .encode("utf-8", "surrogateescape")
    ),
    "cr-in-header": lambda a: dumps(a.index).replace(", ", ",\r ", 1).encode(),
    "header-padded": _header_padded,
    "entries-padded": lambda a: (
        dumps(a.index).replace("[[", "[" + " " * (1 << 20) + "[", 1).encode()
    ),
    "tab": lambda a: dumps(a.index).replace("[[", "[\t[", 1).encode(),
    "extra-line": lambda a: dumps(a.index).replace("[[", "[\n[", 1).encode(),
    "other-header": lambda a: dumps(a.index).replace('"version"', '"version" ', 1).encode(),
    "cr-in-entries": lambda a: dumps(a.index).replace("[[", "[\r[", 1).encode(),
    "line-moved": lambda a: dumps(a.index).rstrip("\n").replace("[[", "[\n[", 1).encode(),
}


@pytest.mark.parametrize("make", TEXTS.values(), ids=TEXTS.keys())
def test_any_other_text_is_kept_encoded_anew(
    published: LayerArtifact, make: Callable[[LayerArtifact], bytes], tmp_path: Path
) -> None:
    text = make(published)
    decoded, _ = decode_text(_with_text(published, text), layer=published.layer)
    assert _keep_and_load(published, text, tmp_path) == dumps(decoded.index).encode()


def test_the_header_kept_is_the_one_dumps_writes(published: LayerArtifact) -> None:
    assert dumps(published.index).partition("\n")[0] == header_line(published.index)


def test_an_index_given_no_text_is_kept_encoded(published: LayerArtifact, tmp_path: Path) -> None:
    where = store_published(tmp_path, Digest("sha256:" + "e" * 64), published)
    assert (where / hex_part(published.layer) / INDEX_NAME).read_text() == dumps(published.index)
