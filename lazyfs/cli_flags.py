"""The global flags of ``lazyfs``, named and read as the Mesos agent reads its own.

Each flag is accepted with underscores (``--work_dir``, as Mesos writes it)
and with dashes (``--work-dir``), and may also come from the environment as
``LAZYFS_`` and its name in capitals (``LAZYFS_WORK_DIR``), as Mesos reads
``MESOS_*``. The command line wins over the environment, the environment
over the default. ``FlagParser.parse_args`` applies that order, so every
flag is set on what it returns; ``source`` names where a value came from,
for errors.

A switch is on given alone (``--debug``), and is written as Mesos writes
booleans too: ``--debug=true|false`` (a word ``_truth`` takes), ``--no-debug``.
Every value is checked as parsed (``Flag.value``): a bad one is a usage error
naming the flag or variable, status 2 as any command line that does not parse.
Values that need more (limits, providers) become the library's settings here,
with one-line errors; the registry's are in ``lazyfs.cli_registry``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from providers.errors import UsageError
from providers.layer_limits import DEFAULT_MAX_LAYER_RATIO, DEFAULT_MAX_LAYER_SIZE
from providers.platforms import platform_problem

DEFAULT_REGISTRY = "https://registry-1.docker.io"
ENV_PREFIX = "LAZYFS_"
PROVIDERS = ("docker", "appc")
_WANTED: dict[object, str] = {int: "want a whole number", float: "want a number"}


@dataclass(frozen=True)
class Flag:
    """One global flag: its Mesos name, default, and how a string becomes its value."""

    name: str
    default: Any
    help: str
    kind: Callable[[str], Any] = str
    metavar: str | None = None
    switch: bool = False  # present alone means true; =VALUE and --no-NAME: switch_words
    shown: str | None = None  # the default as help words it, when not the value itself
    check: Callable[[Any], str | None] = lambda value: None  # why kind's value is refused

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def described(self) -> str:
        """The help line: what it is, its default, and its variable."""
        if self.shown is not None:
            default = self.shown
        elif self.switch:
            default = "off"
        elif self.default in (None, ""):
            default = "none"
        else:
            default = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        return f"{self.help} (default: {default}; or {self.env})"

    def value(self, text: str) -> Any:
        """``text`` as the flag takes it; ArgumentTypeError, saying why, if it cannot."""
        try:
            value = self.kind(text)
            why = self.check(value)
        except (ValueError, OverflowError):  # what kind refuses: say what it wants
            why = _WANTED.get(self.kind, "want true or false")
        if why is not None:
            raise argparse.ArgumentTypeError(f"{text!r}: {why}")
        return value

    def spellings(self, prefix: str = "--") -> list[str]:
        """``--name_with_underscores`` and its dashed spelling (``prefix`` ``--no-``: off)."""
        names = dict.fromkeys([self.name, self.name.replace("_", "-")])
        return [prefix + name for name in names]

    def arguments(self) -> list[tuple[list[str], dict[str, Any]]]:
        """argparse's options: ``--name`` in both spellings, for a switch ``--no-name`` too
        (as Mesos takes it; not in the help). Unset unless given: ``FlagParser`` fills it."""
        options: dict[str, Any] = {"dest": self.name, "default": argparse.SUPPRESS}
        if not self.switch:
            options.update(type=self.value, metavar=self.metavar, help=self.described)
            return [(self.spellings(), options)]
        off = {**options, "action": "store_false", "help": argparse.SUPPRESS}
        on = {**options, "action": "store_true", "help": self.described}
        return [(self.spellings(), on), (self.spellings("--no-") + self.spellings("--no_"), off)]


# --docker_registry_NAME: how long a registry may take (HttpOptions says why these
# defaults), as (NAME, type, default, may be 0 to turn it off, metavar, help).
REGISTRY_LIMITS = (
    ("timeout", float, 30.0, False, "SECONDS", "a request unanswered this long fails, retries too"),
    ("min_speed", int, 1024, True, "BYTES", "a transfer below this many bytes/s is cut"),
    ("min_speed_time", float, 30.0, False, "SECONDS", "the window min_speed is judged over"),
    ("blob_timeout", float, 0.0, True, "SECONDS", "a blob not fetched in this long fails"),
)


def _truth(text: str) -> bool:
    """A switch's value (``--debug=VALUE`` or ``LAZYFS_DEBUG``), as Mesos takes booleans."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _switch(name: str, text: str) -> Flag:
    """A switch, off unless given: ``--NAME``, ``--NAME=true|false``, ``--no-NAME``."""
    return Flag(name, False, text, _truth, switch=True)


def _limit_check(off: bool) -> Callable[[float], str | None]:
    """The check of a ``REGISTRY_LIMITS`` value: finite, over 0 (or 0 when ``off``)."""

    def check(value: float) -> str | None:
        if math.isfinite(value) and (value > 0 or (off and value == 0)):
            return None
        return "want 0 or more" if off else "want more than 0"

    return check


