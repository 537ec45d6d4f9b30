"""The ``lazyfs`` command line: its commands, their arguments and their help.

Global flags (``cli_flags``) may come before the command or after it
(``lazyfs images --work_dir X``); given in both places, the later one wins.
``lazyfs help [COMMAND [ACTION]]`` and ``lazyfs --version`` answer without
touching the disk. For ``run``, the first ``--`` ends lazyfs' own arguments: what
follows is the container's command (``parse_command_line`` says how).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lazyfs import cli_cache
from lazyfs.cli_flags import ENV_PREFIX, Flag, FlagParser, global_flags
from lazyfs.cli_images import add_images_parser
from lazyfs.cli_index import add_index_parser
from lazyfs.cli_volumes import add_volume_args

IMAGE_HELP = (
    "docker:REFERENCE or REFERENCE, docker://REFERENCE, oci:DIR[:REF], "
    "oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG], or appc:NAME[,label=value...]"
)
IMAGE_FILE_HELP = "a file holding the Image message in protobuf's JSON form, instead of IMAGE"
BACKEND_HELP = "(default: --image_provisioner_backend, else overlay where it works, else copy)"


def version() -> str:
    """The installed lazyfs's version, as ``pip`` knows it."""
    # Loaded here: reading a package's metadata loads email and zipfile parsers,
    # a fifth of what the parser costs every command.
    from importlib import metadata

    try:
        return metadata.version("lazyfs")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _Version(argparse.Action):
    """argparse's ``version`` action, but the version is read when asked for, not at every start."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser._print_message(f"lazyfs {version()}\n", sys.stdout)
        parser.exit()


def build_parser(backends: Sequence[str], environ: Mapping[str, str] | None = None) -> FlagParser:
    """The ``lazyfs`` parser, for the rootfs backends named ``backends``; global
    flags not given come from ``environ`` (default ``os.environ``) as
    ``LAZYFS_*``, else their defaults."""
    parser = FlagParser(
        prog="lazyfs",
        description="Provision container root filesystems from images.",
        epilog=(
            "Global flags may also come after the command. Each may also be set in the "
            f"environment as {ENV_PREFIX}NAME (e.g. {ENV_PREFIX}WORK_DIR); the command line "
            "wins over the environment, the environment over the default. "
            "`lazyfs help COMMAND` describes a command."
        ),
        environ=environ,
    )
    parser.add_argument("--version", action=_Version, help="print the version")
    flags = global_flags(backends)
    for flag in flags:
        parser.add_flag(flag)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        _global_flags_after(sub, flags)
        return sub

    def image_args(sub: argparse.ArgumentParser, optional: bool = True) -> None:
        sub.add_argument("image", nargs="?" if optional else None, help=IMAGE_HELP)
        if optional:
            sub.add_argument(
                "--image-file", "--image_file", dest="image_file", type=Path, help=IMAGE_FILE_HELP
            )
        else:
            sub.set_defaults(image_file=None)

    sub = command("provision", "build a container's rootfs from an image; prints it as JSON")
    sub.add_argument("container_id", help="the new container's id")
    image_args(sub)
    sub.add_argument("--backend", choices=backends, default=None, help=BACKEND_HELP)
    sub.add_argument(
        "--writable", action="store_true", help="a writable rootfs (default: read-only)"
    )
    add_volume_args(sub)
    sub = command("pull", "fetch an image into the store, even if stored; prints its manifest")
    image_args(sub)
    sub = command("destroy", "unmount and remove a container's rootfs")
    sub.add_argument("container_id", help="the container to destroy")
    sub.add_argument(
        "--force", "-f", action="store_true",
        help="kill it first (SIGKILL, through runc) if it still runs, as docker rm -f",
    )  # fmt: skip
    sub = command("recover", "keep the named containers, clean up the rest; prints JSON")
    # `--keep` with no id keeps none, as an agent that builds `--keep *ids` from no
    # containers means it; an empty id (`--keep ""`) is a slip, refused.
    sub.add_argument(
        "--keep", nargs="*", action="extend", default=[], metavar="ID", type=_container_id,
        help="containers to keep, repeatable (default: none)",
    )  # fmt: skip

    def nested(actions: Any, name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=text, description=text)
        _global_flags_after(sub, flags)
        return sub

    images_help = "list the images in the store (creates nothing), or remove some: rm, prune"
    add_images_parser(command("images", images_help), nested)
    add_index_parser(command("index", "publish layer indexes beside an image: push"), nested)
    command("gc", "one image GC pass: remove what nothing uses until the store has its headroom")
    sub = command("ps", "list the provisioned containers and their mounts (creates nothing)")
    sub.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    sub = command("mount", "mount an image at a directory to look inside; alone, list the mounts")
    image_args(sub, optional=False)
    sub.add_argument("mountpoint", type=Path, help="an existing empty directory")
    # Both or neither (``_require_image``): neither lists the mounts. Not nargs="?", with
    # which argparse would take `mount IMAGE --writable DIR` as IMAGE alone and refuse DIR.
    for action in sub._actions:
        action.required = action.required and action.dest not in ("image", "mountpoint")
    sub.usage = "%(prog)s [--json]\n       %(prog)s [options] image mountpoint"
    sub.add_argument(
        "--json", action="store_true",
        help="list the mounts as JSON (default: a table); with IMAGE and MOUNTPOINT: "
        "print the mount made as one such item",
    )  # fmt: skip
    sub.add_argument(
        "--writable",
        action="store_true",
        help="copy-on-write; writes are discarded on umount (default: read-only)",
    )
    sub.add_argument(
        "--foreground",
        action="store_true",
        help="stay until Ctrl-C, then unmount (default: return once mounted)",
    )
    sub.add_argument("--suid", action="store_true", help="honour setuid bits (default: nosuid)")
    sub.add_argument("--dev", action="store_true", help="allow device nodes (default: nodev)")
    sub = command("daemon", "run the machine's cache daemon in the foreground")
    sub.add_argument(
        "--idle_exit",
        "--idle-exit",
        dest="idle_exit",
        type=float,
        metavar="SECONDS",
        help="exit after SECONDS with no mount connected and nothing being fetched (default:"
        " never; a daemon that a command starts exits after an hour)",
    )
    sub.add_argument(
        "--first_idle",
        "--first-idle",
        dest="first_idle",
        type=float,
        metavar="SECONDS",
        help="with --idle_exit: the SECONDS before anything first connects (default the same)",
    )
    cli_cache.add_arguments(command("cache", "show the cache: size, limit, layers, completeness"))
    sub = command("umount", "take down what `lazyfs mount` mounted")
    sub.add_argument("mountpoint", type=Path, help="where `lazyfs mount` mounted the image")
    sub = command("run", "provision, run a command with runc, destroy")
    image_args(sub)
    sub.add_argument("--backend", choices=backends, default=None, help=BACKEND_HELP)
    sub.add_argument(
        "--writable", action="store_true", help="a writable rootfs (the default for run)"
    )
    sub.add_argument(
        "--read-only",
        "--read_only",
        dest="read_only",
        action="store_true",
        help="a read-only rootfs (default: writable, as docker run)",
    )
    sub.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="give the command a terminal, as docker run -t (default: lazyfs' stdio)",
    )
    sub.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="accepted as docker run takes it (-it): the command always has lazyfs' stdin",
    )
    sub.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="set KEY in the command's environment, over the image's; KEY alone takes"
        " lazyfs' own value, or unsets it where lazyfs has none, as docker run -e"
        " (repeatable; default: the image's Env)",
    )
    sub.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="run as USER (a name or uid) and GROUP, looked up in the image, as docker"
        " run -u (default: the image's User, else root)",
    )
    sub.add_argument(
        "-w",
        "--workdir",
        metavar="DIR",
        help="run the command in DIR, an absolute path, made when missing, as docker run -w"
        " (default: the image's WorkingDir, else /)",
    )
    add_volume_args(sub)
    sub.add_argument(
        "command_args",
        nargs="*",
        metavar="-- COMMAND ARGS",
        help="what to run in the container, after -- (default: the image's entrypoint and cmd)",
    )
    sub = command("help", "describe a command, or lazyfs itself")
    sub.add_argument(
        "topic",
        nargs="*",
        metavar="COMMAND",
        help="a command, and an action of it (`lazyfs help images rm`)",
    )
    parser.set_defaults(command_parsers=dict(commands.choices))
    return parser


def _container_id(text: str) -> str:
    """A ``--keep`` id; an empty one (a quoted empty variable) is a usage error."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: an empty container id")
    return text


