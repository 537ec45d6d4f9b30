"""Tar member names and whiteouts: what each entry of a layer means."""

from __future__ import annotations

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from providers.errors import UnsafeLayer
from providers.layer_rules import (
    MAX_NAME_BYTES,
    Action,
    RelPath,
    Rule,
    check_symlink_target,
    classify,
    hardlink_target,
    hides,
    normalize_name,
    past_missing,
    rule_for,
    split_link_target,
)

NORMALIZED = [
    ("a", ("a",)),
    ("./a", ("a",)),
    ("a/", ("a",)),
    ("./a//b/./c/", ("a", "b", "c")),
    ("a/.../b", ("a", "...", "b")),
    ("..a/b..", ("..a", "b..")),
    (".", ()),
    ("./", ()),
    ("././/", ()),
    ("é/\udcff", ("é", "\udcff")),  # undecodable bytes arrive surrogate-escaped
    ("a" * 255, ("a" * 255,)),
    ("a/" * 2047 + "b", ("a",) * 2047 + ("b",)),  # 4095 bytes: just fits
]


@pytest.mark.parametrize(("name", "expected"), NORMALIZED)
def test_normalize_name(name: str, expected: RelPath) -> None:
    assert normalize_name(name, layer="sha256:l") == expected


REFUSED = [
    ("", "empty"),
    ("/", "absolute"),
    ("/etc/passwd", "absolute"),
    ("//a", "absolute"),
    ("..", "'..'"),
    ("../a", "'..'"),
    ("a/../b", "'..'"),
    ("a/..", "'..'"),
    ("./a/../../x", "'..'"),
    ("a\x00b", "NUL"),
    ("a/" * 2048 + "b", f"longer than {MAX_NAME_BYTES}"),
    ("é" * 2049, "longer than 4096"),  # 4098 bytes in 2049 characters
    ("a/" + "b" * 256, "component longer than 255"),
]


@pytest.mark.parametrize(("name", "reason"), REFUSED)
def test_normalize_name_refuses(name: str, reason: str) -> None:
    with pytest.raises(UnsafeLayer) as caught:
        normalize_name(name, layer="sha256:l")
    assert reason in caught.value.reason
    assert caught.value.layer == "sha256:l"
    assert caught.value.entry == name


CLASSIFIED = [
    ((), Rule(Action.WRITE, ())),
    (("a", "b"), Rule(Action.WRITE, ("a", "b"))),
    (("a", "x.wh.b"), Rule(Action.WRITE, ("a", "x.wh.b"))),
    (("a", ".wh.b"), Rule(Action.WHITEOUT, ("a", "b"))),
    ((".wh.b",), Rule(Action.WHITEOUT, ("b",))),
    ((".wh..b",), Rule(Action.WHITEOUT, (".b",))),
    (("a", ".wh.b.wh.c"), Rule(Action.WHITEOUT, ("a", "b.wh.c"))),
    (("a", ".wh..wh..opq"), Rule(Action.OPAQUE, ("a",))),
    ((".wh..wh..opq",), Rule(Action.OPAQUE, ())),
    ((".wh..wh.plnk",), Rule(Action.IGNORE, (".wh..wh.plnk",))),
    ((".wh..wh.plnk", "123.456"), Rule(Action.IGNORE, (".wh..wh.plnk", "123.456"))),
    (("a", ".wh..wh.aufs"), Rule(Action.IGNORE, ("a", ".wh..wh.aufs"))),
    (("a", ".wh..wh..opq.x"), Rule(Action.IGNORE, ("a", ".wh..wh..opq.x"))),
]


@pytest.mark.parametrize(("path", "rule"), CLASSIFIED)
def test_classify(path: RelPath, rule: Rule) -> None:
    assert classify(path, layer="l", entry="/".join(path)) == rule


@pytest.mark.parametrize(
    "path", [(".wh.",), ("a", ".wh."), (".wh..",), (".wh...",), (".wh.x", "y"), ("a", ".wh.x", "y")]
)
def test_classify_refuses_broken_whiteouts(path: RelPath) -> None:
    with pytest.raises(UnsafeLayer):
        classify(path, layer="l", entry="/".join(path))


def test_rule_for_normalizes_then_classifies() -> None:
    assert rule_for("./usr/.wh.lib/", layer="l") == Rule(Action.WHITEOUT, ("usr", "lib"))
    with pytest.raises(UnsafeLayer):
        rule_for("../.wh.x", layer="l")


