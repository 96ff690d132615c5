"""What is made from the code stays what the code says (scripts/generate):
the man pages, the shell completions and the interface XML are current;
the man pages render without warnings; the README's synopses are the
parsers' usage; --version and the Version and InterfaceRevision properties
say the package's version; the installed interface XML is what the running
service introspects."""

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from locald_admin import __version__
from locald_admin import interface as i
from locald_admin.client import shim
from locald_admin.mechanism import audit, main as mechanism_main
from harness import ROOT
from harness.buses import PrivateBus
from harness.mechanism import Mechanism

GENERATE = ROOT / "scripts" / "generate.py"
MAN = ROOT / "data" / "man"
PAGES = ["locald-shim.1", "locald-admin-mechanism.8", "locald-admin.conf.5", "org.locald.Admin1.5"]
BASH = ROOT / "data" / "completions" / "locald-shim.bash"
ZSH = ROOT / "data" / "completions" / "_locald-shim"
INTERFACE_XML = ROOT / "data" / "dbus-1" / "interfaces" / "org.locald.Admin1.xml"
CATALOG = ROOT / "data" / "catalog" / "locald-admin.catalog"
POLICY = ROOT / "data" / "polkit-1" / "actions" / "org.locald.admin1.policy"


def _generate():
    """scripts/generate.py, as a module."""
    sys.path.insert(0, str(GENERATE.parent))
    try:
        import generate
    finally:
        sys.path.remove(str(GENERATE.parent))
    return generate


def test_every_generated_file_is_current():
    cp = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True)
    assert cp.returncode == 0, f"run scripts/generate:\n{cp.stdout}{cp.stderr}"


def test_the_check_notices_a_stale_page(tmp_path, monkeypatch):
    """--check is not a test that cannot fail: a page edited by hand is out of date."""
    generate = _generate()
    page = next(iter(generate.man_pages()))
    copy = tmp_path / page.name
    copy.write_text(page.read_text() + ".\\\" edited by hand\n")
    monkeypatch.setattr(generate, "man_pages", lambda: {copy: page.read_text()})
    monkeypatch.setattr(generate, "completions", lambda: {})
    monkeypatch.setattr(generate, "interface_xml", lambda: {})
    assert generate.main(["--check"]) == 1


def test_another_shtab_version_is_refused_not_reported_as_stale(monkeypatch):
    """The completions are what the pinned shtab makes; another version
    says so instead of rewriting them (docs/architecture.md)."""
    import shtab
    generate = _generate()
    monkeypatch.setattr(shtab, "__version__", "0.0.1")
    with pytest.raises(SystemExit, match=f"shtab 0.0.1 is installed.*{generate.SHTAB_VERSION}"):
        generate.completions()


def test_the_catalog_entry_explains_the_audit_record():
    """The entry journalctl -x shows below each audit record is the record's
    (its MESSAGE_ID), and names every field a record may have, every result
    it may end with, and in its subject only fields every record has."""
    text = CATALOG.read_text()
    ids = re.findall(r"^-- ([0-9a-f]{32})$", text, re.M)
    assert ids == [audit.MESSAGE_ID], ids
    for name in audit.FIELDS:
        assert f"  {audit.FIELD_PREFIX}{name.upper()}\n" in text, name
    for result in [audit.RESULT_OK, audit.RESULT_CANCELLED] + [spec.dbus_name for spec in i.ERRORS]:
        assert f"  {result}\n" in text, result
    [subject] = re.findall(r"^Subject: (.*)$", text, re.M)
    every_record = {"sender", "uid", "pid", "path", "result", "removed", "duration_ms"}
    used = {f[len(audit.FIELD_PREFIX):].lower() for f in re.findall(r"@([A-Z_]+)@", subject)}
    assert used and used <= every_record, subject
    # journalctl prints the body as it is: no line a terminal would wrap.
    assert max(len(line) for line in text.split("\n\n", 2)[2].splitlines()) <= 80


def test_the_template_is_current_whatever_its_date_and_stale_when_a_message_changes(tmp_path, monkeypatch):
    """po/locald-admin.pot is what xgettext makes from the polkit action: a
    template made at another time is current, one made before the action's
    text changed is not."""
    if shutil.which("xgettext") is None:
        pytest.skip("xgettext is not installed (package gettext)")
    generate = _generate()
    committed = generate.POT.read_text()
    later = re.sub(r'"POT-Creation-Date: [^"]*"', '"POT-Creation-Date: 2099-01-01 00:00+0000\\n"', committed)
    assert later != committed and generate._same(generate.POT, later, generate.pot())
    policy = tmp_path / "org.locald.admin1.policy"
    policy.write_text(POLICY.read_text().replace("Remove root-owned leftovers", "Remove leftovers"))
    monkeypatch.setattr(generate, "potfiles", lambda: [str(policy)])
    changed = generate.pot()
    assert "msgid \"Remove leftovers" in changed.replace('"\n"', "")
    assert not generate._same(generate.POT, committed, changed)


