"""Image GC's pure parts: its config, the names of stale trees, sizes, and the gc/ area."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.extracted import stale_name
from lazyfs.cli_flags import parse_size
from lazyfs.gc.collect import StoredImage, named
from lazyfs.gc.config import DEFAULT_INTERVAL_NS, GcConfig, parse_gc_config, reference_forms
from lazyfs.gc.trash import Trash
from lazyfs.gc.uses import MountProcess, mounted_layers
from lazyfs.progress import human_size
from providers.digest import Digest
from providers.errors import Conflict, NotFound, UsageError
from providers.manifest import ImageManifest


def test_the_mesos_example_parses() -> None:
    text = json.dumps(
        {
            "image_disk_headroom": 0.1,
            "image_disk_watch_interval": {"nanoseconds": 3600000000000},
            "excluded_images": [],
        }
    )
    assert parse_gc_config(text) == GcConfig(0.1, 3600 * 10**9, ())


def test_defaults_are_mesos_and_excluded_images_take_both_forms() -> None:
    config = parse_gc_config(
        '{"excluded_images": [{"type": "DOCKER", "docker": {"name": "busybox"}}, "app:1"]}'
    )
    assert (config.headroom, config.interval_ns) == (0.1, DEFAULT_INTERVAL_NS)
    assert config.excludes("docker.io/library/busybox:latest")
    assert config.excludes("docker.io/library/app:1")
    assert not config.excludes("docker.io/library/app:2")


def test_a_file_and_a_file_url_are_read(tmp_path: Path) -> None:
    path = tmp_path / "gc.json"
    path.write_text('{"image_disk_headroom": 0.5}')
    assert parse_gc_config(str(path)).headroom == 0.5
    assert parse_gc_config(f"file://{path}").headroom == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--image_gc_config is empty: give JSON or a file holding it"),
        ("{", "--image_gc_config: not JSON: "),
        ("[]", "--image_gc_config: want a JSON object with image_disk_headroom, "),
        ('{"image_disk_headroom": 1.5}', "image_disk_headroom 1.5: want a number from 0 to 1"),
        ('{"image_disk_headroom": -0.1}', "image_disk_headroom -0.1: want a number from 0 to 1"),
        ('{"image_disk_headroom": true}', "image_disk_headroom True: want a number from 0 to 1"),
        ('{"image_disk_watch_interval": 5}', "image_disk_watch_interval 5: want"),
        ('{"image_disk_watch_interval": {"nanoseconds": 0}}', 'want {"nanoseconds": N}'),
        ('{"excluded_images": "busybox"}', "excluded_images: want a list of images"),
        ('{"excluded_images": [{"type": "DOCKER"}]}', "names no image"),
        ('{"excluded_images": [3]}', "excluded image 3: want an Image or a name"),
        ('{"image_disk_headroom": 0.1, "headroom": 1}', "unknown field 'headroom'"),
        ("/nonexistent/gc.json", "--image_gc_config /nonexistent/gc.json: No such file"),
        # int() took these after isdigit() did: ValueError tracebacks.
        ('{"image_disk_watch_interval": {"nanoseconds": "\u00b2"}}', 'want {"nanoseconds": N}'),
        ('{"image_disk_watch_interval": {"nanoseconds": "' + "9" * 5000 + '"}}', "want {"),
        ('{"image_disk_watch_interval": {"nanoseconds": ' + "9" * 30 + "}}", "want {"),
        # A file that is not UTF-8: a UnicodeDecodeError traceback.
        ("/bin/sh", "--image_gc_config /bin/sh: not JSON: "),
    ],
)
def test_a_bad_config_is_one_line_naming_the_flag(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_gc_config(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_reference_forms_cover_what_the_store_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "docker.io/library/busybox:latest" in reference_forms("busybox")
    assert "docker.io/library/busybox:latest" in reference_forms("docker://busybox")
    (tmp_path / "a.tar").touch()
    monkeypatch.chdir(tmp_path)
    assert f"oci-archive:{tmp_path}/a.tar" in reference_forms("oci-archive:a.tar")


@pytest.mark.parametrize(
    ("name", "stale"),
    [
        ("rootfs", True),  # before trees were versioned
        ("overlay", True),
        ("overlay.1", True),
        ("overlay.implicit.json", True),
        ("overlay-v1", True),
        ("rootfs-v2", False),  # these rules' trees
        ("overlay-v2", False),
        ("overlay-v2.3", False),
        ("overlay-v2.dirs.json", False),
        ("overlay-v2.3.dirs.json", False),
        ("overlay-v3", False),  # a later lazyfs's: never ours to remove
        ("index.json", False),
        ("trees", False),
        ("rootfsx", False),
    ],
)
def test_stale_tree_names(name: str, stale: bool) -> None:
    assert stale_name(name) is stale


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("7B", 7),
        ("1.5k", 1536),
        ("512MiB", 512 << 20),
        ("512MB", 512 << 20),  # as Mesos writes it: 1024-based too
        ("10 GiB", 10 << 30),
        ("1TB", 1 << 40),
        ("ten", None),
        ("5 XB", None),
        ("0.1k", 102),
        ("\u00b2", None),
        ("\u0663", None),  # a digit of another script: float() took it
        ("9" * 400, None),  # float() made it infinite: an OverflowError traceback
        (str((1 << 63) - 1), (1 << 63) - 1),
        ("8EiB", None),
        ("8192PiB", None),
    ],
)
def test_sizes_are_binary_whatever_the_spelling(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("n", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 20, "3.0 MiB"), (5 << 40, "5.0 TiB")],
)
def test_human_size_is_binary(n: int, shown: str) -> None:
    assert human_size(n) == shown


def test_trash_moves_then_deletes_and_empty_finishes_what_was_left(tmp_path: Path) -> None:
    root, gc = tmp_path / "store", tmp_path / "store" / "gc"
    gc.mkdir(parents=True)
    tree = root / "layers" / "abc"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"x" * 10000)
    moved: list[str] = []
    trash = Trash(root, gc, moved.append)
    assert trash.discard(tree) >= 10000
    assert moved == ["layers/abc"]
    assert not tree.exists() and list(gc.iterdir()) == []
    assert trash.discard(tree) == 0  # gone already: nothing to do
    (gc / "99.1.left").mkdir()
    (gc / "99.1.left" / "g").write_text("y")
    assert trash.empty() == 1 and list(gc.iterdir()) == []


def test_the_layers_a_live_mount_process_serves_are_found(tmp_path: Path) -> None:
    store = tmp_path / "store"
    layer = json.dumps({"digest": "sha256:" + "a" * 64, "media_type": "x", "size": 1})
    other = json.dumps({"digest": "sha256:" + "b" * 64, "media_type": "x", "size": 1})
    # Processes with a mount process's arguments: one of this store, one of another.
    argv = [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"]
    last = ["--ready-fd", "3"]
    mine = subprocess.Popen(
        [*argv, "--mountpoint", "/m", "--store", str(store), "--layer", layer, *last],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    theirs = subprocess.Popen(
        [*argv, "--store", str(tmp_path / "other"), "--layer", other, *last],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    for started in (mine, theirs):  # up: its command line is its own
        assert started.stdout is not None
        started.stdout.readline()
    try:
        assert mounted_layers(store) == [
            MountProcess(mine.pid, Path("/m"), (Digest("sha256:" + "a" * 64),), ours=True)
        ]
    finally:
        for process in (mine, theirs):
            process.communicate()  # closes its stdin: it ends
    assert mounted_layers(store) == []


@pytest.mark.parametrize(
    "tail",
    [
        ["--layer", '{"digest": "sha256:'],  # cut inside a layer argument
        ["--layer", "{}", "--ready-fd", "3"],  # a layer argument this version does not read
    ],
)
def test_a_mount_process_whose_layers_do_not_read_whole_has_unknown_layers(
    tmp_path: Path, tail: list[str]
) -> None:
    store = tmp_path / "store"
    layer = json.dumps({"digest": "sha256:" + "a" * 64, "media_type": "x", "size": 1})
    argv = [
        sys.executable,
        "-c",
        "import sys; print(flush=True); sys.stdin.read()",
        "--store",
        str(store),
    ]
    process = subprocess.Popen(
        [*argv, "--layer", layer, *tail], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    process.stdout.readline()  # up: its command line is its own
    try:
        assert mounted_layers(store) == [MountProcess(process.pid, None, None, ours=True)]
    finally:
        process.communicate()  # closes its stdin: it ends


def _stored(reference: str, digest_hex: str, platform: str = "") -> StoredImage:
    manifest = ImageManifest(reference, Digest("sha256:" + digest_hex), (), platform=platform)
    return StoredImage(Path("/nonexistent") / digest_hex, manifest, 0.0)


def test_rm_names_every_platform_of_a_reference_but_one_manifest_by_digest() -> None:
    amd64 = _stored("docker.io/library/app:1", "ab" * 32, "linux/amd64")
    arm64 = _stored("docker.io/library/app:1", "cd" * 32, "linux/arm64")
    other = _stored("docker.io/library/other:1", "ab" * 6 + "ef" * 26)
    images = [amd64, arm64, other]
    assert named(images, "app:1") == [amd64, arm64]
    assert named(images, "sha256:" + "ab" * 7) == [amd64]
    with pytest.raises(NotFound, match="no image sha256:ffffffffffff in the store"):
        named(images, "sha256:ffffffffffff")


def test_rm_refuses_a_digest_prefix_two_manifests_share() -> None:
    # Twelve digits name one image today and two once another image arrives:
    # removing both would delete an image nobody named.
    first = _stored("docker.io/library/app:1", "ab" * 6 + "00" * 26)
    second = _stored("docker.io/library/other:1", "ab" * 6 + "11" * 26)
    with pytest.raises(Conflict, match="is ambiguous: it starts 2 manifest digests"):
        named([first, second], "sha256:" + "ab" * 6)
    assert named([first, second], "sha256:" + "ab" * 6 + "00") == [first]


def test_rm_takes_an_appc_image_id_as_appc_writes_it() -> None:
    # An appc image is stored by its id, sha512-HEX, as the digest sha512:HEX
    # (what ``images -q`` prints); either names it.
    hex_id = "9f" * 64
    manifest = ImageManifest("appc:example.com/app,version=1", Digest("sha512:" + hex_id), ())
    appc = StoredImage(Path("/nonexistent") / "appc", manifest, 0.0)
    docker = _stored("docker.io/library/app:1", "9f" * 32)
    images = [appc, docker]
    assert named(images, "sha512-" + hex_id) == [appc]
    assert named(images, "sha512-" + hex_id[:12]) == [appc]
    assert named(images, "sha512:" + hex_id[:12]) == [appc]
    with pytest.raises(NotFound, match="no image sha512-ffffffffffff in the store"):
        named(images, "sha512-ffffffffffff")