def _bytes_check(text: str) -> str | None:
    return None if (parse_size(text) or 0) >= 1 else "want bytes, e.g. 10GiB"


def _providers_check(text: str) -> str | None:
    unknown = [kind for kind in split_list(text) if kind.lower() not in PROVIDERS]
    return f"unknown image provider {unknown[0]!r} (known: docker, appc)" if unknown else None


def _ratio_check(text: str) -> str | None:
    whole = re.fullmatch(r"0*[1-9][0-9]{0,17}", text.strip())  # over 0, in 18 digits
    return None if whole else "want a whole number over 0"


def _platform_check(text: str) -> str | None:
    return platform_problem(text) if text else None  # empty: this machine's, as unset


def default_work_dir() -> str:
    """Root's ``/var/lib/lazyfs``; another user's in their data home, where podman keeps a
    user's storage: ``$XDG_DATA_HOME/lazyfs``, else ``~/.local/share/lazyfs``."""
    root = "/var/lib/lazyfs"
    with contextlib.suppress(OSError):
        if os.geteuid() == 0 or os.stat(root).st_uid == os.geteuid():
            return root  # root's, or a user's who made it theirs before this default
    data = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(data):  # unset, or relative, which the XDG spec says to ignore
        data = os.path.join(os.path.expanduser("~"), ".local", "share")
    # No home to be had (HOME unset, a uid without a passwd row): root's, which
    # such a user is told in one line to replace (``lazyfs.cli_roots``).
    return os.path.join(data, "lazyfs") if os.path.isabs(data) else root


