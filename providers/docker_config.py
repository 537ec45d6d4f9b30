"""Registry credentials found as Docker and podman find them.

Where: ``--docker_config`` when given; otherwise each of these that exists,
in order (``default_config_paths``)::

    $DOCKER_CONFIG/config.json                  Docker, when DOCKER_CONFIG is set
    ~/.docker/config.json                       Docker
    ${XDG_RUNTIME_DIR}/containers/auth.json     podman and skopeo (``podman login``)

For a registry host, the first config that has credentials for it wins. In
one config, as in Docker: a ``credHelpers`` entry for the host, else a
``credsStore``, names a helper, and then only the helper is asked; without
one, the ``auths`` entry is used (``providers.registry_auth`` reads it).

A helper is the program ``docker-credential-NAME`` on ``PATH``, run as
``docker-credential-NAME get`` with the server on stdin (the host, or
``https://index.docker.io/v1/`` for Docker Hub), answering JSON
``{"ServerURL", "Username", "Secret"}``. "credentials not found" (its
non-zero exit with that text) means anonymous, as does an identity token
(``Username`` ``<token>``), which only Docker's own login flow can use.
Helpers run when a registry first asks for credentials, once per host.

Secrets never reach errors or logs: a failing helper is named with the first
line of its stderr, never its stdout.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from providers import untrusted_json
from providers.errors import UsageError
from providers.registry_auth import Credentials, docker_config_document, normalize_host

log = logging.getLogger(__name__)

HELPER_PREFIX = "docker-credential-"
# Docker stores Hub credentials under this server URL, and asks helpers with it.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
# A helper that unlocks a keyring may prompt; past this it is stuck.
HELPER_TIMEOUT = 60.0
HELPER_OUTPUT_LIMIT = 1 << 20


@dataclass(frozen=True)
class DockerConfig:
    """One config file's credentials: inline ``auths`` and the helpers it names."""

    source: str
    auths: Mapping[str, Credentials] = field(default_factory=dict, repr=False)
    cred_helpers: Mapping[str, str] = field(default_factory=dict)
    creds_store: str | None = None

    def helper(self, host: str) -> str | None:
        """The helper to ask for ``host``'s credentials, if this config names one."""
        return self.cred_helpers.get(host) or self.creds_store


# What Docker's own helpers are called: "desktop", "ecr-login", "osxkeychain", "pass".
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def load_docker_config(text: str, what: str) -> DockerConfig:
    """A config from a path or inline JSON; UsageError naming ``what`` when unusable."""
    auths, doc = docker_config_document(text, what)
    helpers = doc.get("credHelpers") or {}
    if not isinstance(helpers, dict) or not all(isinstance(v, str) and v for v in helpers.values()):
        raise UsageError(f"{what}: credHelpers is not a map of host to helper name")
    store = doc.get("credsStore") or None
    if store is not None and not isinstance(store, str):
        raise UsageError(f"{what}: credsStore is not a helper name")
    for name in (*helpers.values(), *([store] if store else [])):
        if not _HELPER_NAME.fullmatch(name):
            # Run as docker-credential-NAME: a "/" in it would name a path, not a helper.
            raise UsageError(f"{what}: {name[:100]!r} is not a credential helper's name")
    by_host = {normalize_host(key): name for key, name in helpers.items()}
    return DockerConfig(what, auths, by_host, store)


def default_config_paths(environ: Mapping[str, str]) -> list[Path]:
    """Where Docker, then podman, keep credentials, in the order they are read."""
    paths = []
    if environ.get("DOCKER_CONFIG"):
        paths.append(Path(environ["DOCKER_CONFIG"]) / "config.json")
    if environ.get("HOME"):
        paths.append(Path(environ["HOME"]) / ".docker" / "config.json")
    if environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    return paths


def default_configs(environ: Mapping[str, str] | None = None) -> CredentialChain:
    """The credentials of every default config that exists (``default_config_paths``).

    Read when first asked for, not here: a command that never talks to a
    registry (an image from a directory) never reads them, so a broken one
    cannot stop it. One that is broken then is warned about and passed
    over, as docker does ("Error loading config file"): nobody named it.
    """
    paths = default_config_paths(os.environ if environ is None else environ)
    skipped: list[str] = []  # filled when read, for describe()
    return CredentialChain(
        lambda: _readable_configs(paths, skipped),
        looked_in=tuple(map(str, paths)),
        skipped=skipped,
    )


