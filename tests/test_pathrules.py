"""Lexical path rules (locald_admin.pathrules): pure functions, no file system.

These rules only reject malformed paths and find the anchor; they are not the
security boundary (that is the fd-based resolution, tested in test_engine.py).
Still, every rule here is part of the contract the client and the mechanism
share, so each one is pinned down, for str and for bytes input.
"""

import pytest

from locald_admin import pathrules
from locald_admin.interface import MAX_PATH_BYTES
from locald_admin.mechanism import engine
from locald_admin.mechanism.errors import InvalidPath, OutsideScope
from locald_admin.pathrules import PathRuleError, parse, split_components


def as_bytes(p):
    return p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape")


def both(p):
    """The same path as str and as bytes."""
    return [p, as_bytes(p)]


def invalid(path):
    with pytest.raises(PathRuleError) as ei:
        split_components(path)
    assert ei.value.kind == "invalid", str(ei.value)
    # parse applies the same rules first.
    with pytest.raises(PathRuleError) as ei2:
        parse(path)
    assert ei2.value.kind == "invalid"
    return str(ei.value)


# -- empty, relative, root ---------------------------------------------------

@pytest.mark.parametrize("path", both(""))
def test_empty_is_invalid(path):
    assert "empty" in invalid(path)


@pytest.mark.parametrize("path", [
    ".locald", ".locald/x", "a/.locald/x", "./.locald/x", "../.locald/x", " /a/.locald/x", "~/.locald/x",
    b".locald/x", b"a/.locald/x",
])
def test_relative_is_invalid(path):
    assert "absolute" in invalid(path)


@pytest.mark.parametrize("path", ["/", "//", "///////", b"/", b"//"])
def test_root_itself_is_invalid(path):
    assert "root" in invalid(path)


@pytest.mark.parametrize("path", [None, 42, 4.2, ["/a/.locald"], bytearray(b"/a/.locald/x"), memoryview(b"/a/.locald/x")])
def test_non_string_is_invalid(path):
    assert "string" in invalid(path)


def test_pathlib_path_is_not_accepted():
    # Only str and bytes cross the bus; anything else is refused, never str()'d.
    import pathlib
    invalid(pathlib.PurePosixPath("/a/.locald/x"))


# -- '.' and '..' ------------------------------------------------------------

DOT_PATHS = [
    "/.", "/..",                            # the only component
    "/./a/.locald/x", "/../a/.locald/x",    # first
    "/a/./b/.locald/x", "/a/../b/.locald/x",  # middle of the prefix
    "/a/./.locald/x", "/a/../.locald/x",    # right before the anchor
    "/a/.locald/./x", "/a/.locald/../x",    # right after the anchor
    "/a/.locald/x/./y", "/a/.locald/x/../y",  # middle below the anchor
    "/a/.locald/x/.", "/a/.locald/x/..",    # last
    "/a/.locald/x/./", "/a/.locald/x/../",  # last, with a trailing slash
    "/a/.locald/.", "/a/.locald/..",        # directly below the anchor, last
    "/a/.locald/x//..//", "//..//a/.locald",
]


@pytest.mark.parametrize("path", DOT_PATHS + [as_bytes(p) for p in DOT_PATHS])
def test_dot_and_dotdot_components_are_invalid_anywhere(path):
    msg = invalid(path)
    assert "'.'" in msg or "'..'" in msg


@pytest.mark.parametrize("name", ["...", ".x", "..x", "x.", "x..", ". ", " .", ".. ", "...."])
def test_names_that_merely_contain_dots_are_fine(name):
    p = parse(f"/a/.locald/{name}")
    assert p.below == (name.encode(),)


def test_dotdot_is_never_collapsed():
    # 'a/link/..' is not 'a' when 'link' is a symlink: rejected, not rewritten.
    for path in ("/home/u/proj/.locald/link/../x", "/home/u/link/../proj/.locald/x"):
        invalid(path)


# -- length --------------------------------------------------------------------