def global_flags(backends: Sequence[str]) -> tuple[Flag, ...]:
    """Every global flag; ``backends`` names the rootfs backends for the help."""
    return (
        Flag("work_dir", default_work_dir(), "where containers' work lives"),
        Flag(
            "image_providers",
            "docker",
            "comma-separated: docker, appc (any case)",
            check=_providers_check,
        ),
        Flag(
            "image_provisioner_backend",
            None,
            f"one of {', '.join(backends)}",
            shown="overlay where it works, else copy",
            check=lambda name: None if name in backends else f"want one of {', '.join(backends)}",
        ),
        Flag(
            "docker_registry",
            DEFAULT_REGISTRY,
            "a directory of image tarballs (/dir or file:///dir), or a registry URL",
        ),
        Flag("docker_store_dir", None, "the blob store", shown="WORK_DIR/store/docker"),
        Flag(
            "docker_config",
            None,
            "docker config.json: a path, a file:// URL or inline JSON",
            shown="$DOCKER_CONFIG/config.json, ~/.docker/config.json, "
            "$XDG_RUNTIME_DIR/containers/auth.json",
        ),
        Flag(
            "docker_registry_mirrors",
            "",
            "comma-separated registry URLs tried in order before the upstream for docker.io",
        ),
        Flag(
            "docker_insecure_registries",
            "",
            "comma-separated host[:port]s that may fall back to plain HTTP (loopback always may)",
        ),
        Flag(
            "docker_registry_ca_file",
            None,
            "PEM CA bundle to verify registries with",
            shown="the system CAs",
        ),
        *(
            Flag(
                f"docker_registry_{name}",
                default,
                f"{text}{'; 0: never' if off else ''}",
                kind,
                metavar,
                shown="none" if off and default == 0 else None,
                check=_limit_check(off),
            )
            for name, kind, default, off, metavar, text in REGISTRY_LIMITS
        ),
        Flag("appc_store_dir", None, "the Appc image store", shown="WORK_DIR/store/appc"),
        Flag(
            "appc_simple_discovery_uri_prefix",
            "http://",
            "where simple discovery finds ACIs: an http(s):// URL prefix or a directory; "
            "empty: the store only",
        ),
        Flag(
            "platform",
            None,
            "os/arch[/variant] to pick from image indexes, spelt as containerd takes it"
            " (x86_64 is amd64, aarch64 arm64, arm arm/v7); without an exact match, the"
            " best variant that platform runs",
            shown="linux/<this machine's arch>[/<its arm variant>]",
            check=_platform_check,
        ),
        Flag(
            "max_layer_size",
            f"{DEFAULT_MAX_LAYER_SIZE >> 30}GiB",
            "the most a layer may unpack to: bytes, or a number with KiB, MiB, GiB or TiB",
            check=_bytes_check,
        ),
        Flag(
            "max_layer_ratio",
            str(DEFAULT_MAX_LAYER_RATIO),
            "the most times its compressed size a layer may unpack to (64 MiB always may)",
            check=_ratio_check,
        ),
        Flag("cache_dir", None, "the cache daemon's directory", shown="WORK_DIR/cache"),
        Flag(
            "cache_size",
            "10GiB",
            "the most the cache keeps: bytes, or a number with KiB..TiB",
            check=_bytes_check,
        ),
        _switch("no_background_fetch", "fetch only what mounts read"),
        _switch(
            "publish_indexes",
            "after pulling a registry image whole, push its layer indexes beside it",
        ),
        _switch(
            "trust_published_indexes",
            "mount registry images lazily from indexes published beside them, trusted as far "
            "as push rights to the image's repository",
        ),
        Flag(
            "image_gc_config",
            None,
            "image GC as Mesos' ImageGcConfig: JSON, a file or a file:// URL",
            shown='{"image_disk_headroom": 0.1}, nothing excluded',
        ),
        _switch("debug", "log what happens on stderr"),
    )


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose global flags also come from ``LAZYFS_*`` variables.

    ``environ`` is read when arguments are parsed (``os.environ`` unless
    given). The namespace gains ``flag_sources``: for each global flag
    taken from the environment, the variable's name.
    """

    def __init__(self, *args: Any, environ: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._globals: list[Flag] = []
        self._environ = environ

    def error(self, message: str) -> NoReturn:
        """A usage error as one line (argparse's own adds the whole usage), status 2."""
        command = self.prog.removeprefix("lazyfs").strip()
        see = f"lazyfs help {command}" if command else "lazyfs --help"
        self.exit(2, f"lazyfs: {message} (see `{see}`)\n")

    def add_flag(self, flag: Flag) -> None:
        """Add ``--name_with_underscores`` and its dashed spelling (``Flag.arguments``)."""
        for spellings, options in flag.arguments():
            self.add_argument(*spellings, **options)
        self._globals.append(flag)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        if not self._globals:  # a command's parser: the top one fills the globals
            return parsed, rest
        environ = os.environ if self._environ is None else self._environ
        sources: dict[str, str] = {}
        for flag in self._globals:
            if hasattr(parsed, flag.name):
                continue
            value = flag.default
            try:
                if flag.env in environ:
                    value = flag.value(environ[flag.env])
                    sources[flag.name] = flag.env
            except argparse.ArgumentTypeError as error:  # as on the command line
                if getattr(parsed, "command", None) != "help":  # read with any environment
                    self.error(f"{flag.env}={error}")
            setattr(parsed, flag.name, value)
        parsed.flag_sources = sources
        return parsed, rest


def source(args: argparse.Namespace, name: str) -> str:
    """Where flag ``name`` came from, as errors name it: ``--name`` or ``LAZYFS_NAME``."""
    sources: Mapping[str, str] = getattr(args, "flag_sources", {})
    return sources.get(name, f"--{name}")


def image_providers(args: argparse.Namespace) -> tuple[str, ...]:
    """The providers ``--image_providers`` enables (known ones, checked as parsed: ``Flag``),
    in lower case: Mesos writes ``APPC,DOCKER``."""
    return tuple(kind.lower() for kind in split_list(args.image_providers))


# Sizes are 1024-based: printed as KiB, MiB, GiB; taken so, or as Mesos writes them (KB, MB, GB).
_SIZE = re.compile(r"([0-9]{1,20})(?:\.([0-9]{1,20}))?\s*(?:([KMGT])(?:i?B)?|B)?", re.I)
_SHIFTS = {"K": 10, "M": 20, "G": 30, "T": 40}
MAX_SIZE = (1 << 63) - 1  # what a file offset (and the cache's wire) holds


def parse_size(text: str) -> int | None:
    """Bytes in ``text`` (``4096``, ``512MiB``, ``10GB``, ``1.5k``: 1024-based, a byte's
    fraction dropped); None if none, or more than ``MAX_SIZE``."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        return None
    whole, fraction, unit = found.groups()
    scale = 1 << _SHIFTS[unit.upper()] if unit else 1
    size = int(whole) * scale
    if fraction:
        size += int(fraction) * scale // 10 ** len(fraction)
    return size if size <= MAX_SIZE else None


def split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def absolute(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` made absolute from the current directory; ``what`` names it in the
    error for a relative one when that directory was deleted (getcwd: ENOENT),
    which would otherwise say "No such file or directory" and name nothing."""
    try:
        return Path(path).absolute()
    except FileNotFoundError:
        raise cwd_gone(f"{what} {os.fspath(path)}".strip()) from None


def path_flag(args: argparse.Namespace, name: str, default: Path) -> Path:
    """Flag ``name``'s path, else ``default``, made absolute (``absolute``)."""
    return absolute(getattr(args, name) or default, source(args, name))


def cwd_gone(what: str) -> UsageError:
    """The error for the relative path ``what`` names when the current directory is gone."""
    return UsageError(
        f"{what}: a relative path, but the current directory is gone (deleted): "
        "give an absolute path, or run lazyfs from a directory that exists"
    )


def work_dir(args: argparse.Namespace) -> Path:
    """``--work_dir``, absolute; empty is an error, not the current directory."""
    value: str = args.work_dir
    if not value.strip():
        raise UsageError(f"{source(args, 'work_dir')} is empty: give a directory")
    return absolute(value, source(args, "work_dir"))


def cache_dir(args: argparse.Namespace) -> Path:
    """``--cache_dir``, absolute: the daemon and the mounts resolve it from other directories."""
    chosen = args.cache_dir or Path(args.work_dir) / "cache"
    return absolute(chosen, source(args, "cache_dir" if args.cache_dir else "work_dir"))