def _readable_configs(paths: Sequence[Path], skipped: list[str]) -> list[DockerConfig]:
    """The configs at ``paths`` that load; each broken one's line goes to ``skipped``."""
    found = []
    for path in paths:
        try:
            if not path.is_file():
                continue
            found.append(load_docker_config(str(path), str(path)))
        except (UsageError, OSError) as error:
            # UsageError's line names the path; an OSError (a parent not searchable) may not.
            why = error if isinstance(error, UsageError) else f"{path}: {error.strerror}"
            log.warning("error loading config file %s; going on without its credentials", why)
            skipped.append(str(why))
    return found


class CredentialChain(Mapping[str, Credentials]):
    """Credentials by normalized host from configs in order; helpers asked lazily.

    Thread-safe: registry requests look credentials up from worker threads;
    a host's helper runs once, its answer (also "none") is kept.
    """

    def __init__(
        self,
        configs: Sequence[DockerConfig] | Callable[[], Sequence[DockerConfig]],
        looked_in: Sequence[str] = (),
        skipped: Sequence[str] = (),
    ) -> None:
        # A callable is called once, when credentials are first wanted (default_configs).
        self._load = configs if callable(configs) else lambda: configs
        self._configs: tuple[DockerConfig, ...] | None = None
        self.looked_in = tuple(looked_in)
        # The broken configs passed over, one line each (path: why), once loaded: the
        # loader appends to this very sequence, so it is kept, not copied.
        self.skipped = skipped
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # apart: _lookup reads configs under _lock
        self._found: dict[str, Credentials | None] = {}

    @property
    def configs(self) -> tuple[DockerConfig, ...]:
        """The configs in order, loaded on first use."""
        with self._load_lock:
            if self._configs is None:
                self._configs = tuple(self._load())
            return self._configs

    def __getitem__(self, host: str) -> Credentials:
        with self._lock:
            if host not in self._found:
                self._found[host] = self._lookup(host)
            creds = self._found[host]
        if creds is None:
            raise KeyError(host)
        return creds

    def __iter__(self) -> Iterator[str]:
        hosts: dict[str, None] = {}
        for config in self.configs:
            hosts.update(dict.fromkeys(config.auths))
            hosts.update(dict.fromkeys(config.cred_helpers))
        return iter(hosts)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _lookup(self, host: str) -> Credentials | None:
        for config in self.configs:
            helper = config.helper(host)
            creds = ask_helper(helper, host, config.source) if helper else config.auths.get(host)
            if creds is not None:
                return creds
        return None

    def describe(self) -> str:
        """Where credentials were looked for, for a line about a refusal: also the
        broken configs passed over, which a warning named earlier (a 401 saying
        "found no Docker config" after it would contradict it)."""
        configs = self.configs  # loads them, filling skipped
        usable = " usable" if self.skipped else ""
        if configs:
            said = "read " + ", ".join(config.source for config in configs)
        elif self.looked_in:
            said = f"found no{usable} Docker config (looked for " + ", ".join(self.looked_in) + ")"
        else:
            said = f"found no{usable} Docker config"
        return "; ".join([said, *(f"skipped {why}" for why in self.skipped)])


def ask_helper(name: str, host: str, source: str) -> Credentials | None:
    """Ask ``docker-credential-NAME`` for ``host``'s credentials; None when it has none.

    Raises UsageError (naming ``source``, the config that named the helper)
    when the helper is missing, fails or answers something unreadable.
    """
    program = HELPER_PREFIX + name
    server = DOCKER_HUB_SERVER if host == "docker.io" else host
    try:
        done = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise UsageError(f"{source}: credential helper {program} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"{source}: credential helper {program} gave no answer in {HELPER_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot run credential helper {program}: {exc}") from None
    if done.returncode != 0:
        said = (done.stdout + done.stderr).decode(errors="replace")
        if "credentials not found" in said.lower():
            log.debug("%s has no credentials for %s", program, host)
            return None
        first = done.stderr.decode(errors="replace").strip().splitlines()
        why = f": {first[0][:200]}" if first else ""
        raise UsageError(
            f"{source}: credential helper {program} failed for {server} "
            f"(exit status {done.returncode}){why}"
        )
    return _helper_answer(done.stdout, program, source)


def _helper_answer(stdout: bytes, program: str, source: str) -> Credentials | None:
    # Only the shape is reported: the answer holds a secret.
    unreadable = UsageError(f"{source}: credential helper {program} answered no usable JSON")
    if len(stdout) > HELPER_OUTPUT_LIMIT:
        raise unreadable
    try:
        doc = untrusted_json.loads(stdout)
    except ValueError:
        raise unreadable from None
    if not isinstance(doc, dict):
        raise unreadable
    user, secret = doc.get("Username"), doc.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str):
        raise unreadable
    if user == "<token>":
        log.debug("%s gave an identity token, which lazyfs cannot use", program)
        return None
    if not user and not secret:
        return None
    return Credentials(user, secret)
