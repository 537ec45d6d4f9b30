"""Learned prefetch traces beside their image in a registry: pushed, and found for a mount.

``publish_traces`` pushes the traces a cache directory keeps of an image
(``lazyfs.index.trace``: one per command it was run with) as an OCI artifact
of its own: ``artifactType`` ``TRACE_ARTIFACT_TYPE`` (versioned, so later
formats can coexist with this one), a tiny config blob, one blob per trace
(``TRACE_MEDIA_TYPE``) annotated with its key, the command hashes of its
keys in an annotation of the manifest (``COMMANDS_ANNOTATION``), and the
image manifest as ``subject``; listed through the Referrers API or the
referrers tag, as the index artifact is (``lazyfs.publish.push``), the
entry carrying that annotation. Deterministic: pushing the same traces
again adds nothing.

``publish_pending`` is what ``--publish_indexes`` runs after a ``lazyfs
run`` or ``provision``: the traces the cache keeps of the image that were
not pushed to its repository yet, if any, are pushed as above. Which were
pushed, in which artifact, is noted beside each trace by every successful
push, ``lazyfs index push`` included (``lazyfs.publish.pushed``). The next
start after a push lists the image's referrers once: an artifact they do not
list (another client wrote the referrers tag without it) is pushed again.
After that, a start with nothing new asks the registry nothing.

``fetch_trace`` is the other side, run for a lazy pull with
``--trust_published_indexes`` only, for the trace key the provision's
command has, unless the mount has a ``final`` one already (whole, with
bytes of the layers it reads remotely): the
newest readable trace artifact of the image that lists it is fetched by
digest and checked, and so is its trace blob (bounded, checked against
its digest, decoded whole against the key its annotation names, which
must be of this image), kept under ``STORE/traces`` when the mount has
none or it replaces the mount's (``lazyfs.index.trace.replaces``), where
the start of the mount and the mount process look beside the cache
directory (``lazyfs.index.trace.find_trace``). An artifact that cannot be
used (not one, not its digest, gone) is one warning, and the next older
one is tried, up to ``MAX_TRIED`` read in all; another registry error
ends the lookup with one warning.

Why a published trace may be trusted this far: it only says which blob
ranges to fetch early. The mount replays only ranges of its own layers,
cut at their ends, and every byte fetched is verified before it is served
as any other (eStargz chunk digests, a published index's span digests, the
blob digest and diff_id in the background). A hostile trace can cost extra
verified fetches, bounded by its size limits; it cannot change a byte read.

Blocking.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lazyfs.index.trace import (
    MAX_TRACE_BYTES,
    TRACE_ARTIFACT_TYPE,
    TRACE_MEDIA_TYPE,
    TRACES_DIR,
    Sizes,
    TraceError,
    check_key,
    decode,
    encode,
    final,
    find_trace,
    key_image,
    load_trace,
    replaces,
    store_trace,
    trace_path,
)
from lazyfs.publish.listing import MAX_TRIED, Listing, list_image
from lazyfs.publish.push import repository_push
from lazyfs.publish.pushed import note_checked, note_pushed, pushed_notes, unpushed
from lazyfs.store.atomic import write_atomic
from lazyfs.store.disk import Store
from providers import untrusted_json
from providers.digest import Digest, digest_bytes, hex_part, parse_digest
from providers.errors import BadImage, DigestMismatch, LazyfsError, NotFound
from providers.manifest import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor, ImageManifest
from providers.private_dir import private_dir
from providers.referrers import Referrer, add_referrer
from providers.registry import RegistryClient
from providers.registry_push import RegistryPush

log = logging.getLogger(__name__)

TRACE_CONFIG_MEDIA_TYPE = "application/vnd.lazyfs.trace.config.v1+json"
TRACE_CONFIG = json.dumps({"lazyfs_trace": 1}).encode()
KEY_ANNOTATION = "dev.lazyfs.trace.key"
# Of a trace artifact manifest and its referrers entry: its keys' commands (``_command_tag``).
COMMANDS_ANNOTATION = "dev.lazyfs.trace.commands"
# Trace artifacts of an image looked through for a key, at no cost when their entry names
# their commands; of those that may hold it, ``MAX_TRIED`` are read (a round trip each).
MAX_ARTIFACTS = 64
MAX_TRACES = 64  # per image: one per command it runs
# In the store, by key: the published blobs weighed, each with what against (``_weighing``).
SEEN_SUFFIX = ".seen"
SEEN_KEPT = 8  # lines: machines whose artifacts take turns as the newest are each fetched once


def published_traces_dir(store: Store) -> Path:
    """Where traces fetched from registries are kept, for mounts to find by key."""
    return store.root


def local_traces(cache_dir: Path, image: Digest) -> dict[str, bytes]:
    """The traces ``cache_dir`` keeps of ``image``, by key, each checked whole."""
    found: dict[str, bytes] = {}
    folder = cache_dir / TRACES_DIR
    if not image.startswith("sha256:") or not folder.is_dir():
        return found
    for path in sorted(folder.glob(f"{hex_part(image)}@*.json"))[:MAX_TRACES]:
        key = f"{image}@{path.stem.split('@', 1)[1]}"
        try:
            trace = load_trace(cache_dir, key)
        except TraceError:
            continue  # not a key: not a file lazyfs wrote
        if trace is not None:
            found[key] = path.read_bytes()
    return found


def pending_traces(cache_dir: Path, image: ImageManifest) -> dict[str, bytes]:
    """The traces ``cache_dir`` keeps of ``image`` not pushed to its repository as they are."""
    return unpushed(cache_dir, image.reference, local_traces(cache_dir, image.digest))


def publish_due(cache_dir: Path, image: ImageManifest) -> bool:
    """Whether ``publish_pending`` has anything to do for ``image``: a trace to push, or an
    artifact pushed whose listing was not looked at since. Asks no registry."""
    kept = local_traces(cache_dir, image.digest)
    if unpushed(cache_dir, image.reference, kept):
        return True
    notes = pushed_notes(cache_dir, image.reference, kept).values()
    return not all(note.checked for note in notes)


def publish_pending(cache_dir: Path, client: RegistryClient, image: ImageManifest) -> Digest | None:
    """Push the traces of ``image`` its repository lacks; the artifact's digest, None when
    none was pushed.

    Lacks: not noted as pushed there (``lazyfs.publish.pushed``), or pushed
    in an artifact its referrers do not list (another client wrote the
    referrers tag without it): then all are pushed again. The listing is
    looked at once after each push, whatever it shows; when it was, nothing
    is asked. Registry errors as ``RegistryPush`` raises them;
    ``list_image``'s are its warning, and nothing is pushed.
    """
    kept = local_traces(cache_dir, image.digest)
    if not kept:
        return None
    if unpushed(cache_dir, image.reference, kept):
        return publish_traces(cache_dir, repository_push(client, image.reference), image)
    notes = pushed_notes(cache_dir, image.reference, kept)
    if all(note.checked for note in notes.values()):
        return None  # the common case
    listing = list_image(client, image.reference, image.digest)
    if listing is not None:
        listed = {referrer.digest for referrer in listing.referrers}
        gone = sorted({note.artifact for note in notes.values()} - listed)
        if gone:
            log.warning("%s: prefetch traces pushed as %s are no longer among its referrers "
                        "(another client wrote the list without them): pushing them again",
                        image.reference, ", ".join(gone))  # fmt: skip
            push = repository_push(client, image.reference)
            return publish_traces(cache_dir, push, image, checked=True)
    # Once per push, listed or not: a registry that cannot list them is not asked each start.
    note_checked(cache_dir, image.reference, notes)
    return None


def publish_traces(
    cache_dir: Path, push: RegistryPush, image: ImageManifest, *, checked: bool = False
) -> Digest | None:
    """Push the traces ``cache_dir`` keeps of ``image`` beside it; the artifact's digest,
    None when there is none to push. Registry errors as ``RegistryPush`` raises them.
    ``checked``: a push again after a listing that lacked it, not to be looked for again."""
    traces = local_traces(cache_dir, image.digest)
    if not traces:
        return None
    got = push.get_manifest(image.digest, f"{OCI_MANIFEST}, {DOCKER_MANIFEST}")
    if got is None:
        raise NotFound(f"{push.image}: manifest {image.digest} is not in {push.repository}")
    data, media_type = got
    if digest_bytes(data) != image.digest:
        raise DigestMismatch(
            f"{push.image}: manifest", expected=image.digest, actual=digest_bytes(data)
        )
    layers = []
    for key, trace in sorted(traces.items()):
        blob = push.push_blob(trace, TRACE_MEDIA_TYPE)
        layers.append({"mediaType": TRACE_MEDIA_TYPE, "digest": blob.digest, "size": blob.size,
                       "annotations": {KEY_ANNOTATION: key}})  # fmt: skip
    config = push.push_blob(TRACE_CONFIG, TRACE_CONFIG_MEDIA_TYPE)
    # Which commands it has traces of, where the referrers list shows it (the Referrers
    # API copies a manifest's annotations; the tag's entry is written with them).
    notes = {COMMANDS_ANNOTATION: ",".join(sorted(_command_tag(key) for key in traces))}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": TRACE_ARTIFACT_TYPE,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": layers,
        "subject": {
            "mediaType": media_type or OCI_MANIFEST,
            "digest": image.digest,
            "size": len(data),
        },
        "annotations": notes,
    }
    manifest = json.dumps(doc, separators=(",", ":")).encode()
    digest = digest_bytes(manifest)
    answer = push.put_manifest(digest, manifest, OCI_MANIFEST)
    entry = Referrer(digest, len(manifest), OCI_MANIFEST, TRACE_ARTIFACT_TYPE, notes)
    add_referrer(push, image.digest, entry, answer)
    note_pushed(cache_dir, image.reference, traces, digest, checked=checked)
    log.info("%s: published %d prefetch traces as %s", push.image, len(traces), digest)
    return digest


def trace_blobs(data: bytes, subject: Digest) -> dict[str, Descriptor]:
    """The trace blobs a trace artifact manifest lists, by key; BadImage for one that is not."""
    try:
        doc = untrusted_json.loads(data)
    except ValueError:
        raise BadImage("lazyfs trace manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("artifactType") != TRACE_ARTIFACT_TYPE:
        raise BadImage(f"not a {TRACE_ARTIFACT_TYPE} manifest")
    named = doc.get("subject")
    if not isinstance(named, dict) or named.get("digest") != subject:
        raise BadImage(f"lazyfs trace manifest is not about {subject}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise BadImage("lazyfs trace manifest has no layers")
    found: dict[str, Descriptor] = {}
    for item in layers[:MAX_TRACES]:
        if not isinstance(item, dict) or item.get("mediaType") != TRACE_MEDIA_TYPE:
            continue  # a later format beside this one
        try:
            key = str(item["annotations"][KEY_ANNOTATION])
            if key_image(key) != subject:
                raise BadImage(f"a trace of another image, {key}")
            digest = parse_digest(str(item["digest"]))
        except (KeyError, TypeError, ValueError):
            raise BadImage("lazyfs trace manifest lists a malformed trace blob") from None
        try:
            blob = Descriptor(TRACE_MEDIA_TYPE, digest, untrusted_json.size(item.get("size")))
        except ValueError as error:
            raise BadImage(f"lazyfs trace blob {digest}: size {error}") from None
        if not 0 < blob.size <= MAX_TRACE_BYTES:
            raise BadImage(f"lazyfs trace blob {blob.digest}: size {blob.size} out of range")
        found[key] = blob
    return found


def fetch_trace(
    store: Store,
    client: RegistryClient,
    manifest: ImageManifest,
    key: str,
    cache_dir: Path,
    sizes: Sizes,
    listing: Listing | None = None,
) -> bool:
    """Keep in the store the trace of ``key`` published beside image ``manifest``, if a
    mount would replay it; whether a mount of it has a trace of ``key`` to replay now.

    The trace such a mount replays (``lazyfs.index.trace.find_trace``: from
    ``cache_dir``, where its cache daemon keeps what it records, and the
    store, counted on ``sizes``, the layers it reads remotely) is enough
    when it is ``final``: nothing is asked. Else the newest trace artifact that lists
    ``key`` is read: each machine that publishes pushes the traces its own
    cache keeps, so the newest artifact may lack a command another machine
    ran. Its trace is kept when the mount has none, or when it ``replaces``
    the mount's (another machine ran the workload further). Not fetched: the
    cache's own trace (this machine pushed it), and a blob weighed already
    against the same trace on the same remote layers (noted beside,
    ``SEEN_SUFFIX``; two pulls at once may each drop the other's note: a
    fetch more, later). Artifacts whose
    entry names the commands they hold (``COMMANDS_ANNOTATION``) and not
    this one are passed over without a request; of the others, the first
    ``MAX_TRIED`` are read. ``listing``: the image's referrers as the
    provision listed them, shared with the index lookup
    (``lazyfs.publish.listing``); listed here when not given. Never raises
    for what the registry says: a warning, and the next artifact, or no
    trace.
    """
    try:
        check_key(key)
    except TraceError as error:
        log.info("no prefetch trace: %s", error)
        return False
    folder = published_traces_dir(store)
    # The mount says it when one is damaged (this process's warnings reach the terminal).
    kept = find_trace(cache_dir, key, folder, sizes, level=logging.INFO)
    if kept is not None and final(kept, sizes):
        return True
    own = _digest_of(trace_path(cache_dir, key))
    weighed = None if kept is None else digest_bytes(encode(kept))
    remote = digest_bytes(" ".join(sorted(sizes)).encode())  # what ``replaces`` counts on
    if listing is None:
        listing = list_image(client, manifest.reference, manifest.digest)
        if listing is None:
            return kept is not None
    push, tries = listing.push, MAX_TRIED
    try:
        for referrer in listing.of_type(TRACE_ARTIFACT_TYPE, MAX_ARTIFACTS):
            if not _may_list(referrer.annotations.get(COMMANDS_ANNOTATION), key):
                continue
            if tries == 0:
                break
            tries -= 1
            try:
                blob = _listed(push, referrer.digest, manifest.digest, key)
                if blob is None:
                    continue  # another machine's commands
                if blob.digest == own:
                    continue  # this machine's: an older one may be another's
                if _weighing(blob.digest, weighed, remote) in _seen(folder, key):
                    return True  # weighed against this trace, on these layers, already
                found = decode(push.get_blob(blob.digest, MAX_TRACE_BYTES), key)
            except (BadImage, DigestMismatch, NotFound) as error:
                log.warning("%s: published traces %s ignored: %s", push.image, referrer.digest,
                            error)  # fmt: skip
                continue
            if kept is None or replaces(found, kept, sizes):
                store_trace(folder, found)
                weighed = digest_bytes(encode(found))  # the mount's trace now
            _note_seen(folder, key, _weighing(blob.digest, weighed, remote))
            return True
    except LazyfsError as error:
        log.warning("%s: cannot look for published traces: %s", manifest.reference, error)
    except OSError as error:
        log.warning("%s: published trace of %s not kept: %s", manifest.reference, key, error)
    return kept is not None


def _command_tag(key: str) -> str:
    """What ``COMMANDS_ANNOTATION`` says of trace key ``key``: its command hash's first 8
    hex digits (another command that shares them costs a manifest read, nothing more)."""
    return key.rsplit("@", 1)[1][:8]


def _may_list(named: str | None, key: str) -> bool:
    """Whether an artifact whose entry says ``named`` (``COMMANDS_ANNOTATION``) may hold a
    trace of ``key``: it names its command, or names none (earlier lazyfs; or too long)."""
    if named is None or len(named) > MAX_TRACES * 9:
        return True
    return _command_tag(key) in named.split(",")


def _listed(push: RegistryPush, artifact: Digest, image: Digest, key: str) -> Descriptor | None:
    """The trace blob of ``key`` the trace artifact ``artifact`` of ``image`` lists; None
    when it lists none of ``key``."""
    got = push.get_manifest(artifact, OCI_MANIFEST)
    if got is None:
        return None
    actual = digest_bytes(got[0])
    if actual != artifact:
        raise DigestMismatch(f"{push.image}: trace manifest", expected=artifact, actual=actual)
    return trace_blobs(got[0], image).get(key)


def _digest_of(path: Path) -> Digest | None:
    try:
        return digest_bytes(path.read_bytes())
    except OSError:
        return None


def _weighing(blob: Digest, weighed: Digest | None, remote: Digest) -> str:
    """A line of ``SEEN_SUFFIX``: published trace ``blob``, the digest of the trace the mount
    had after it was weighed (``blob``'s own, or the one it did not replace), and of the
    layers it was counted on."""
    return f"{blob} {weighed} {remote}"


def _seen(folder: Path, key: str) -> list[str]:
    """The last ``SEEN_KEPT`` weighings ``_note_seen`` noted of ``key``, oldest first."""
    try:
        text = trace_path(folder, key).with_suffix(SEEN_SUFFIX).read_bytes().decode("ascii")
    except (OSError, ValueError):
        return []
    return text.splitlines()[-SEEN_KEPT:]


def _note_seen(folder: Path, key: str, weighing: str) -> None:
    path = trace_path(folder, key).with_suffix(SEEN_SUFFIX)
    lines = [line for line in _seen(folder, key) if line != weighing] + [weighing]
    try:
        private_dir(path.parent)
        text = "".join(f"{line}\n" for line in lines[-SEEN_KEPT:])
        write_atomic(path, text.encode(), mode=0o600, durable=False)
    except (OSError, LazyfsError) as error:  # weighed again next time
        log.info("cannot note the published trace weighed for %s: %s", key, error)
