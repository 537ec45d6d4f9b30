"""The registry puller's settings from the global flags: ``--docker_registry``,
its mirrors, CA file, limits and credentials. The limits and ``--platform`` were
checked as parsed (``lazyfs.cli_flags``); the rest is checked here, with a one-line
error naming the flag or variable to fix (``lazyfs.cli_flags.source``).
"""

from __future__ import annotations

import argparse
import os
import re
from urllib.parse import ParseResult, urlparse

from lazyfs.cli_flags import REGISTRY_LIMITS, source, split_list
from providers.docker_config import CredentialChain, default_configs, load_docker_config
from providers.errors import UsageError
from providers.platforms import parse_platform
from providers.registry_options import HttpOptions, RegistryOptions


def docker_config_text(value: str) -> str:
    """``--docker_config`` as ``parse_docker_config`` takes it: a path or inline JSON.

    Mesos also takes ``file:///path``, for this flag as for any: the path.
    """
    stripped = value.strip()
    return stripped[len("file://") :] if stripped.startswith("file://") else value


def _registry_urls(args: argparse.Namespace) -> tuple[str, ...]:
    """``--docker_registry_mirrors``, each checked to be an http(s) URL with a host."""
    mirrors = split_list(args.docker_registry_mirrors)
    where = source(args, "docker_registry_mirrors")
    for mirror in mirrors:
        parsed = parsed_url(mirror, where)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"{where} {mirror!r}: not an http:// or https:// URL with a host")
    return mirrors


def parsed_url(value: str, where: str) -> ParseResult:
    """``urlparse(value)``, its port checked too; UsageError naming ``where`` for what is no
    URL (``http://[::1``, a port past 65535), which the parser raises ValueError for."""
    try:
        parsed = urlparse(value)
        parsed.port  # noqa: B018 -- read to be checked: it raises for a bad one
    except ValueError as error:
        raise UsageError(f"{where} {value!r}: not a URL ({error})") from None
    return parsed


def _ca_file(args: argparse.Namespace) -> str | None:
    """``--docker_registry_ca_file``, checked to be a readable file."""
    path: str | None = args.docker_registry_ca_file
    if path is None:
        return None
    where = source(args, "docker_registry_ca_file")
    if not path.strip():
        raise UsageError(f"{where} is empty: give a PEM file of CA certificates")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{where} {path}: {exc.strerror}") from None
    if not os.path.isfile(path):
        raise UsageError(f"{where} {path}: not a file")
    return path


# skopeo's transports that name one local image, not a place holding many.
_IMAGE_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")
# A registry as docker names it, HOST:PORT (a name, an IPv4 address or a
# bracketed IPv6 one), perhaps with a path: no URL (``127.0.0.1:5000`` would
# be a relative directory, ``localhost:5000`` a URL of scheme "localhost").
_HOST_PORT = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):\d{1,5}(/.*)?"
)


def docker_registry(args: argparse.Namespace) -> str:
    """``--docker_registry``, checked: a directory (``/dir``, ``file:///dir``) or an http(s) URL.

    A skopeo transport is a common slip (``docker://host``, ``oci:/dir``), and
    so is a registry written as docker names it (``localhost:5000``): each
    gets a line saying what to write instead.
    """
    value: str = args.docker_registry
    where = source(args, "docker_registry")
    if not value.strip():
        raise UsageError(f"{where} is empty: give a directory of images or a registry URL")
    if value.startswith("docker://"):
        host = value[len("docker://") :].rstrip("/")
        raise UsageError(
            f"{where} {value}: docker:// is a skopeo transport for an image; "
            f"give the registry as https://{host} and the image as docker://REFERENCE"
        )
    if value.startswith(_IMAGE_TRANSPORTS):
        raise UsageError(
            f"{where} {value}: a skopeo transport names one image, not a registry; "
            f"give it where the image goes (lazyfs run {value}), or a directory here"
        )
    if _HOST_PORT.fullmatch(value) and not os.path.isdir(value):
        # Mesos refuses it too (a registry URL needs its scheme); say which.
        raise UsageError(
            f"{where} {value}: a registry is a URL: give https://{value} "
            f"(or http://{value} for a plain-HTTP registry)"
        )
    parsed = parsed_url(value, where)
    if parsed.scheme not in ("", "file", "http", "https"):
        raise UsageError(f"{where} {value}: expected a directory or an http(s) URL")
    if parsed.scheme in ("http", "https") and not parsed.hostname:
        raise UsageError(f"{where} {value}: a registry URL needs a host")
    return value


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    """The registry puller's settings from the global flags."""
    if args.docker_config:
        where = source(args, "docker_config")
        config = load_docker_config(docker_config_text(args.docker_config), where)
        credentials = CredentialChain([config])
    else:
        # As docker and podman look for them: DOCKER_CONFIG, ~/.docker, XDG_RUNTIME_DIR.
        credentials = default_configs()
    # Each checked as parsed (``cli_flags.REGISTRY_LIMITS``): on the command line or in
    # the environment, a bad one is a usage error before any command runs.
    limits = {name: getattr(args, f"docker_registry_{name}") for name, *_ in REGISTRY_LIMITS}
    return RegistryOptions(
        registry=docker_registry(args),
        mirrors=_registry_urls(args),
        insecure_registries=frozenset(split_list(args.docker_insecure_registries)),
        platform=parse_platform(args.platform, source(args, "platform")) if args.platform else None,
        http=HttpOptions(ca_file=_ca_file(args), credentials=credentials, **limits),
    )


def unauthorized_hint(args: argparse.Namespace, credentials: object) -> str:
    """What to add to a registry's refusal (401, 403): where credentials were
    looked for, and the flag that passes them."""
    read = credentials.describe() if isinstance(credentials, CredentialChain) else ""
    flag = source(args, "docker_config")
    return f"; lazyfs {read}; pass credentials with {flag} FILE (a Docker config.json)"
