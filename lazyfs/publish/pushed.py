"""What a cache notes of the prefetch traces it pushed, so a start pushes only what is new.

Beside each trace a cache keeps, ``<trace>.pushed`` says, per repository
(``repository_of``: registry and repository, not tag), which bytes of it
were pushed there (the sha256 of the trace), in which trace artifact, and
whether the image's referrers were looked at for it since::

    {"registry:5000/app": {"trace": "sha256:...", "artifact": "sha256:...",
                           "checked": true}}

A push is not the end of it. On a registry without the Referrers API the
artifact is listed in the referrers tag, which two clients writing at once
can leave without one's entry (``providers.referrers.add_referrer`` narrows
that race; no client can close it), and another tool may write the tag
without it later. A note that trusted the push would keep the trace from
being pushed again, and it would stay unlisted for good. So the next start
after a push lists the image's referrers once
(``lazyfs.publish.traces.publish_pending``) and pushes again what they do
not list; then the note is checked (``note_checked``), whatever the listing
showed, and a push again is checked at once (it read the tag back): one
look per push, never one per start, even from a registry whose lists lag
or fail. A loss after that is left to the next push of a new trace, or to
``lazyfs index push``.

A note that does not read (torn, an earlier lazyfs's, which named no
artifact) means pushing again: the artifact of the same traces is the same
manifest, so that costs requests and adds nothing but a lost entry.

Blocking; file I/O only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lazyfs.index.trace import trace_path
from lazyfs.store.atomic import write_atomic
from providers.digest import Digest, digest_bytes, parse_digest
from providers.errors import BadImage
from providers.reference import parse_reference

log = logging.getLogger(__name__)

PUSHED_SUFFIX = ".pushed"


@dataclass(frozen=True)
class Pushed:
    """One repository's note of a trace: its bytes pushed, the artifact that holds them."""

    trace: Digest
    artifact: Digest
    checked: bool  # the image's referrers looked at for it since the push

    def to_json(self) -> dict[str, object]:
        return {"trace": self.trace, "artifact": self.artifact, "checked": self.checked}


def repository_of(reference: str) -> str:
    """What a pushed note names: the registry and repository of ``reference``."""
    ref = parse_reference(reference)
    return f"{ref.registry}/{ref.repository}"


def _path(cache_dir: Path, key: str) -> Path:
    return trace_path(cache_dir, key).with_suffix(PUSHED_SUFFIX)


def _read(cache_dir: Path, key: str) -> dict[str, object]:
    try:
        marks = json.loads(_path(cache_dir, key).read_bytes())
    except (OSError, ValueError):
        return {}  # none, or torn: pushing again is only a repeat
    return marks if isinstance(marks, dict) else {}


def pushed_to(cache_dir: Path, key: str, reference: str) -> Pushed | None:
    """The note of ``key``'s trace for ``reference``'s repository; None for none that reads."""
    mark = _read(cache_dir, key).get(repository_of(reference))
    if not isinstance(mark, dict) or not isinstance(mark.get("checked"), bool):
        return None
    try:
        trace, artifact = parse_digest(str(mark["trace"])), parse_digest(str(mark["artifact"]))
    except (BadImage, KeyError):
        return None
    return Pushed(trace, artifact, mark["checked"])


def _note(cache_dir: Path, key: str, reference: str, pushed: Pushed) -> None:
    marks = _read(cache_dir, key)
    marks[repository_of(reference)] = pushed.to_json()
    try:
        write_atomic(_path(cache_dir, key), json.dumps(marks, sort_keys=True).encode(),
                     mode=0o600, durable=False)  # fmt: skip
    except OSError as error:  # the next start pushes or looks again
        log.warning("cannot note that the trace %s was pushed: %s", key, error)


def note_pushed(
    cache_dir: Path,
    reference: str,
    traces: Mapping[str, bytes],
    artifact: Digest,
    *,
    checked: bool = False,
) -> None:
    """Note ``traces`` (by key) pushed to ``reference``'s repository in ``artifact``;
    ``checked``: its listing looked at already."""
    for key, trace in traces.items():
        _note(cache_dir, key, reference, Pushed(digest_bytes(trace), artifact, checked))


def note_checked(cache_dir: Path, reference: str, seen: Mapping[str, Pushed]) -> None:
    """Note checked the notes ``seen`` (by key) looked at in ``reference``'s repository,
    each if it is still the note there: another start may have pushed since."""
    for key, note in seen.items():
        if pushed_to(cache_dir, key, reference) == note and not note.checked:
            _note(cache_dir, key, reference, dataclasses.replace(note, checked=True))


def unpushed(cache_dir: Path, reference: str, kept: Mapping[str, bytes]) -> dict[str, bytes]:
    """The traces of ``kept`` (by key) not noted as pushed, as they are, to ``reference``'s
    repository."""
    found = {}
    for key, trace in kept.items():
        pushed = pushed_to(cache_dir, key, reference)
        if pushed is None or pushed.trace != digest_bytes(trace):
            found[key] = trace
    return found


def pushed_notes(cache_dir: Path, reference: str, keys: Iterable[str]) -> dict[str, Pushed]:
    """The notes of ``keys``' traces pushed to ``reference``'s repository, by key (those
    that read)."""
    found = {}
    for key in keys:
        pushed = pushed_to(cache_dir, key, reference)
        if pushed is not None:
            found[key] = pushed
    return found
