"""The App Container image manifest, parsed and validated without I/O.

An ACI's ``manifest`` file is JSON (App Container spec, "Image Manifest
Schema").  ``parse_aci_manifest`` turns its bytes into an ``AciManifest`` or
raises ``BadImage`` naming the first thing wrong.  What is checked:

- ``acKind`` is ``ImageManifest`` and ``acVersion`` a semantic version;
- ``name`` and dependency ``imageName``s are AC Identifiers, label names
  are AC Names, each given once;
- ``app``: ``exec`` (a list of strings starting with an absolute path, if
  given), ``user`` and ``group`` (required, non-empty), ``environment``
  (objects with a ``name`` and a string ``value``, names unique),
  ``workingDirectory`` (absolute); no NUL byte or lone surrogate in any of
  these, and a working directory shorter than PATH_MAX, as for a Docker
  image config (``providers.config_text``);
- ``dependencies``: objects with an ``imageName``, an optional ``imageID``
  (``sha512-`` and hex), optional ``labels`` and ``size``;
- ``pathWhitelist``: absolute paths.

``app.exec`` becomes the runtime config's entrypoint (``exec[0]``) and cmd
(the rest).  ``image_id`` makes an image id from an uncompressed ACI's
SHA-512.  All functions are pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from providers.config_text import checked
from providers.errors import BadImage
from providers.manifest import RuntimeConfig, load_json

AC_KIND = "ImageManifest"
# AC Identifier and AC Name, from the spec's "AC Identifier Type" and "AC Name Type".
AC_IDENTIFIER_RE = re.compile(r"[a-z0-9]+(?:[-._~/][a-z0-9]+)*")
AC_NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
IMAGE_ID_RE = re.compile(r"sha512-[0-9a-f]{128}")
# semver 2.0.0, as the spec asks of acVersion.
_SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Dependency:
    """One entry of ``dependencies``: an image to lay down below this one."""

    name: str
    image_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    size: int | None = None


@dataclass(frozen=True)
class AciManifest:
    name: str
    labels: tuple[tuple[str, str], ...]
    config: RuntimeConfig
    dependencies: tuple[Dependency, ...]
    path_whitelist: tuple[str, ...]

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


def image_id(sha512_hex: str) -> str:
    """The AC image id of an uncompressed ACI whose SHA-512 is ``sha512_hex``."""
    return f"sha512-{sha512_hex}"


def check_image_id(text: str, what: str) -> str:
    if not IMAGE_ID_RE.fullmatch(text):
        raise BadImage(f"{what}: invalid image id {text!r}: want sha512- and 128 hex digits")
    return text


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadImage(f"invalid ACI manifest: {what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadImage(f"invalid ACI manifest: {what} is not a list")
    return value


def _string(value: Any, what: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadImage(f"invalid ACI manifest: {what} is not a non-empty string")
    return value


def parse_labels(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    """A spec ``labels`` list (``[{"name": .., "value": ..}]``), names unique AC Names."""
    labels: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(value, what)):
        item = _object(item, f"{what}[{i}]")
        name = _string(item.get("name"), f"{what}[{i}].name", required=True)
        if not AC_NAME_RE.fullmatch(name):
            raise BadImage(f"invalid ACI manifest: label name {name!r} is not an AC Name")
        if name in seen:
            raise BadImage(f"invalid ACI manifest: label {name!r} given twice")
        seen.add(name)
        labels.append((name, _string(item.get("value"), f"label {name} value", required=True)))
    return tuple(labels)


def _app(value: Any) -> RuntimeConfig:
    if value is None:
        return RuntimeConfig()
    app = _object(value, "app")
    exec_ = _list(app.get("exec"), "app.exec")
    if not all(isinstance(arg, str) for arg in exec_):
        raise BadImage("invalid ACI manifest: app.exec is not a list of strings")
    # These become runc's process args, env, cwd and user: held, as a Docker image
    # config's are, to what exec(2), chdir(2) and config.json can take (``checked``).
    exec_ = [checked(arg, f"app.exec[{i}]") for i, arg in enumerate(exec_)]
    if exec_ and not exec_[0].startswith("/"):
        raise BadImage(f"invalid ACI manifest: app.exec[0] {exec_[0]!r} is not an absolute path")
    user = checked(_string(app.get("user"), "app.user", required=True), "app.user")
    group = checked(_string(app.get("group"), "app.group", required=True), "app.group")
    env: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(app.get("environment"), "app.environment")):
        item = _object(item, f"app.environment[{i}]")
        name = _string(item.get("name"), f"app.environment[{i}].name", required=True)
        # The pattern leaves no NUL byte or surrogate in a name.
        if not _ENV_NAME_RE.fullmatch(name):
            raise BadImage(f"invalid ACI manifest: environment name {name!r}")
        if name in seen:
            raise BadImage(f"invalid ACI manifest: environment {name!r} given twice")
        seen.add(name)
        value = _string(item.get("value"), f"environment {name} value")
        env.append(f"{name}={checked(value, f'app.environment {name} value')}")
    workdir = _string(app.get("workingDirectory"), "app.workingDirectory")
    workdir = checked(workdir, "app.workingDirectory", path=True)
    if workdir and not workdir.startswith("/"):
        raise BadImage(f"invalid ACI manifest: workingDirectory {workdir!r} is not absolute")
    # exec[0] is the entrypoint and the rest its default arguments, so a command
    # given at run time replaces the arguments and keeps the program, as Mesos'
    # appc runtime isolator runs exec[0] with a task's arguments (exec whole
    # when the task gives none) and as Docker composes Entrypoint and Cmd.
    return RuntimeConfig(
        entrypoint=tuple(exec_[:1]),
        cmd=tuple(exec_[1:]),
        env=tuple(env),
        working_dir=workdir,
        user=f"{user}:{group}",
    )


def _dependency(value: Any, i: int) -> Dependency:
    item = _object(value, f"dependencies[{i}]")
    name = _string(item.get("imageName"), f"dependencies[{i}].imageName", required=True)
    if not AC_IDENTIFIER_RE.fullmatch(name):
        raise BadImage(f"invalid ACI manifest: dependency name {name!r} is not an AC Identifier")
    image = _string(item.get("imageID"), f"dependencies[{i}].imageID")
    if image:
        check_image_id(image, f"invalid ACI manifest: dependency {name}")
    size = item.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BadImage(f"invalid ACI manifest: dependency {name} size is not a count of bytes")
    return Dependency(
        name, image, parse_labels(item.get("labels"), f"dependency {name} labels"), size
    )


def parse_aci_manifest(data: bytes) -> AciManifest:
    """Parse and validate an ACI ``manifest``; BadImage names what is wrong."""
    doc = _object(load_json(data, "ACI manifest"), "the manifest")
    kind = doc.get("acKind")
    if kind != AC_KIND:
        raise BadImage(f"ACI manifest has acKind {kind!r}, want {AC_KIND!r}")
    version = doc.get("acVersion")
    if not isinstance(version, str) or not _SEMVER_RE.fullmatch(version):
        raise BadImage(f"invalid ACI manifest: acVersion {version!r} is not a semantic version")
    name = _string(doc.get("name"), "name", required=True)
    if not AC_IDENTIFIER_RE.fullmatch(name):
        raise BadImage(f"invalid ACI manifest: name {name!r} is not an AC Identifier")
    whitelist = _list(doc.get("pathWhitelist"), "pathWhitelist")
    for path in whitelist:
        if not isinstance(path, str) or not path.startswith("/"):
            raise BadImage(f"invalid ACI manifest: pathWhitelist entry {path!r} is not absolute")
    deps = tuple(_dependency(d, i) for i, d in enumerate(_list(doc.get("dependencies"), "deps")))
    return AciManifest(
        name=name,
        labels=parse_labels(doc.get("labels"), "labels"),
        config=_app(doc.get("app")),
        dependencies=deps,
        path_whitelist=tuple(whitelist),
    )
