"""Make the files that are made from the code, so that they cannot drift
from it: the man pages (data/man/*.in + the parsers and the contract ->
data/man/<page>) and the shell completions of locald-shim (its parser ->
data/completions/).  The outputs are committed, so that an install needs
no generator; tests/test_generated.py fails when one is out of date.

    scripts/generate            write every output
    scripts/generate --check    change nothing; list what is out of date, exit 1 if any

Each man page's prose is its template; what the code knows is filled in:
@SYNOPSIS@ and @OPTIONS@ from the program's argparse parser, @EXIT_STATUS@
and @ERRORS@ from the error table, @METHODS@, @SIGNALS@, @PROPERTIES@ from
the interface's member tables, @EXAMPLE@ from the shipped admin.conf.
The completions are shtab's, made from locald-shim's parser: shtab is a
test extra, pinned in constraints.txt, needed only to make the files.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: the same width every time

ROOT = Path(__file__).resolve().parent.parent


from locald_admin import __version__  # noqa: E402
from locald_admin import interface as i  # noqa: E402
from locald_admin import introspection  # noqa: E402
from locald_admin.client import shim  # noqa: E402
from locald_admin.mechanism import audit, config, main as mechanism_main  # noqa: E402

MAN = ROOT / "data" / "man"
COMPLETIONS = ROOT / "data" / "completions"
PRIORITY_NAMES = {i.PRIORITY_ERR: "err", i.PRIORITY_WARNING: "warning", i.PRIORITY_NOTICE: "notice",
                  i.PRIORITY_INFO: "info"}


# -- roff -------------------------------------------------------------------------

def esc(text):
    """``text`` safe in a roff text line: backslashes doubled, hyphens as
    minus signs (what a reader types), no line starting with a control
    character."""
    out = str(text).replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + out if out[:1] in (".", "'") else out


def subparser(parser, *names):
    """The parser of the subcommand ``names`` of ``parser``."""
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def usage(parser):
    """The parser's usage, as ``--help`` shows it, without "usage: " (its
    continuation lines keep their indentation)."""
    text = parser.format_usage().rstrip("\n")
    assert text.startswith("usage: ")
    return "\n".join(line[len("usage: "):] for line in text.splitlines())


def synopsis(*parsers):
    return ".nf\n" + "\n".join(esc(line) for p in parsers for line in usage(p).splitlines()) + "\n.fi"


def version_only(parser):
    """A parser of ``parser``'s program with only its --version (the
    top-level options of a command whose work is a subcommand)."""
    p = argparse.ArgumentParser(prog=parser.prog, add_help=False)
    for a in parser._actions:
        if isinstance(a, argparse._VersionAction):
            p.add_argument(*a.option_strings, action="version", version=a.version)
    return p


def options(parser):
    items = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
            continue
        if not a.option_strings:
            name = f"\\fI{esc(a.metavar or a.dest)}\\fR"
        else:
            takes = a.nargs != 0
            metavar = a.metavar or (a.dest.upper() if takes else None)
            if a.choices and takes and not a.metavar:
                metavar = "{" + ",".join(a.choices) + "}"
            name = ", ".join(f"\\fB{esc(o)}\\fR" + (f" \\fI{esc(metavar)}\\fR" if takes else "")
                             for o in a.option_strings)
        help_text = a.help % {"prog": parser.prog, "default": a.default} if a.help else ""
        if isinstance(a, argparse._VersionAction):
            help_text = "show the version and exit"
        items.append(f".TP\n{name}\n{esc(help_text)}")
    return "\n".join(items)


def exit_status():
    return "\n".join(f".TP\n.B {code}\n{esc(text)}" for code, text in i.exit_statuses())


def errors():
    out = []
    for spec in i.ERRORS:
        more = f" (a case of {spec.refines.dbus_name})" if spec.refines else ""
        out.append(f".TP\n.B {esc(spec.dbus_name)}\n{esc(spec.meaning)}{esc(more)}.\n"
                   f"Exit status {spec.exit_code}, journal priority {PRIORITY_NAMES[spec.priority]}.")
    return "\n".join(out)


def _args(args):
    return ", ".join(f"{a.signature} {a.name}" for a in args)


def methods():
    def out(m):
        return f" \" \\-> (\" \"{_args(m.out_args)}\" )" if m.out_args else ""
    return "\n".join(f".TP\n.BI \"{m.name}(\" \"{_args(m.in_args)}\" ){out(m)}\n{esc(m.doc)}" for m in i.METHODS)


def audit_fields():
    return "\n".join(f".TP\n.B {audit.FIELD_PREFIX}{name.upper()}\n{esc(text)}" for name, text in audit.FIELDS.items())


def keys(table):
    """A table of option or result keys (interface.CLEANUP_OPTIONS, CLEANUP_RESULT)."""
    return "\n".join(f".TP\n.BI \"{k}\" \" {sig}\"\n{esc(text)}" for k, (sig, text) in table.items())


def signals():
    return "\n".join(f".TP\n.BI \"{s.name}(\" \"{_args(s.args)}\" )\n{esc(s.doc)}" for s in i.SIGNALS)


def properties():
    def kind(p):
        return "read-only, constant" if p.emits_changed_signal == "const" else "read-only"
    return "\n".join(f".TP\n.BI \"{p.name}\" \" {p.signature}\" \" ({kind(p)})\"\n{esc(p.doc)}"
                     for p in i.PROPERTIES)


def example_conf():
    return "\n".join(esc(line) for line in (ROOT / "data" / "locald" / "admin.conf").read_text().splitlines())


def man_pages():
    """{output path: text} of every man page."""
    cleanup = subparser(shim._parser(), "admin", "cleanup")
    mech = mechanism_main.parser()
    common = {"@VERSION@": __version__, "@MESSAGE_ID@": audit.MESSAGE_ID}
    fills = {
        "locald-shim.1": {"@SYNOPSIS@": synopsis(cleanup, version_only(shim._parser())),
                          "@OPTIONS@": options(cleanup) + "\n" + options(version_only(shim._parser())),
                          "@EXIT_STATUS@": exit_status()},
        "locald-admin-mechanism.8": {"@SYNOPSIS@": synopsis(mech), "@OPTIONS@": options(mech),
                                     "@AUDIT_FIELDS@": audit_fields()},
        "locald-admin.conf.5": {"@EXAMPLE@": example_conf(), "@ALLOW@": esc(" ".join(config.DEFAULT_ALLOW)),
                                "@DENY@": esc(" ".join(config.DEFAULT_DENY))},
        "org.locald.Admin1.5": {"@BUS_NAME@": i.BUS_NAME, "@OBJECT_PATH@": i.OBJECT_PATH,
                                "@INTERFACE@": i.INTERFACE, "@ACTION@": i.POLKIT_ACTION, "@METHODS@": methods(),
                                "@SIGNALS@": signals(), "@PROPERTIES@": properties(), "@ERRORS@": errors(),
                                "@CLEANUP_OPTIONS@": keys(i.CLEANUP_OPTIONS), "@CLEANUP_RESULT@": keys(i.CLEANUP_RESULT)},
    }
    out = {}
    for page, fill in fills.items():
        text = (MAN / f"{page}.in").read_text()
        for key, value in {**common, **fill}.items():
            text = text.replace(key, value)
        leftover = [w for w in text.split() if w.startswith("@") and w.endswith("@")]
        if leftover:
            raise SystemExit(f"{page}: unfilled {leftover}")
        out[MAN / page] = text
    return out


# -- completions --------------------------------------------------------------------
# Made by shtab from locald-shim's parser (docs/architecture.md, "Libraries
# we could use and do not (or do)").  The committed files are what this exact
# version makes, byte for byte (--check compares them), so another version is
# refused here instead of showing up as a stale file; constraints.txt pins the
# same one.

SHTAB_VERSION = "1.13.0"


def _shtab():
    try:
        import shtab
    except ImportError:
        raise SystemExit(f"scripts/generate: the completions are made by shtab {SHTAB_VERSION}, which is not "
                         "installed (scripts/bootstrap installs the test extras)") from None
    if shtab.__version__ != SHTAB_VERSION:
        raise SystemExit(f"scripts/generate: shtab {shtab.__version__} is installed; the committed completions "
                         f"are made by {SHTAB_VERSION} (pip install shtab=={SHTAB_VERSION})")
    return shtab


def completion_parser(shtab):
    """locald-shim's parser, its ABSOLUTE-PATH completed as a directory."""
    top = shim._parser()
    path = next(a for a in subparser(top, "admin", "cleanup")._actions if a.dest == "path")
    path.complete = shtab.DIRECTORY
    return top