def test_each_translation_is_complete_and_compiles():
    """Every po/<lang>.po compiles (msgfmt --check, as make install runs it)
    with every message translated, none fuzzy."""
    if shutil.which("msgfmt") is None:
        pytest.skip("msgfmt is not installed (package gettext)")
    pos = sorted((ROOT / "po").glob("*.po"))
    template = (ROOT / "po" / "locald-admin.pot").read_text()
    wanted = template.count("\nmsgid ")  # the header's is at the start of a line, after a comment
    for po in pos:
        cp = subprocess.run(["msgfmt", "--check", "--statistics", "-o", "/dev/null", str(po)],
                            capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
        assert cp.returncode == 0, cp.stderr
        assert cp.stderr.strip() == f"{wanted - 1} translated messages.", (po.name, cp.stderr)


@pytest.mark.parametrize("page", PAGES)
def test_man_pages_render_without_warnings(page):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (package groff-base)")
    cp = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / page)], capture_output=True, text=True)
    assert cp.returncode == 0 and not cp.stderr, cp.stderr


def _readme_synopsis(program):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(" + re.escape(program) + r" .*?)```", text, re.S)
    assert block, f"no synopsis of {program} in the README"
    return " ".join(block.group(1).split())


def _usage(parser):
    return " ".join(parser.format_usage().split())[len("usage: "):].replace("[-h] ", "")


def test_readme_synopses_are_the_parsers_usage():
    cleanup = shim._parser()._subparsers._group_actions[0].choices["admin"]
    cleanup = cleanup._subparsers._group_actions[0].choices["cleanup"]
    assert _readme_synopsis("locald-shim admin cleanup") == _usage(cleanup)
    assert _readme_synopsis("locald-admin-mechanism") == _usage(mechanism_main.parser())


def test_version_options_say_the_package_version():
    mech = subprocess.run([sys.executable, "-m", "locald_admin.mechanism", "--version"], capture_output=True,
                          text=True)
    assert mech.returncode == 0 and mech.stdout == f"locald-admin-mechanism {__version__}\n", mech
    cli = subprocess.run([sys.executable, "-m", "locald_admin.client.shim", "--version"], capture_output=True,
                         text=True)
    assert cli.returncode == 0 and cli.stdout == f"locald-shim {__version__}\n", cli


def _complete(*words):
    """COMPREPLY of the bash completion for the command line ``words`` (the
    last one being completed)."""
    script = (f"source {BASH}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
              f"COMP_CWORD={len(words) - 1}; _locald_shim; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    cp = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd="/")
    assert cp.returncode == 0, cp.stderr
    return [w for w in cp.stdout.splitlines() if w]


def test_bash_completion_completes_the_command_its_options_and_directories():
    assert _complete("locald-shim", "a") == ["admin"]
    assert _complete("locald-shim", "admin", "c") == ["cleanup"]
    assert set(_complete("locald-shim", "admin", "cleanup", "--no")) == {"--no-interactive", "--no-progress"}
    assert "/tmp" in _complete("locald-shim", "admin", "cleanup", "/tm")
    assert _complete("locald-shim", "admin", "cleanup", "--timeout", "") == []


def test_bash_completion_keeps_a_directory_with_a_space_one_word(tmp_path):
    """The hand-written completion split compgen's output on blanks: a
    directory "with space" came back as two words, so nothing completed."""
    (tmp_path / "with space" / "x").mkdir(parents=True)
    (tmp_path / "st[a]r").mkdir()
    assert _complete("locald-shim", "admin", "cleanup", str(tmp_path / "wi")) == [str(tmp_path / "with space")]
    assert _complete("locald-shim", "admin", "cleanup", str(tmp_path / "st")) == [str(tmp_path / "st[a]r")]


def test_bash_completion_offers_nothing_for_any_option_value():
    """Every option of cleanup that takes a value (from the parser, not a
    list kept by hand) completes to nothing, never to directories."""
    cleanup = shim._parser()._subparsers._group_actions[0].choices["admin"]
    cleanup = cleanup._subparsers._group_actions[0].choices["cleanup"]
    valued = [o for a in cleanup._actions if a.option_strings and a.nargs != 0 for o in a.option_strings]
    assert valued
    for option in valued:
        assert _complete("locald-shim", "admin", "cleanup", option, "/tm") == [], option


def test_zsh_completion_is_valid_zsh():
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    cp = subprocess.run([zsh, "-n", str(ZSH)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert ZSH.read_text().startswith("#compdef locald-shim\n")


def _zsh_complete(line, timeout=20):
    """The command line after typing ``line`` and TAB in an interactive zsh
    (on a pty) with our completion directory first in its fpath: zsh's own
    completion system, run as a user's shell runs it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["zsh", "-f", "-i"], stdin=slave, stdout=slave, stderr=slave, cwd="/",
                            env={"PATH": "/usr/bin:/bin", "TERM": "dumb", "HOME": "/nonexistent", "LANG": "C.UTF-8"})
    os.close(slave)
    seen = b""

    def read_until(pattern):
        nonlocal seen
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = re.search(pattern, seen, re.S)
            if found:
                seen = seen[found.end():]
                return found
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        raise AssertionError(f"zsh never printed {pattern!r}: {seen[-800:]!r}")

    try:
        # The markers are built from $m so that the echo of this line cannot match them.
        os.write(master, (f"PS1='> '; m=@@; fpath=({ZSH.parent} $fpath); autoload -Uz compinit; compinit -u -D; "
                          "show() { print -r -- \"${m}LINE:${BUFFER}${m}\"; BUFFER=; }; zle -N show; "
                          "bindkey '^Y' show; print ${m}READY${m}\n").encode())
        read_until(rb"@@READY@@")
        os.write(master, line.encode() + b"\t")
        time.sleep(0.3)
        os.write(master, b"\x19")  # ^Y: print the line as completion left it
        return read_until(rb"@@LINE:(.*?)@@").group(1).decode()
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_zsh_completion_completes_the_command_its_options_and_directories():
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    assert _zsh_complete("locald-shim a") == "locald-shim admin "
    assert _zsh_complete("locald-shim admin c") == "locald-shim admin cleanup "
    assert _zsh_complete("locald-shim admin cleanup --no-i") == "locald-shim admin cleanup --no-interactive "
    assert _zsh_complete("locald-shim admin cleanup /tm") == "locald-shim admin cleanup /tmp/"
    assert _zsh_complete("locald-shim admin cleanup --timeout 5 /tm") == "locald-shim admin cleanup --timeout 5 /tmp/"
    assert _zsh_complete("locald-shim --v") == "locald-shim --version "
    assert _zsh_complete("locald-shim --t") == "locald-shim --t"  # --timeout belongs to cleanup only


def _interface(xml):
    root = ET.fromstring(re.sub(r"<!DOCTYPE[^>]*>", "", xml))
    [iface] = [e for e in root.findall("interface") if e.get("name") == i.INTERFACE]
    return ET.tostring(iface, encoding="unicode").split()


def test_busctl_reads_the_properties_and_the_installed_xml_is_what_the_service_introspects():
    busctl = shutil.which("busctl")
    if busctl is None:
        pytest.skip("busctl is not installed (package systemd)")
    with PrivateBus() as bus, Mechanism(bus):
        def run(*argv):
            cp = subprocess.run([busctl, f"--address={bus.address}", *argv], capture_output=True, text=True,
                                env=dict(os.environ, SYSTEMD_PAGER="cat"))
            assert cp.returncode == 0, cp.stderr
            return cp.stdout
        assert run("get-property", i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, "Version") == f's "{__version__}"\n'
        assert run("get-property", i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, "InterfaceRevision") == \
            f"u {i.INTERFACE_REVISION}\n"
        everything = run("call", i.BUS_NAME, i.OBJECT_PATH, "org.freedesktop.DBus.Properties", "GetAll", "s",
                         i.INTERFACE)
        assert everything.startswith("a{sv} 2 ") and f'"{__version__}"' in everything, everything
        live = run("call", i.BUS_NAME, i.OBJECT_PATH, "org.freedesktop.DBus.Introspectable", "Introspect")
        live = live.split(" ", 1)[1].strip()
        live = live[1:-1].encode().decode("unicode_escape")  # busctl prints the string quoted and escaped
    assert _interface(live) == _interface(INTERFACE_XML.read_text())
