"""Two writers of one referrers tag, their requests to a real docker-registry put in an order.

``docker-registry`` has no conditional PUT, so the tag schema's
read-modify-write can lose an entry. Each writer here runs
``add_referrer`` in its own thread against its own connection; a
``Schedule`` lets each request at the tag go only when it is its turn,
and the turn passes when the registry has answered it. No timing decides
the order.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from providers.digest import Digest
from providers.errors import TemporaryFailure
from providers.manifest import OCI_INDEX, OCI_MANIFEST
from providers.referrers import (
    TAG_WRITES,
    Referrer,
    add_referrer,
    list_referrers,
    referrers_tag,
)
from providers.registry_http import HttpOptions, RegistryHttp
from providers.registry_push import RegistryPush
from tests.support.registry_servers import Registry, run_registry

pytestmark = pytest.mark.integration

REPOSITORY = "app"
SUBJECT = Digest("sha256:" + "ab" * 32)  # the tag schema never looks the subject up
TAG = referrers_tag(SUBJECT)
TURN_WAIT = 60.0  # a turn that never comes fails the test instead of hanging it
T = TypeVar("T")


@dataclass
class Schedule:
    """The order of requests at the tag: (writer, "get" | "put"), then any order."""

    turns: list[tuple[str, str]]
    done: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def take(self, writer: str, kind: str, request: Callable[[], T]) -> T:
        step = (writer, kind)
        with self.lock:
            ok = self.lock.wait_for(lambda: not self.turns or self.turns[0] == step, TURN_WAIT)
            assert ok, f"{step} waited for {self.turns[0]} that never came"
            # Held while the registry answers: the next turn starts after this one ended.
            try:
                return request()
            finally:
                self.done.append(step)
                if self.turns:
                    self.turns.pop(0)
                self.lock.notify_all()


@dataclass(frozen=True)
class Scheduled(RegistryPush):
    """A RegistryPush whose requests at the referrers tag wait for their turn."""

    writer: str = ""
    schedule: Schedule | None = None

    def get_manifest(self, reference: str, accept: str) -> tuple[bytes, str] | None:
        if reference != TAG or self.schedule is None:
            return super().get_manifest(reference, accept)
        get = super().get_manifest
        return self.schedule.take(self.writer, "get", lambda: get(reference, accept))

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> Mapping[str, str]:
        if reference != TAG or self.schedule is None:
            return super().put_manifest(reference, data, media_type)
        put = super().put_manifest
        return self.schedule.take(self.writer, "put", lambda: put(reference, data, media_type))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path, tmp_path / "storage") as running:
        yield running


def pusher(registry: Registry, writer: str = "", schedule: Schedule | None = None) -> Scheduled:
    http = RegistryHttp(HttpOptions(backoff=0.01))  # a connection of its own, as another tool's
    return Scheduled(http, registry.url, REPOSITORY, f"{writer}-tool", writer, schedule)


def artifact(push: RegistryPush, name: str) -> Referrer:
    """An artifact manifest (a tag's index may list only manifests the repository has)."""
    config = push.push_blob(b"{}", "application/vnd.oci.empty.v1+json")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.test",
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [],
        "annotations": {"name": name},
    }
    data = json.dumps(doc).encode()
    digest = Digest("sha256:" + hashlib.sha256(data).hexdigest())
    push.put_manifest(digest, data, OCI_MANIFEST)
    return Referrer(digest, len(data), OCI_MANIFEST, "application/vnd.example.test", {})


def race(registry: Registry, turns: list[tuple[str, str]]) -> tuple[Schedule, dict[str, object]]:
    """Run writers "a" and "b", each adding its own artifact, in ``turns``' order."""
    schedule = Schedule(list(turns))
    writers = {w: pusher(registry, w, schedule) for w in ("a", "b")}
    entries = {w: artifact(push, w) for w, push in writers.items()}
    outcome: dict[str, object] = {}

    def run(writer: str) -> None:
        try:
            outcome[writer] = add_referrer(writers[writer], SUBJECT, entries[writer], {})
        except BaseException as exc:  # the test reads it below
            outcome[writer] = exc

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcome["listed"] = {r.digest for r in list_referrers(pusher(registry), SUBJECT)}
    outcome["entries"] = {entries["a"].digest, entries["b"].digest}
    return schedule, outcome


def test_a_write_replaced_before_its_read_back_is_written_again(registry: Registry) -> None:
    # Both read the empty tag; a writes; b writes over it, without a's entry;
    # then a reads the tag back, finds its entry gone and adds it again (its
    # second put), and each reads back an index listing both entries.
    turns = [
        *[("a", "get"), ("b", "get"), ("a", "put"), ("b", "put"), ("a", "get")],
        *[("a", "put"), ("b", "get"), ("a", "get")],
    ]
    schedule, outcome = race(registry, turns)
    assert (outcome["a"], outcome["b"]) == (True, True)
    assert outcome["listed"] == outcome["entries"]
    # Had a not written a second time, its last get would wait for a turn
    # that never came, or the listing above would lack its entry.
    assert schedule.done == turns


def test_writers_one_after_the_other_each_write_once_and_read_back(registry: Registry) -> None:
    turns = [("a", "get"), ("a", "put"), ("a", "get"), ("b", "get"), ("b", "put"), ("b", "get")]
    schedule, outcome = race(registry, turns)
    assert outcome["listed"] == outcome["entries"]
    assert schedule.done == turns


def test_a_tag_replaced_after_every_write_is_a_temporary_failure(registry: Registry) -> None:
    # Another client (here, the test) writes the tag between each write and read-back.
    setup = pusher(registry)
    entry = artifact(setup, "ours")
    theirs = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    url = f"{registry.url}/v2/{REPOSITORY}/manifests/{TAG}"
    writes: list[bytes] = []

    @dataclass(frozen=True)
    class Overwritten(RegistryPush):
        def put_manifest(self, reference: str, data: bytes, media_type: str) -> Mapping[str, str]:
            answer = super().put_manifest(reference, data, media_type)
            if reference == TAG:
                writes.append(data)
                headers = {"Content-Type": OCI_INDEX}
                requests.put(url, data=theirs, headers=headers, timeout=30).raise_for_status()
            return answer

    push = Overwritten(setup.http, registry.url, REPOSITORY, "ours")
    with pytest.raises(TemporaryFailure, match=f"referrers tag {TAG} was replaced without"):
        add_referrer(push, SUBJECT, entry, {})
    assert len(writes) == TAG_WRITES  # bounded: it gives up rather than fight forever
    assert all(entry.digest in data.decode() for data in writes)
