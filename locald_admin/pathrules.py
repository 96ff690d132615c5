"""Lexical path rules, shared by the mechanism and the client.

Pure functions, no file system access.  They decide only what a path *says*;
whether it is safe to act on is decided later, on held file descriptors
(``locald_admin.mechanism.scope``).  A lexical check is never the security
boundary: it only rejects what is malformed and finds the anchor to start from.
"""

from .interface import ANCHOR_NAME, DATA_DIR_NAME, MAX_PATH_BYTES
from .records import frozen

ANCHOR = ANCHOR_NAME.encode()
# The second anchor kind: <home>/.local/share/locald (the last component is
# the anchor; the home part is checked by identity on the file system).
DATA_DIR = tuple(p.encode() for p in DATA_DIR_NAME.split("/"))

KIND_PROJECT = "project"  # <project>/.locald
KIND_DATA = "data"  # ~/.local/share/locald


class PathRuleError(Exception):
    """A path broke a lexical rule.  ``kind`` is 'invalid' or 'outside'."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


@frozen
class ParsedPath:
    """An absolute path split at its anchor.

    ``prefix``: components above the anchor directory; ``anchor``: its name
    (``.locald``, or ``locald`` for a data directory); ``below``: components
    after it (empty when the anchor itself is the target).  All bytes.
    For kind "data", ``prefix`` ends with ``.local``, ``share`` and
    ``prefix[:-2]`` must be the caller's home directory.
    """

    prefix: tuple[bytes, ...]
    below: tuple[bytes, ...]
    anchor: bytes = ANCHOR
    kind: str = KIND_PROJECT

    @property
    def normalized(self) -> bytes:
        return b"/" + b"/".join(self.prefix + (self.anchor,) + self.below)

    @property
    def home(self) -> tuple[bytes, ...]:
        """For a data-directory anchor: the components of the home directory."""
        return self.prefix[:-2]

    def display(self) -> str:
        return display(self.normalized)

    def project_anchor(self) -> "ParsedPath | None":
        """For a data-directory anchor: the same path split at the first
        '.locald' below it instead, or None when there is none.  What
        scope.resolve falls back to where the part before '.local/share/locald'
        is not the caller's home (locald run with another HOME): a '.locald'
        anchor is taken on any path, so this path gets exactly the rules of
        that anchor and no more."""
        if self.kind != KIND_DATA or ANCHOR not in self.below:
            return None
        k = self.below.index(ANCHOR)
        return ParsedPath(prefix=self.prefix + (self.anchor,) + self.below[:k], below=self.below[k + 1:])


def display(raw) -> str:
    """A path as one line of valid UTF-8 text for messages: undecodable
    bytes and control characters (a newline in a name must not start a
    second line of an error or a log) are backslash-escaped."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def split_components(path) -> tuple[bytes, ...]:
    """Check the lexical rules and return the components of ``path``.

    Rules: a str or bytes; not empty; absolute; at most MAX_PATH_BYTES bytes;
    no NUL; no '.' or '..' component; not '/' itself.  Repeated and trailing
    slashes are normalised away; nothing else is (in particular '..' is never
    collapsed, because 'a/link/..' is not 'a' when 'link' is a symlink).
    """
    if isinstance(path, str):
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise PathRuleError("invalid", "path is not valid UTF-8") from None
    elif isinstance(path, bytes):
        raw = path
    else:
        raise PathRuleError("invalid", "path must be a string")
    if not raw:
        raise PathRuleError("invalid", "path is empty")
    if len(raw) > MAX_PATH_BYTES:
        raise PathRuleError("invalid", f"path is longer than {MAX_PATH_BYTES} bytes ({len(raw)})")
    if b"\0" in raw:
        raise PathRuleError("invalid", "path contains a NUL byte")
    if not raw.startswith(b"/"):
        raise PathRuleError("invalid", f"path is not absolute: {display(raw[:200])}")
    parts = tuple(p for p in raw.split(b"/") if p)
    for p in parts:
        if p in (b".", b".."):
            raise PathRuleError("invalid", f"path has a '{p.decode()}' component: {display(raw[:200])}")
    if not parts:
        raise PathRuleError("invalid", "path is the root directory")
    return parts


def _data_dir_index(parts):
    """Index of the 'locald' of the first '.local/share/locald', or None."""
    n = len(DATA_DIR)
    for k in range(n - 1, len(parts)):
        if parts[k - n + 1:k + 1] == DATA_DIR:
            return k
    return None


def parse(path) -> ParsedPath:
    """Apply the lexical rules and split the path at its first anchor.

    Anchors: a component that is exactly '.locald' ('.localdx' and 'x.locald'
    are not), or the 'locald' of '.local/share/locald'.  Whichever comes first
    is the anchor.  No anchor: 'outside'.
    """
    parts = split_components(path)
    i = parts.index(ANCHOR) if ANCHOR in parts else None
    k = _data_dir_index(parts)
    if k is not None and (i is None or k < i):
        return ParsedPath(prefix=parts[:k], below=parts[k + 1:], anchor=DATA_DIR[-1], kind=KIND_DATA)
    if i is None:
        raise PathRuleError(
            "outside", f"path has no '{ANCHOR_NAME}' component and is not below "
                       f"{DATA_DIR_NAME}: {display(b'/' + b'/'.join(parts))[:300]}") from None
    return ParsedPath(prefix=parts[:i], below=parts[i + 1:])
