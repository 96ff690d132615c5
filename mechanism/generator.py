"""``locald-admin-generator``: a systemd generator that makes the roots the
administrator allows in /etc/locald/admin.conf writable in the unit's
sandbox.

The unit (``ProtectSystem=strict``) makes only its ``ReadWritePaths=``
writable: today's defaults of ``[scope] allow``.  An administrator who
allows more (``allow = /home /opt/projects``) edits admin.conf and runs
``systemctl daemon-reload``; this generator, run by systemd at boot and at
every reload, then writes the drop-in
``<normal dir>/locald-admin.service.d/50-allowed-roots.conf`` with
``ReadWritePaths=-<root>`` for each allowed root that the mechanism's own
rule keeps in scope.  A malformed admin.conf writes nothing (the service
then fails every call closed, naming the problem).

Which roots: the mechanism decides by the nearest listed root above an
anchor, matched by identity, a root listed both ways being denied
(config.py).  An allowed root is always its own nearest root, so it is
written unless it is also denied: compared on lexically normalized paths
(``/etc/``, ``/etc//`` and ``/etc/.`` are ``/etc``), and, for the roots that
exist when the generator runs, by (st_dev, st_ino) as the mechanism does (a
symlink to a denied root is that root).  An allowed root below a denied one
is kept (it is nearer), and so is one above a denied one (the mechanism
refuses anchors below the denied root; the sandbox is not its only check).
A root with a '..' component is never written: '..' is resolved only
through the file system, so a string cannot say where it leads.  (admin.conf
refuses '.' and '..' components outright; this is for a Config built
otherwise.)

How they are written: ReadWritePaths= is a space-separated list in which
systemd expands ``%`` specifiers and takes a backslash, a quote and
whitespace as syntax (systemd.unit(5), systemd.syntax(7)).  Each path is
one word: ``%`` doubled, a backslash and the quotes escaped with a
backslash, and the word double-quoted when the path holds whitespace or
another control character.  Not C escapes such as ``\\x20``: systemd 252
unquotes this setting without decoding them (``\\x20`` reads as ``x20``).  A
path with a newline or carriage return cannot be written on one line and is
left out, with a warning.

    locald-admin-generator NORMAL_DIR [EARLY_DIR LATE_DIR]
"""

import os
import sys

from . import config as configuration

UNIT = "locald-admin.service"
DROPIN = "50-allowed-roots.conf"
USAGE = ("usage: locald-admin-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n"
         "A systemd generator: writes NORMAL_DIR/locald-admin.service.d/50-allowed-roots.conf from the allowed "
         "roots of /etc/locald/admin.conf.")


def normalize(path):
    """``path`` without '.', empty components and trailing slashes
    (``//etc/./`` is ``/etc``); '..' is kept, for the caller to refuse."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def _identity(path):
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None  # does not exist (yet): only the lexical rule applies
    return (st.st_dev, st.st_ino)


def writable_roots(cfg, warn=lambda msg: None):
    """The allowed roots the mechanism keeps in scope, normalized, in the
    order of ``[scope] allow``, each once (see the module's docstring)."""
    denied = {normalize(d) for d in cfg.deny}
    ids = cfg.identities()
    roots = []
    for root in cfg.allow:
        norm = normalize(root)
        if not root.startswith("/") or ".." in norm.split("/"):
            warn(f"allowed root '{root}' is not an absolute path without '..': not made writable")
        elif "\n" in norm or "\r" in norm:
            warn(f"allowed root {root!r} holds a line break, which a unit file cannot hold: not made writable")
        elif norm in denied or ids.get(_identity(norm), (True,))[0] is False:
            continue  # denied as well: the deny decides, as in the mechanism
        elif norm not in roots:
            roots.append(norm)
    return roots


def escape(path):
    """``path`` as one word of ReadWritePaths= (see the module's docstring)."""
    word = path.replace("%", "%%")
    word = "".join("\\" + c if c in "\\\"'" else c for c in word)
    if any(c.isspace() or not c.isprintable() for c in word):
        return f'"{word}"'
    return word


def dropin(cfg, warn=lambda msg: None):
    """The drop-in's text for a Config, or None when nothing is to add."""
    roots = writable_roots(cfg, warn)
    if not roots:
        return None
    lines = ["# Written by locald-admin-generator from " + cfg.source + "; do not edit:",
             "# change [scope] allow there and run systemctl daemon-reload.",
             "[Service]"]
    lines += [f"ReadWritePaths={escape('-' + r)}" for r in roots]
    return "\n".join(lines) + "\n"


def main(argv=None, path=configuration.DEFAULT_PATH):
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    # systemd passes one or three absolute directories; anything else (an
    # option, a relative path) is a mistake, not a place to write into.
    if len(argv) not in (1, 3) or not all(a.startswith("/") for a in argv):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        cfg = configuration.load(path)
    except configuration.ConfigError as e:
        print(f"locald-admin-generator: {e}; no drop-in written", file=sys.stderr)
        return 0  # never fail the boot over it
    text = dropin(cfg, warn=lambda msg: print(f"locald-admin-generator: {cfg.source}: {msg}", file=sys.stderr))
    if text is None:
        return 0
    d = os.path.join(argv[0], UNIT + ".d")
    os.makedirs(d, mode=0o755, exist_ok=True)
    # Its mode is the unit's (0644), whatever the umask systemd gave us.
    fd = os.open(os.path.join(d, DROPIN), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    os.fchmod(fd, 0o644)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