def bash_completion():
    shtab = _shtab()
    text = shtab.complete(completion_parser(shtab), "bash", root_prefix="locald_shim")
    # shtab names the function (and its variables) _shtab_locald_shim...; the
    # function keeps the name it has always had, _locald_shim (what
    # tests/test_debian.py calls, as bash-completion does).
    assert "_shtab_locald_shim()" in text and "_locald_shim" not in text.replace("_shtab_locald_shim", "")
    text = text.replace("_shtab_locald_shim", "_locald_shim")
    return ("# bash completion for locald-shim.  Made by scripts/generate from its parser with shtab "
            f"{SHTAB_VERSION}: do not edit.\n" + text.rstrip("\n") + "\n")


def zsh_completion():
    shtab = _shtab()
    text = shtab.complete(completion_parser(shtab), "zsh", root_prefix="locald_shim")
    first, _, rest = text.partition("\n")
    assert first == "#compdef locald-shim", first
    return (f"{first}\n# zsh completion for locald-shim.  Made by scripts/generate from its parser with shtab "
            f"{SHTAB_VERSION}: do not edit.{rest.rstrip()}\n")


def completions():
    return {COMPLETIONS / "locald-shim.bash": bash_completion(), COMPLETIONS / "_locald-shim": zsh_completion()}


