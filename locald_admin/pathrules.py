"""Lexical path rules, shared by the mechanism and the client.

Pure functions, no file system access.  They decide only what a path *says*;
whether it is safe to act on is decided later, on held file descriptors
(``locald_admin.mechanism.scope``).  A lexical check is never the security
boundary: it only rejects what is malformed and finds the anchor to start from.
"""

from dataclasses import dataclass
from typing import Tuple

from .interface import ANCHOR_NAME, MAX_PATH_BYTES

ANCHOR = ANCHOR_NAME.encode()


class PathRuleError(Exception):
    """A path broke a lexical rule.  ``kind`` is 'invalid' or 'outside'."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ParsedPath:
    """An absolute path split at its anchor.

    ``prefix``: components before the first ``.locald``; ``below``: components
    after it (empty when the anchor itself is the target).  All bytes.
    """

    prefix: Tuple[bytes, ...]
    below: Tuple[bytes, ...]

    @property
    def normalized(self) -> bytes:
        return b"/" + b"/".join(self.prefix + (ANCHOR,) + self.below)

    def display(self) -> str:
        return display(self.normalized)


def display(raw: bytes) -> str:
    """A path as valid UTF-8 text for messages (undecodable bytes escaped)."""
    return raw.decode("utf-8", "backslashreplace")


def split_components(path) -> Tuple[bytes, ...]:
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


def parse(path) -> ParsedPath:
    """Apply the lexical rules and split the path at its first anchor.

    The anchor is the first component that is exactly '.locald' ('.localdx'
    and 'x.locald' are not).  No anchor: 'outside'.
    """
    parts = split_components(path)
    try:
        i = parts.index(ANCHOR)
    except ValueError:
        raise PathRuleError(
            "outside", f"path has no '{ANCHOR_NAME}' component: {display(b'/' + b'/'.join(parts))[:300]}"
        ) from None
    return ParsedPath(prefix=parts[:i], below=parts[i + 1:])
