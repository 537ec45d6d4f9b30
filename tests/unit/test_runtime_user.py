"""The user a container runs as, from the image's config and its own /etc/passwd and /etc/group."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lazyfs.provision.image_user import MAX_GROUPS, ImageUser, resolve_user
from providers.errors import BadImage

PASSWD = (
    "root:x:0:0::/root:/bin/sh\n# a comment\napp:x:1000:1001::/srv:/bin/sh\nodd:x:²:7::/:/bin/sh\n"
)
GROUP = "root:x:0:\nstaff:x:50:app\nbad:x:9999999999999:\nwheel:x:10:root,app\nodd:x:²:app\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize(
    ("user", "ids"),
    [
        ("", (0, 0)),
        ("app", (1000, 1001)),
        ("1000", (1000, 1001)),
        ("1000:50", (1000, 50)),
        ("app:staff", (1000, 50)),
        ("4242", (4242, 0)),
        ("0:0", (0, 0)),
    ],
)
def test_names_and_numbers_as_docker_takes_them(
    rootfs: Path, user: str, ids: tuple[int, int]
) -> None:
    found = resolve_user(rootfs, user)
    assert (found.uid, found.gid) == ids


@pytest.mark.parametrize(
    ("user", "said"),
    [
        ("²", "user '²' is not in the image's /etc/passwd"),  # isdigit() took it, int() not
        ("9" * 5000, "is not in the image's /etc/passwd"),  # past int()'s 4,300 digits
        ("4294967295", "is not in the image's /etc/passwd"),  # (uid_t)-1 is no user
        ("odd", "user 'odd' is not in the image's /etc/passwd"),  # its row's uid is no number
        ("app:bad", "group 'bad' is not in the image's /etc/group"),
        ("app:²", "group '²' is not in the image's /etc/group"),
    ],
)
def test_what_is_no_id_is_a_one_line_refusal(rootfs: Path, user: str, said: str) -> None:
    with pytest.raises(BadImage) as refused:
        resolve_user(rootfs, user)
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_a_fifo_or_a_symlink_where_the_tables_are_is_not_read(rootfs: Path) -> None:
    # The image makes /etc/passwd: a FIFO blocked `lazyfs run` for ever before runc, and
    # a device node was opened on the host, as root. Neither is a table.
    (rootfs / "etc" / "passwd").unlink()
    os.mkfifo(rootfs / "etc" / "passwd")
    (rootfs / "etc" / "group").unlink()
    (rootfs / "etc" / "group").symlink_to("/etc/group")
    answers: list[object] = []

    def look() -> None:
        try:
            answers.append(resolve_user(rootfs, "app:staff"))
        except BadImage as error:
            answers.append(error)

    looking = threading.Thread(target=look, daemon=True)
    looking.start()
    looking.join(timeout=60)
    assert not looking.is_alive(), "resolve_user blocked on the FIFO"
    assert isinstance(answers[0], BadImage) and "/etc/passwd" in str(answers[0])


def test_a_table_past_the_bound_is_refused_not_cut(rootfs: Path) -> None:
    # Cut at 4 MiB, its last row kept half its gid: a wrong id, in silence.
    padding = "# " + "x" * 100 + "\n"
    rows = padding * ((4 << 20) // len(padding) + 1) + "alice:x:1000:1001::/:/bin/sh\n"
    (rootfs / "etc" / "passwd").write_text(rows)
    with pytest.raises(BadImage, match="larger than 4194304 bytes"):
        resolve_user(rootfs, "alice")


def test_a_numeric_user_finds_its_group_by_number_not_spelling(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").write_text("app:x:01000:1001::/:/bin/sh\n")
    assert resolve_user(rootfs, "1000") == ImageUser(1000, 1001, (50, 10), "/")


@pytest.mark.parametrize(
    ("user", "groups", "home"),
    [
        # As docker run does (runc sets HOME from the row, "/" without one): Docker's
        # busybox runs as root in groups 0 and 10, with HOME=/root.
        ("", (10,), "/root"),
        ("app", (50, 10), "/srv"),
        ("1000", (50, 10), "/srv"),  # the row found by uid gives the name groups list
        ("app:staff", (), "/srv"),  # a group given: no supplementary ones
        ("4242", (), "/"),  # no row: no name to be listed, no home
    ],
)
def test_supplementary_groups_and_home_come_from_the_image(
    rootfs: Path, user: str, groups: tuple[int, ...], home: str
) -> None:
    found = resolve_user(rootfs, user)
    assert (found.groups, found.home) == (groups, home)


def test_a_scratch_image_runs_as_root_in_no_group_at_slash(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "") == ImageUser(0, 0, (), "/")


def test_more_groups_than_setgroups_takes_is_a_one_line_refusal(rootfs: Path) -> None:
    rows = "".join(f"g{n}:x:{n + 100}:app\n" for n in range(MAX_GROUPS + 1))
    (rootfs / "etc" / "group").write_text(rows)
    with pytest.raises(BadImage, match="user 'app' is in more than 65536 groups"):
        resolve_user(rootfs, "app")


def test_a_row_without_a_name_is_in_no_group(rootfs: Path) -> None:
    # "" is in every member list that is empty or ends in ",": root's group among them.
    (rootfs / "etc" / "passwd").write_text("::1000:1000::/srv:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nwheel:x:10:app,\n")
    assert resolve_user(rootfs, "1000") == ImageUser(1000, 1000, (), "/srv")


def test_rows_are_read_trimmed_as_runc_reads_them(rootfs: Path) -> None:
    # A CRLF table: "app\r" was never a member, "1001\r" no gid.
    (rootfs / "etc" / "passwd").write_text("  app:x:1000:1001::/srv:/bin/sh\r\n\r\n")
    (rootfs / "etc" / "group").write_text("wheel:x:10:root,app\r\n")
    assert resolve_user(rootfs, "app") == ImageUser(1000, 1001, (10,), "/srv")