def _path_of_len(n, filler="a"):
    head = "/p/.locald/"
    body = filler * ((n - len(head.encode())) // len(filler.encode()))
    p = head + body
    assert len(p.encode()) == n, (len(p.encode()), n)
    return p


@pytest.mark.parametrize("conv", [str, as_bytes], ids=["str", "bytes"])
def test_4096_bytes_accepted_4097_rejected(conv):
    assert MAX_PATH_BYTES == 4096
    ok = conv(_path_of_len(4096))
    parsed = parse(ok)
    assert len(parsed.normalized) == 4096
    assert "longer than 4096" in invalid(conv(_path_of_len(4097)))


def test_length_is_counted_in_utf8_bytes_not_characters():
    # 'é' is two bytes: 2042 of them + 12 bytes of head = 4096 bytes, ~2054 characters.
    head = "/p/.locald/"
    ok = head + "é" * ((4096 - len(head)) // 2)
    assert len(ok.encode()) == 4095  # 11 + 2 * 2042
    parse(ok + "x")  # 4096 bytes
    invalid(ok + "é")  # 4097 bytes, although far fewer than 4096 characters
    assert len((ok + "é").encode()) == 4097


def test_length_counts_the_raw_request_including_extra_slashes():
    # The limit applies to what was sent (as the kernel's PATH_MAX does),
    # before repeated slashes are squeezed.
    p = "/p/.locald/" + "a" * 10
    padded = p.replace("/", "/" * 2000)
    assert len(padded.encode()) > 4096
    invalid(padded)


# -- NUL -----------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/a/.locald/x\0", "/a/.locald/\0x", "/a\0/.locald/x", "/a/.loc\0ald/x", "\0/a/.locald", "/\0",
])
def test_nul_is_invalid(path):
    for p in both(path):
        assert "NUL" in invalid(p)


# -- slashes -------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/a/b/.locald/c/d",
    "//a/b/.locald/c/d",
    "/a//b/.locald//c/d",
    "/a/b///.locald/c///d",
    "/a/b/.locald/c/d/",
    "/a/b/.locald/c/d//////",
    "///a///b///.locald///c///d///",
])
def test_repeated_and_trailing_slashes_are_normalised(path):
    for p in both(path):
        parsed = parse(p)
        assert parsed.prefix == (b"a", b"b")
        assert parsed.below == (b"c", b"d")
        assert parsed.normalized == b"/a/b/.locald/c/d"
        assert split_components(p) == (b"a", b"b", b".locald", b"c", b"d")


def test_split_components_needs_no_anchor():
    assert split_components("/usr//lib/") == (b"usr", b"lib")


# -- the anchor --------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/a/.localdx/b", "/a/x.locald/b", "/a/.locald_/b", "/a/.LOCALD/b", "/a/.Locald/b",
    "/a/.locald /b", "/a/ .locald/b", "/a/locald/b", "/a/..locald/b", "/a/.locald.d/b",
    "/a/b", "/x.locald", "/.localdx",
])
def test_only_an_exact_locald_component_is_an_anchor(path):
    for p in both(path):
        with pytest.raises(PathRuleError) as ei:
            parse(p)
        assert ei.value.kind == "outside"
        # split_components alone does not care about the anchor.
        assert split_components(p)


def test_first_locald_is_the_anchor():
    for p in both("/a/.locald/b/.locald/c"):
        parsed = parse(p)
        assert parsed.prefix == (b"a",)
        assert parsed.below == (b"b", b".locald", b"c")


def test_near_misses_before_the_real_anchor_stay_in_the_prefix():
    parsed = parse("/x.locald/.localdx/.locald/t")
    assert parsed.prefix == (b"x.locald", b".localdx")
    assert parsed.below == (b"t",)


@pytest.mark.parametrize("path", ["/p/.locald", "/p/.locald/", "/p//.locald//"])
def test_anchor_itself_as_target(path):
    for p in both(path):
        parsed = parse(p)
        assert parsed.prefix == (b"p",)
        assert parsed.below == ()
        assert parsed.normalized == b"/p/.locald"


def test_anchor_directly_below_root():
    parsed = parse("/.locald/x")
    assert parsed.prefix == ()
    assert parsed.below == (b"x",)
    assert parsed.normalized == b"/.locald/x"