def _global_flags_after(sub: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    """The global flags again, for after the command: set only when given there."""
    group = sub.add_argument_group("global flags (as before the command; `lazyfs --help`)")
    for flag in flags:
        for spellings, options in flag.arguments():
            group.add_argument(*spellings, **{**options, "help": argparse.SUPPRESS})


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``run``, the container's command is set apart first.

    ``run [FLAGS] IMAGE [FLAGS] [--] COMMAND ARGS``: the command starts at
    the first ``--`` (which is dropped) or at the first word after IMAGE,
    whichever comes first; all after it is the command's, options too
    (``run busybox sh -c 'echo hi'``), as ``docker run`` takes it.
    """
    head, command = _split_run(list(argv))
    parsed = parser.parse_args(switch_words(parser, head))
    if command is not None:
        parsed.command_args = command
    _require_image(parsed)
    return parsed


def switch_words(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with each global switch given a value (``--debug=false``, as Mesos writes
    booleans) made ``--debug`` or ``--no-debug``, which argparse takes.

    argparse gives a switch no value (``--debug=false`` is "ignored explicit
    argument"), and one that took its value from the next word would take a
    command's (``--debug images``). A value ``_truth`` refuses is a usage
    error naming the flag. Words after ``--`` are not lazyfs' flags.
    """
    switches = {
        spelling: flag for flag in global_flags(()) if flag.switch for spelling in flag.spellings()
    }
    words: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return words + argv[i:]
        name, equals, text = word.partition("=")
        flag = switches.get(name) if equals else None
        if flag is None:
            words.append(word)
            continue
        try:
            on = flag.value(text)
        except argparse.ArgumentTypeError as error:
            parser.error(f"argument {name}: {error}")
        words.append(name if on else "--no-" + name.removeprefix("--"))
    return words


def _require_image(args: argparse.Namespace) -> None:
    """A command's IMAGE, optional where a file may name the image instead, given by none:
    the usage error (status 2) argparse gives for any other missing argument."""
    if args.command == "mount":
        _require_mount_words(args)
        return
    if "image_file" not in vars(args) or args.image or args.image_file is not None:
        return
    instead = ["--image-file"]
    if "container_info" in vars(args):
        if args.container_info is not None:
            return
        instead.append("--container-info")
    named = f"image (or {' or '.join(instead)})" if instead else "image"
    args.command_parsers[args.command].error(f"the following arguments are required: {named}")


def _require_mount_words(args: argparse.Namespace) -> None:
    """``mount IMAGE MOUNTPOINT``, or ``mount`` alone (``--json`` aside) to list the mounts:
    anything between is the usage error (status 2) it always was."""
    options = args.writable or args.foreground or args.suid or args.dev
    if args.image is None and args.mountpoint is None and not options:
        return
    given = (("image", bool(args.image)), ("mountpoint", args.mountpoint is not None))
    missing = ", ".join(name for name, there in given if not there)
    if missing:
        args.command_parsers["mount"].error(f"the following arguments are required: {missing}")


def help_topic(args: argparse.Namespace) -> argparse.ArgumentParser | None:
    """The parser ``lazyfs help COMMAND [ACTION]`` describes (None: lazyfs itself).

    An action is named after its command (``help images rm``), as the
    usage errors of ``images rm`` say; a word that names no command or
    action is a usage error (status 2).
    """
    parsers: Mapping[str, argparse.ArgumentParser] = args.command_parsers
    found: argparse.ArgumentParser | None = None
    for word in args.topic:
        choices = parsers if found is None else _actions(found)
        if word in choices:
            found = choices[word]
            continue
        why = f"invalid choice: {word!r} (choose from {', '.join(map(repr, sorted(choices)))})"
        if not choices:
            why = f"`{found.prog if found else 'lazyfs'}` has no action {word!r}"
        parsers["help"].error(f"argument COMMAND: {why}")
    return found


def _actions(parser: argparse.ArgumentParser) -> Mapping[str, argparse.ArgumentParser]:
    """The actions (``rm``, ``prune``) a command's parser takes, by name; none for most."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# run's own options that take a value: their value is not the image; the
# last four name the image instead of IMAGE.
_RUN_VALUED = ("--backend", "-v", "--volume", "-e", "--env", "-u", "--user", "-w", "--workdir")
_RUN_IMAGE = ("--image-file", "--image_file", "--container-info", "--container_info")


def _split_run(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``argv`` as lazyfs' arguments and ``run``'s command (None: not ``run``, or none)."""
    valued = {
        spelling
        for flag in global_flags(())
        if not flag.switch
        for spelling in (f"--{flag.name}", f"--{flag.name.replace('_', '-')}")
    }
    valued.update(_RUN_VALUED, _RUN_IMAGE)
    is_run, words, image_file, skip = False, 0, False, False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word == "--":
            return (argv[:i], argv[i + 1 :]) if is_run else (argv, None)
        elif word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            skip = "=" not in word and name in valued
            if not word.startswith("--"):  # a cluster (-te): a valued letter takes the rest,
                # or the next word when it comes last
                at = next((j for j, c in enumerate(word[1:], 1) if f"-{c}" in valued), None)
                skip = at == len(word) - 1
            image_file = image_file or (is_run and name in _RUN_IMAGE)
        elif not is_run:
            if word != "run":
                return argv, None
            is_run = True
        else:
            words += 1
            if words > (0 if image_file else 1):
                return argv[:i], argv[i:]
    return argv, None
