"""The image a user names, as the Image protobuf the provisioner takes.

On the command line::

    docker:REFERENCE                  a Docker image (docker:busybox:1.36)
    docker://REFERENCE                the same, as skopeo writes it
    oci:DIR[:REF]                     skopeo's local transports: an OCI layout
    oci-archive:FILE[:REF]            directory, an OCI layout tar, a docker save
    docker-archive:FILE[:NAME:TAG]    tar (providers.transports); kept in
                                      Image.docker.name as written, the path
                                      made absolute
    REFERENCE                         no prefix: a Docker image
    appc:NAME[,LABEL=VALUE...]        an Appc image (appc:example.com/app,version=1.0)
    appc:NAME[,LABEL=VALUE...]@ID     the same, pinned to the image id ID (sha512-HEX)

From a file: the Image message in protobuf's JSON form, as Mesos writes it::

    {"type": "DOCKER", "docker": {"name": "busybox"}, "cached": false}

Both paths end in ``check_image``, so an Image from either is complete and
consistent. Errors are BadImage (InvalidReference for a Docker reference) with
one line naming what is wrong.

A Docker registry called "docker" with a port ("docker:5000/app") reads as the
prefix; write "docker:docker:5000/app" for that one. Likewise an image called
"oci" (or another transport's name) with a tag reads as a transport: write
its full name, "docker.io/library/oci:1.0".
"""

from __future__ import annotations

import os

from providers.appc_manifest import AC_IDENTIFIER_RE, check_image_id
from providers.errors import BadImage, InvalidReference
from providers.image_pb2 import Image, Label
from providers.reference import parse_reference
from providers.transports import parse_transport

DOCKER_PREFIXES = ("docker://", "docker:")
APPC_PREFIX = "appc:"
APPC_ID_MARK = "@sha512-"

# The Appc spec's AC Identifier: lowercase alphanumerics joined by single -._~/


def parse_image(spec: str) -> Image:
    """The Image that the command-line argument ``spec`` names.

    Pure: nothing is fetched or looked up. The Docker name is kept as the
    user wrote it (as Mesos keeps it); providers normalize it.
    """
    if not spec:
        raise BadImage("empty image: give docker:REFERENCE or appc:NAME")
    if not _utf8(spec):
        # Bytes that are not UTF-8 reach us as surrogate escapes (os.fsdecode). The Image
        # message, and the JSON records that keep its name, hold UTF-8 text only.
        raise BadImage(
            f"image {_shown(spec)}: not UTF-8 (lazyfs takes image names and paths in UTF-8)"
        )
    if spec.startswith(APPC_PREFIX):
        return check_image(_appc_image(spec[len(APPC_PREFIX) :]), repr(spec))
    local = parse_transport(spec)
    if local is not None:
        # Absolute: the provisioner and the store outlive this directory.
        named = Image.Docker(name=str(local.absolute()))
        return check_image(Image(type=Image.DOCKER, docker=named), repr(spec))
    name = spec
    for prefix in DOCKER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    # No source: InvalidReference already quotes the name, which is the argument.
    return check_image(Image(type=Image.DOCKER, docker=Image.Docker(name=name)))


def image_from_file(path: str | os.PathLike[str]) -> Image:
    """Read an Image in protobuf JSON form from ``path`` and check it."""
    where = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise BadImage(f"image file {where}: not UTF-8 text ({error.reason})") from error
    except OSError as error:
        raise BadImage(f"cannot read image file {where}: {error.strerror}") from error
    # json_format accepts a top-level array as an empty message; an Image file
    # is always one object.
    if not text.lstrip().startswith("{"):
        raise BadImage(f"image file {where}: not a JSON object")
    # Loaded here: an image named on the command line needs no JSON form.
    from google.protobuf import json_format

    image = Image()
    try:
        json_format.Parse(text, image)
    except json_format.ParseError as error:
        # Its messages run on with the list of known fields; the first line
        # says what is wrong.
        reason = str(error).splitlines()[0] if str(error) else "cannot parse"
        raise BadImage(f"image file {where}: {reason}") from error
    return check_image(image, f"image file {where}")


def check_image(image: Image, source: str | None = None) -> Image:
    """Return ``image`` if it is complete and consistent, else raise BadImage.

    Complete: every required field is set. Consistent: the message for its
    type is set and the other one is not; a Docker name is a valid
    reference; an Appc name is an AC Identifier with distinct label keys.
    ``source`` (the argument or the file) starts each error message; an
    InvalidReference keeps its own wording and gets ``source`` at the end.
    """
    where = source or "image"
    # Public protobuf API (paths like "docker.name") that types-protobuf omits.
    missing: list[str] = image.FindInitializationErrors()  # type: ignore[attr-defined]
    if missing:
        raise BadImage(f"{where}: missing required field(s): {', '.join(missing)}")
    if image.type == Image.DOCKER:
        if not image.HasField("docker"):
            raise BadImage(f"{where}: type DOCKER needs a 'docker' message")
        if image.HasField("appc"):
            raise BadImage(f"{where}: type DOCKER but an 'appc' message is set")
        if parse_transport(image.docker.name) is not None:
            return image
        try:
            parse_reference(image.docker.name)
        except InvalidReference as error:
            if source is None:
                raise
            raise InvalidReference(error.reference, f"{error.reason} (in {source})") from None
    else:
        if not image.HasField("appc"):
            raise BadImage(f"{where}: type APPC needs an 'appc' message")
        if image.HasField("docker"):
            raise BadImage(f"{where}: type APPC but a 'docker' message is set")
        _check_appc(image.appc, where)
    return image


def _shown(text: str) -> str:
    """``text`` quoted for a message, each byte that is not UTF-8 written ``\\xNN``.

    Such a byte arrives from the command line as a surrogate escape, which
    ``repr`` would show as the ``\\udcNN`` of no character the user typed.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte: not from argv
        return ascii(text)
    return "'" + raw.decode("utf-8", "backslashreplace") + "'"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _appc_image(text: str) -> Image:
    # A final @sha512-HEX pins the image id, as providers.appc_source.AppcRef writes it
    # (and ``lazyfs images`` lists an image provisioned by id).
    rest, at, hex_id = text.rpartition(APPC_ID_MARK)
    image_id = check_image_id(APPC_ID_MARK[1:] + hex_id, "appc image") if at else ""
    name, *pairs = (rest if at else text).split(",")
    labels = []
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise BadImage(f"appc label {pair!r}: want KEY=VALUE")
        if not value:
            raise BadImage(f"appc label {key!r} has no value")
        labels.append(Label(key=key, value=value))
    appc = Image.Appc(name=name, id=image_id) if image_id else Image.Appc(name=name)
    if labels:
        appc.labels.labels.extend(labels)
    return Image(type=Image.APPC, appc=appc)


def _check_appc(appc: Image.Appc, source: str) -> None:
    if not AC_IDENTIFIER_RE.fullmatch(appc.name):
        raise BadImage(
            f"{source}: invalid appc image name {appc.name!r}: lowercase letters and digits "
            "joined by single '-', '.', '_', '~' or '/'"
        )
    seen: set[str] = set()
    for label in appc.labels.labels:
        if not label.key:
            raise BadImage(f"{source}: appc label with an empty key")
        if label.key in seen:
            raise BadImage(f"{source}: appc label {label.key!r} given twice")
        seen.add(label.key)
