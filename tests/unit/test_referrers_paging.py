"""The Referrers API's pages and filter, against a fake registry on loopback.

A registry MUST name the next page of a list that does not fit in one
answer in a ``Link`` header (``rel="next"``); it SHOULD filter by
``?artifactType=`` and then says so in ``OCI-Filters-Applied``.  A lazy
provision's listing (``lazyfs.publish.listing``) asks unfiltered and, when
that answer is not the whole list (paged, or over 1 MiB: thousands of
signatures), asks for the two types it reads, filtered.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from lazyfs.index.artifact import ARTIFACT_TYPE
from lazyfs.index.trace import TRACE_ARTIFACT_TYPE
from lazyfs.publish import listing as listing_module
from providers import referrers
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from providers.manifest import OCI_INDEX, OCI_MANIFEST
from providers.referrers import list_referrers
from providers.registry_http import HttpOptions, RegistryHttp
from providers.registry_push import RegistryPush
from tests.support.httpserver import serve

SUBJECT = Digest("sha256:" + "ab" * 32)
PATH = f"/v2/app/referrers/{SUBJECT}"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"

# A page's answer: (index entries, extra headers), from the request's query.
Pages = Callable[[dict[str, str], str], tuple[list[dict[str, object]], dict[str, str]]]


def entry(name: str, artifact_type: str) -> dict[str, object]:
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest_bytes(name.encode()),
        "size": 500,
        "artifactType": artifact_type,
        "annotations": {"org.example.sig": "x" * 200},
    }


@dataclass
class Fake:
    """A registry whose Referrers API answers as ``pages`` says; the paths asked, in order."""

    pages: Pages
    asked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


def _handler(fake: Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with fake.lock:
                fake.asked.append(self.path)
            parts = urlsplit(self.path)
            if parts.path != PATH:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            manifests, headers = fake.pages(query, fake.url)
            body = json.dumps(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", OCI_INDEX)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


Start = Callable[[Pages], tuple[Fake, RegistryPush]]


@pytest.fixture
def registry() -> Iterator[Start]:
    """Starts a fake registry answering as ``pages`` says."""
    with contextlib.ExitStack() as stack:

        def start(pages: Pages) -> tuple[Fake, RegistryPush]:
            fake = Fake(pages)
            fake.url = stack.enter_context(serve(_handler(fake)))
            return fake, RegistryPush(RegistryHttp(HttpOptions()), fake.url, "app", "app:1")

        yield start


@pytest.mark.parametrize(
    ("header", "target"),
    [
        (f'<{PATH}?page=2>; rel="next"', f"{PATH}?page=2"),
        ("<https://r.test/v2/a?n=2>; rel=next", "https://r.test/v2/a?n=2"),
        ('<a>; rel="prev", <b>; rel="next last"', "b"),
        ('<a>; REL="NEXT"', "a"),
        ('<a?x=1,2>; type="a, rel=next"; rel=prev', None),  # commas inside the parts
        ('<a>; rel="prev"; rel="next"', None),  # only a link's first rel counts
        ("", None),
        ("garbage; rel=next", None),
    ],
)
def test_next_link(header: str, target: str | None) -> None:
    assert referrers.next_link(header) == target


def test_the_next_pages_are_followed_relative_and_absolute(registry: Start) -> None:
    def pages(query: dict[str, str], url: str) -> tuple[list[dict[str, object]], dict[str, str]]:
        page = query.get("page", "1")
        if page == "1":  # relative to the request's URL (RFC 3986)
            return [entry("a", SIGNATURE)], {"Link": f'<{PATH}?page=2>; rel="next"'}
        if page == "2":  # absolute, on the same registry
            return [entry("b", SIGNATURE)], {"Link": f'<{url}{PATH}?page=3>; rel="next"'}
        return [entry("c", ARTIFACT_TYPE)], {}

    fake, push = registry(pages)
    found = list_referrers(push, SUBJECT)
    assert [r.digest for r in found] == [digest_bytes(n.encode()) for n in "abc"]
    assert fake.asked == [PATH, f"{PATH}?page=2", f"{PATH}?page=3"]


@pytest.mark.parametrize(
    "elsewhere", ["http://localhost:{port}", "http://127.0.0.1:1", "https://127.0.0.1:{port}"]
)
def test_a_next_page_on_another_registry_is_not_asked(registry: Start, elsewhere: str) -> None:
    def pages(query: dict[str, str], url: str) -> tuple[list[dict[str, object]], dict[str, str]]:
        target = elsewhere.format(port=urlsplit(url).port) + f"{PATH}?page=2"
        if "page" in query:
            return [], {}
        return [entry("a", ARTIFACT_TYPE)], {"Link": f'<{target}>; rel="next"'}

    fake, push = registry(pages)
    with pytest.raises(BadImage, match="the next page of referrers is elsewhere"):
        list_referrers(push, SUBJECT)
    assert fake.asked == [PATH]


def test_pages_without_end_are_bounded(registry: Start) -> None:
    def pages(query: dict[str, str], url: str) -> tuple[list[dict[str, object]], dict[str, str]]:
        page = int(query.get("page", "1"))
        return [entry(str(page), SIGNATURE)], {"Link": f'<{PATH}?page={page + 1}>; rel="next"'}

    fake, push = registry(pages)
    with pytest.raises(BadImage, match=f"take over {referrers.MAX_PAGES} pages"):
        list_referrers(push, SUBJECT)
    assert len(fake.asked) == referrers.MAX_PAGES


def test_pages_past_the_total_size_are_bounded(
    registry: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(referrers, "TOTAL_LIMIT", 2000)  # each page some 400 bytes here

    def pages(query: dict[str, str], url: str) -> tuple[list[dict[str, object]], dict[str, str]]:
        page = int(query.get("page", "1"))
        return [entry(str(page), SIGNATURE)], {"Link": f'<{PATH}?page={page + 1}>; rel="next"'}

    fake, push = registry(pages)
    with pytest.raises(BadImage, match=r"referrers at .* are over"):
        list_referrers(push, SUBJECT)
    assert 3 <= len(fake.asked) < referrers.MAX_PAGES


def _by_type(signatures: int, link: bool, applied: bool = True) -> Pages:
    """A registry with ``signatures`` signatures, one index and one trace artifact; the
    unfiltered list names a next page when ``link``; it filters when ``applied``."""
    everything = [entry(str(n), SIGNATURE) for n in range(signatures)]
    everything += [entry("index", ARTIFACT_TYPE), entry("trace", TRACE_ARTIFACT_TYPE)]

    def pages(query: dict[str, str], url: str) -> tuple[list[dict[str, object]], dict[str, str]]:
        wanted = query.get("artifactType")
        if wanted and applied:
            kept = [e for e in everything if e["artifactType"] == wanted]
            return kept, {"OCI-Filters-Applied": "artifactType"}
        if link and query.get("page") != "2":
            return everything[:10], {"Link": f'<{PATH}?page=2>; rel="next"'}
        return (everything[10:] if link else everything), {}

    return pages


def _listing(push: RegistryPush, monkeypatch: pytest.MonkeyPatch) -> listing_module.Listing:
    monkeypatch.setattr(listing_module, "repository_push", lambda client, reference: push)
    listed = listing_module.list_image(None, "app:1", SUBJECT)  # type: ignore[arg-type]
    assert listed is not None
    return listed


def _filtered(artifact_type: str) -> str:
    return f"{PATH}?artifactType={quote(artifact_type, safe='')}"


def test_a_paged_list_is_asked_again_filtered(
    registry: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, push = registry(_by_type(100, link=True))
    listed = _listing(push, monkeypatch)
    assert [r.digest for r in listed.of_type(ARTIFACT_TYPE)] == [digest_bytes(b"index")]
    assert [r.digest for r in listed.of_type(TRACE_ARTIFACT_TYPE)] == [digest_bytes(b"trace")]
    # Not page 2 of the signatures: what lazyfs reads, by type.
    assert fake.asked == [PATH, _filtered(ARTIFACT_TYPE), _filtered(TRACE_ARTIFACT_TYPE)]


def test_a_list_over_the_cap_is_asked_again_filtered(
    registry: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, push = registry(_by_type(5000, link=False))  # some 1.6 MiB in one answer
    listed = _listing(push, monkeypatch)
    assert [r.digest for r in listed.of_type(ARTIFACT_TYPE)] == [digest_bytes(b"index")]
    assert fake.asked == [PATH, _filtered(ARTIFACT_TYPE), _filtered(TRACE_ARTIFACT_TYPE)]


def test_a_filter_the_registry_did_not_apply_is_applied_here(
    registry: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, push = registry(_by_type(20, link=True, applied=False))
    assert [r.digest for r in list_referrers(push, SUBJECT, ARTIFACT_TYPE)] == [
        digest_bytes(b"index")
    ]
    assert fake.asked == [_filtered(ARTIFACT_TYPE), f"{PATH}?page=2"]  # both pages read
    listed = _listing(push, monkeypatch)
    assert {r.artifact_type for r in listed.referrers} == {ARTIFACT_TYPE, TRACE_ARTIFACT_TYPE}


def test_one_answer_serves_every_lookup(registry: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, push = registry(_by_type(3, link=False))
    listed = _listing(push, monkeypatch)
    assert len(listed.referrers) == 5  # the others' too: one request, unfiltered
    assert fake.asked == [PATH]