# -- the journal catalog -------------------------------------------------------------

CATALOG = ROOT / "data" / "catalog" / "locald-admin.catalog"


def _catalog_items(items):
    """``(term, text)`` pairs as a catalog body shows them: the term, then
    its text wrapped and indented below it (journalctl prints the lines as
    they are)."""
    out = []
    for term, text in items:
        out.append("  " + term)
        out.extend(textwrap.wrap(text, 74, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(out)


def catalog():
    """The catalog entry of the audit record: its MESSAGE_ID and fields from
    mechanism/audit.py, its results from the error table."""
    results = [(audit.RESULT_OK, "the tree was removed (a dry run: counted), or there was nothing to remove"),
               (audit.RESULT_CANCELLED, "the caller left the bus before the answer; the next call finishes "
                                        "the job")]
    results += [(spec.dbus_name, spec.meaning) for spec in i.ERRORS]
    fills = {"@MESSAGE_ID@": audit.MESSAGE_ID,
             "@RESULTS@": "The results a request can end with:\n\n" + _catalog_items(results),
             "@FIELDS@": _catalog_items((audit.FIELD_PREFIX + name.upper(), text)
                                        for name, text in audit.FIELDS.items())}
    text = (CATALOG.parent / (CATALOG.name + ".in")).read_text()
    for key, value in fills.items():
        text = text.replace(key, value)
    return {CATALOG: "# Made by scripts/generate from data/catalog/locald-admin.catalog.in and "
                     "mechanism/audit.py: do not edit.\n" + text}


# -- translations -----------------------------------------------------------------
# The polkit action declares gettext-domain="locald-admin": polkitd shows its
# description and message from $(LOCALEDIR)/<lang>/LC_MESSAGES/locald-admin.mo.
# The template is what xgettext makes from the files po/POTFILES lists (the
# action, through the ITS rules polkitd ships); each po/<lang>.po is merged
# with it by msgmerge (a translation to update shows up as out of date).  The
# Makefile compiles each .po present into its .mo.

PO = ROOT / "po"
DOMAIN = "locald-admin"
POT = PO / f"{DOMAIN}.pot"
# The one header line that says when, not what: not compared (see _same).
_CREATION = re.compile(r'^"POT-Creation-Date: [^"]*"\n', re.M)


def _gettext(*argv, **kw):
    try:
        cp = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise SystemExit(f"scripts/generate: the translation template is made by {argv[0]}, which is not "
                         "installed (Debian package gettext; scripts/bootstrap installs it)") from None
    if cp.returncode != 0:
        raise SystemExit(f"scripts/generate: {' '.join(argv[:2])} failed: {cp.stderr.strip()}")
    return cp.stdout


def potfiles():
    """The source files of the template, as po/POTFILES lists them."""
    lines = (ln.strip() for ln in (PO / "POTFILES").read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def pot():
    text = _gettext("xgettext", "--from-code=UTF-8", f"--package-name={DOMAIN}", f"--package-version={__version__}",
                    "--copyright-holder=the locald-admin authors", "--msgid-bugs-address=", "-o", "-",
                    *potfiles())
    if "msgid \"\"" not in text or text.count("msgid ") < 2:
        raise SystemExit(f"scripts/generate: xgettext found no message in {potfiles()} (the polkit ITS rules, "
                         "/usr/share/gettext/its/polkit.loc of the package polkitd, missing?)")
    return text


def translations():
    """The template and every po/<lang>.po merged with it."""
    template = pot()
    out = {POT: template}
    with tempfile.NamedTemporaryFile("w", suffix=".pot") as f:
        f.write(template)
        f.flush()
        for po in sorted(PO.glob("*.po")):
            out[po] = _gettext("msgmerge", "--quiet", "--no-fuzzy-matching", "-o", "-", str(po), f.name)
    return out


def _same(path, current, text):
    """Whether ``current`` (the file's text) is what ``text`` says; a
    template or translation made at another time is the same."""
    if path.suffix in (".pot", ".po"):
        return _CREATION.sub("", current) == _CREATION.sub("", text)
    return current == text


def interface_xml():
    """The interface alone, as /usr/share/dbus-1/interfaces/ holds it."""
    return {ROOT / "data" / "dbus-1" / "interfaces" / f"{i.INTERFACE}.xml":
            introspection.INTROSPECT_DOCTYPE
            + "<!-- Made by scripts/generate from locald_admin/interface.py: do not edit. -->\n"
            "<node>\n" + introspection.interface_element() + "</node>\n"}


def outputs():
    return {**man_pages(), **completions(), **interface_xml(), **catalog(), **translations()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="scripts/generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if an output is out of date")
    args = p.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current is not None and _same(path, current, text):
            continue
        stale.append(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for rel in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {rel}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