# -- bytes, non-UTF-8, odd characters ------------------------------------------

def test_bytes_and_str_give_the_same_result():
    for p in ("/home/u/proj/.locald/run/x", "/a/.locald", "/ü/.locald/ß"):
        assert parse(p) == parse(p.encode())


def test_non_utf8_bytes_are_kept_verbatim():
    raw = b"/p\xff/.locald/\xfe\xfd/x\x80"
    parsed = parse(raw)
    assert parsed.prefix == (b"p\xff",)
    assert parsed.below == (b"\xfe\xfd", b"x\x80")
    assert parsed.normalized == raw
    # Shown as valid text, with the undecodable bytes escaped.
    shown = parsed.display()
    shown.encode("utf-8")  # must not raise
    assert shown == "/p\\xff/.locald/\\xfe\\xfd/x\\x80"


def test_surrogateescaped_str_is_the_same_as_its_bytes():
    raw = b"/p/.locald/\xff\xfe"
    assert parse(raw.decode("utf-8", "surrogateescape")) == parse(raw)


def test_str_with_unencodable_surrogate_is_invalid():
    # A lone high surrogate is not a surrogateescape'd byte.
    assert "UTF-8" in invalid("/p/.locald/\ud800")


@pytest.mark.parametrize("name", [
    "a\nb", "\n", "a\tb", "\r", "\x01\x02\x1f", "\x7f", "\x1b[31m", " ", "  lead and trail  ", "a\\b",
    "\u2028", "x\x85y", "*?[]", "$(rm -rf ~)", "-rf", "'\"",
])
def test_control_and_odd_characters_are_valid_names(name):
    for p in both(f"/pre{name}fix/.locald/{name}/x"):
        parsed = parse(p)
        assert parsed.below == (name.encode(), b"x")
        assert parsed.prefix == (f"pre{name}fix".encode(),)


def test_error_messages_are_valid_text_for_undecodable_input():
    with pytest.raises(PathRuleError) as ei:
        parse(b"\xff\xfe/no/anchor")  # relative
    str(ei.value).encode("utf-8")
    with pytest.raises(PathRuleError) as ei:
        parse(b"/\xff\xfe/no/anchor")
    assert ei.value.kind == "outside"
    assert "\\xff\\xfe" in str(ei.value)


def test_display_escapes_only_undecodable_bytes():
    assert pathrules.display(b"/a/\xc3\xa9/\xff") == "/a/é/\\xff"


# -- the engine maps the kinds to its errors -----------------------------------

def test_engine_parse_maps_invalid_to_InvalidPath():
    for p in ("", "rel/.locald", "/a/.locald/../x", "/a/.locald/\0", "/", _path_of_len(4097)):
        with pytest.raises(InvalidPath):
            engine.parse(p)


def test_engine_parse_maps_no_anchor_to_OutsideScope():
    for p in ("/etc/passwd", "/home/u/.localdx/x", "/home/u/x.locald"):
        with pytest.raises(OutsideScope):
            engine.parse(p)


def test_a_data_dir_path_knows_its_project_anchor_and_nothing_else_has_one():
    """What scope.resolve falls back to where the data directory is not the
    caller's: the first '.locald' below it, split as any '.locald' path is."""
    data = pathrules.parse("/srv/me/.local/share/locald/projects/p/.locald/build/rootfs")
    assert data.kind == pathrules.KIND_DATA
    assert data.project_anchor() == pathrules.ParsedPath(
        prefix=(b"srv", b"me", b".local", b"share", b"locald", b"projects", b"p"), below=(b"build", b"rootfs"),
        anchor=pathrules.ANCHOR, kind=pathrules.KIND_PROJECT)
    assert pathrules.parse("/srv/me/.local/share/locald/bundles/c").project_anchor() is None
    assert pathrules.parse("/home/me/p/.locald/x").project_anchor() is None  # already a .locald anchor
    assert pathrules.parse("/srv/me/.local/share/locald/p/.locald").project_anchor().below == ()