@pytest.mark.parametrize(
    ("linkname", "expected"), [("a/b", ("a", "b")), ("./a", ("a",)), ("a//b/", ("a", "b"))]
)
def test_hardlink_target(linkname: str, expected: RelPath) -> None:
    assert hardlink_target(linkname, layer="l", entry="x") == expected


@pytest.mark.parametrize(
    "linkname", ["", "/etc/passwd", "../x", "a/../../x", ".", "./", "a/.wh.b", "a\x00"]
)
def test_hardlink_target_refuses(linkname: str) -> None:
    with pytest.raises(UnsafeLayer) as caught:
        hardlink_target(linkname, layer="l", entry="x")
    assert caught.value.entry == "x"


@pytest.mark.parametrize("target", ["/abs/path", "../../..", "a", ".", "x" * 4095])
def test_symlink_targets_are_kept_as_they_are(target: str) -> None:
    check_symlink_target(target, layer="l", entry="s")


@pytest.mark.parametrize("target", ["", "a\x00b", "x" * 4096])
def test_symlink_targets_refused(target: str) -> None:
    with pytest.raises(UnsafeLayer):
        check_symlink_target(target, layer="l", entry="s")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/./b/../c", (True, ("a", "b", "..", "c"))),
        ("a//b/", (False, ("a", "b"))),
        ("/", (True, ())),
        (".", (False, ())),
        ("../..", (False, ("..", ".."))),
    ],
)
def test_split_link_target(target: str, expected: tuple[bool, RelPath]) -> None:
    assert split_link_target(target) == expected


@pytest.mark.parametrize(
    ("part", "rest", "ends", "passed", "left"),
    [
        ("m", "", ("m",), (("m",),), ""),
        ("m", "n/o", ("m", "n", "o"), (("m",), ("m", "n"), ("m", "n", "o")), ""),
        ("m", "../x/y", (), (("m",),), "x/y"),
        ("m", "n/../../..", (), (("m",), ("m", "n")), ".."),
        ("m", "n/../o", ("m", "o"), (("m",), ("m", "n"), ("m", "o")), ""),
        ("m", "n/../../m/p", (), (("m",), ("m", "n")), "m/p"),
    ],
)
def test_past_missing_resolves_lexically(
    part: str, rest: str, ends: RelPath, passed: tuple[RelPath, ...], left: str
) -> None:
    todo = list(reversed([p for p in rest.split("/") if p]))
    found = past_missing(part, todo)
    assert (found.ends, found.passed) == (ends, passed)
    assert "/".join(reversed(todo)) == left  # what the walk goes on with


@pytest.mark.parametrize(
    ("rule", "path", "hidden"),
    [
        (Rule(Action.WHITEOUT, ("a",)), ("a",), True),
        (Rule(Action.WHITEOUT, ("a",)), ("a", "b"), True),
        (Rule(Action.WHITEOUT, ("a",)), ("ab",), False),
        (Rule(Action.WHITEOUT, ("a", "b")), ("a",), False),
        (Rule(Action.OPAQUE, ("a",)), ("a",), False),
        (Rule(Action.OPAQUE, ("a",)), ("a", "b", "c"), True),
        (Rule(Action.OPAQUE, ()), ("x",), True),
        (Rule(Action.OPAQUE, ()), (), False),
        (Rule(Action.WRITE, ("a",)), ("a",), False),
        (Rule(Action.IGNORE, ("a",)), ("a",), False),
    ],
)
def test_hides(rule: Rule, path: RelPath, hidden: bool) -> None:
    assert hides(rule, path) is hidden


NAME_TEXT = st.text(alphabet=["a", "/", ".", "\x00", "é", " ", "w", "h"], max_size=30)


@given(NAME_TEXT)
def test_normalized_names_stay_inside_root(name: str) -> None:
    try:
        path = normalize_name(name, layer="l")
    except UnsafeLayer:
        reject()
    for part in path:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\x00" not in part
    assert not name.startswith("/")
    # Normalizing is idempotent: the rejoined path means the same thing.
    assert normalize_name("/".join(path) or ".", layer="l") == path


@given(NAME_TEXT)
def test_written_paths_never_hold_whiteout_names(name: str) -> None:
    try:
        rule = rule_for(name, layer="l")
    except UnsafeLayer:
        reject()
    if rule.action is Action.WRITE:
        assert not any(part.startswith(".wh.") for part in rule.path)
    if rule.action is Action.WHITEOUT:
        assert rule.path and rule.path[-1] not in ("", ".", "..")
