"""`make install` into a staging tree (DESTDIR), as a packager does: every
file lands where the system bus, polkitd and systemd read it, the Exec= and
ExecStart= lines name the mechanism's real installed path, the staged
launchers run, and `make uninstall` removes exactly what install laid."""

import configparser
import gettext
import marshal
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from locald_admin import __version__
from locald_admin.mechanism import audit, polkit

ROOT = Path(__file__).resolve().parent.parent
PO_FILES = sorted((ROOT / "po").glob("*.po"))

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(target, destdir, prefix="/usr"):
    return subprocess.run(["make", "-C", str(ROOT), target, f"DESTDIR={destdir}", f"PREFIX={prefix}"],
                          capture_output=True, text=True, timeout=300)


def _dirs(*args):
    """The directories `make install` would use (make print-dirs), as a dict."""
    cp = subprocess.run(["make", "-s", "-C", str(ROOT), "print-dirs", *args], capture_output=True, text=True,
                        check=True, timeout=60)
    return dict(line.split("=", 1) for line in cp.stdout.splitlines())


def _rel(path):
    return path.lstrip("/")


def _files(top):
    return sorted(str(p.relative_to(top)) for p in Path(top).rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    dest = tmp_path_factory.mktemp("stage")
    cp = _make("install", dest)
    if cp.returncode != 0 and "No module named pip" in cp.stderr:
        pytest.skip("Debian's python3-pip is not installed (scripts/bootstrap installs it as root)")
    assert cp.returncode == 0, cp.stderr
    return dest


def test_files_land_where_the_system_reads_them(staged):
    d = _dirs()
    for rel in (f"{d['DBUSCONFDIR']}/org.locald.Admin1.conf",
                f"{d['DBUSSERVICEDIR']}/org.locald.Admin1.service",
                f"{d['POLKITACTIONDIR']}/org.locald.admin1.policy",
                f"{d['UNITDIR']}/locald-admin.service",
                "usr/lib/locald-admin/locald-admin-mechanism",
                "usr/bin/locald-shim",
                f"{d['GENDIR']}/locald-admin-generator",
                f"{d['DBUSIFACEDIR']}/org.locald.Admin1.xml",
                "usr/share/man/man1/locald-shim.1", "usr/share/man/man8/locald-admin-mechanism.8",
                "usr/share/man/man5/locald-admin.conf.5", "usr/share/man/man5/org.locald.Admin1.5",
                f"{d['BASHCOMPDIR']}/locald-shim",
                "usr/share/zsh/vendor-completions/_locald-shim",
                polkit.EXAMPLE_RULE.lstrip("/"),  # where polkit's refusals say it is
                f"{d['CATALOGDIR']}/locald-admin.catalog",
                *(f"{d['LOCALEDIR']}/{po.stem}/LC_MESSAGES/locald-admin.mo" for po in PO_FILES),
                "etc/locald/admin.conf"):
        assert (staged / _rel(rel)).exists(), rel
        assert (ROOT / "data").as_posix() not in (staged / _rel(rel)).read_text(errors="replace")


def test_directories_come_from_pkg_config_with_fallbacks_and_overrides(tmp_path):
    """With PREFIX=/usr each system directory is pkg-config's answer; without
    an answer (no .pc file) the built-in default; a directory given on the
    command line wins; another PREFIX never asks pkg-config (its answers are
    the system's)."""
    fake = tmp_path / "pkg-config"
    fake.write_text("#!/bin/sh\n# --variable=NAME MODULE\nv=${1#--variable=}\n"
                    "case \"$2:$v\" in\n"
                    "systemd:systemdsystemunitdir) echo /pc/units;;\n"
                    "systemd:systemdsystemgeneratordir) echo /pc/generators;;\n"
                    "systemd:catalogdir) echo /pc/catalog;;\n"
                    "dbus-1:datadir) echo /pc/share;;\n"
                    "dbus-1:system_bus_services_dir) echo /pc/services;;\n"
                    "dbus-1:interfaces_dir) echo /pc/interfaces;;\n"
                    "polkit-gobject-1:policydir) echo /pc/actions/;;\n"
                    "bash-completion:completionsdir) echo /pc/completions;;\n"
                    "*) exit 1;;\nesac\n")
    fake.chmod(0o755)
    d = _dirs(f"PKG_CONFIG={fake}")
    assert (d["UNITDIR"], d["GENDIR"], d["DBUSCONFDIR"], d["DBUSSERVICEDIR"], d["DBUSIFACEDIR"],
            d["POLKITACTIONDIR"], d["BASHCOMPDIR"], d["CATALOGDIR"]) == (
        "/pc/units", "/pc/generators", "/pc/share/dbus-1/system.d", "/pc/services", "/pc/interfaces",
        "/pc/actions", "/pc/completions", "/pc/catalog")
    d = _dirs("PKG_CONFIG=false")
    assert (d["UNITDIR"], d["GENDIR"], d["DBUSCONFDIR"], d["DBUSSERVICEDIR"], d["POLKITACTIONDIR"],
            d["CATALOGDIR"], d["LOCALEDIR"]) == (
        "/usr/lib/systemd/system", "/usr/lib/systemd/system-generators", "/usr/share/dbus-1/system.d",
        "/usr/share/dbus-1/system-services", "/usr/share/polkit-1/actions", "/usr/lib/systemd/catalog",
        "/usr/share/locale")
    assert _dirs(f"PKG_CONFIG={fake}", "UNITDIR=/mine")["UNITDIR"] == "/mine"
    d = _dirs(f"PKG_CONFIG={fake}", "PREFIX=/opt/l")
    assert d["UNITDIR"] == "/opt/l/lib/systemd/system" and d["DBUSSERVICEDIR"] == "/opt/l/share/dbus-1/system-services"
    # And install follows them.
    cp = subprocess.run(["make", "-C", str(ROOT), "install", f"DESTDIR={tmp_path / 'stage'}", f"PKG_CONFIG={fake}",
                         "CWALK=no"], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    for rel in ("pc/units/locald-admin.service", "pc/generators/locald-admin-generator",
                "pc/share/dbus-1/system.d/org.locald.Admin1.conf", "pc/services/org.locald.Admin1.service",
                "pc/interfaces/org.locald.Admin1.xml", "pc/actions/org.locald.admin1.policy",
                "pc/completions/locald-shim", "pc/catalog/locald-admin.catalog"):
        assert (tmp_path / "stage" / rel).exists(), rel
    assert os.path.exists(tmp_path / "stage/pc/generators/locald-admin-generator")  # the relative link resolves


def test_journalctl_reads_the_installed_catalog_entry(staged, tmp_path):
    """The staged catalog file is one the real journalctl builds into its
    database and lists under the audit record's MESSAGE_ID, with its
    subject (journalctl -x on a booted system: tests/test_systemd.py)."""
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl is not installed (package systemd)")
    d = _dirs()
    root = tmp_path / "root"
    catalog = root / _rel(d["CATALOGDIR"]) / "locald-admin.catalog"
    catalog.parent.mkdir(parents=True)
    shutil.copy(staged / _rel(d["CATALOGDIR"]) / "locald-admin.catalog", catalog)
    cp = subprocess.run(["journalctl", f"--root={root}", "--update-catalog"], capture_output=True, text=True)
    assert cp.returncode == 0 and not cp.stderr, cp.stderr
    listed = subprocess.run(["journalctl", f"--root={root}", "--list-catalog", audit.MESSAGE_ID],
                            capture_output=True, text=True, check=True).stdout
    assert listed.startswith(f"{audit.MESSAGE_ID} locald-admin: Cleanup of @LOCALD_PATH@"), listed
    text = subprocess.run(["journalctl", f"--root={root}", "--dump-catalog", audit.MESSAGE_ID],
                          capture_output=True, text=True, check=True).stdout
    assert "LOCALD_REASON" in text and "org.locald.Admin1.Error.InUse" in text, text


@pytest.mark.skipif(not PO_FILES, reason="no translation in po/")
def test_each_translation_is_installed_as_the_domain_the_action_declares(staged):
    """One .mo per po/<lang>.po, in the domain the installed action names
    (gettext-domain), translating its description and message: what polkitd
    looks up for a caller's language."""
    d = _dirs()
    policy = ET.parse(staged / _rel(d["POLKITACTIONDIR"]) / "org.locald.admin1.policy")
    texts = [(e.get("gettext-domain"), e.text) for e in policy.iter() if e.tag in ("description", "message")]
    assert texts and all(domain == "locald-admin" for domain, _ in texts), texts
    for po in PO_FILES:
        t = gettext.translation("locald-admin", localedir=staged / _rel(d["LOCALEDIR"]), languages=[po.stem])
        for _, text in texts:
            assert t.gettext(text) != text and t.gettext(text).strip(), (po.stem, text)


def test_exec_paths_name_the_installed_mechanism(staged):
    d = _dirs()
    act = configparser.ConfigParser(interpolation=None)
    act.read(staged / _rel(d["DBUSSERVICEDIR"]) / "org.locald.Admin1.service")
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(staged / _rel(d["UNITDIR"]) / "locald-admin.service")
    exec_line = act["D-BUS Service"]["Exec"].split()
    start_line = unit["Service"]["ExecStart"].split()
    assert exec_line == start_line == ["/usr/lib/locald-admin/locald-admin-mechanism", "--idle-timeout", "30"]
    installed = staged / exec_line[0].lstrip("/")
    assert installed.is_file() and os.access(installed, os.X_OK)


def test_staged_launchers_run_with_the_private_site_dir(staged):
    mech = staged / "usr/lib/locald-admin/locald-admin-mechanism"
    cp = subprocess.run([str(mech), "--help"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert cp.returncode == 0 and "--idle-timeout" in cp.stdout, cp.stderr
    shim = staged / "usr/bin/locald-shim"
    assert shim.is_symlink() and not os.readlink(shim).startswith("/")  # relative: survives staging
    cp = subprocess.run([str(shim), "admin", "cleanup", "relative"], capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin"})
    assert cp.returncode == 4 and "absolute" in cp.stderr
    for launcher, name in ((mech, "locald-admin-mechanism"), (shim, "locald-shim")):
        cp = subprocess.run([str(launcher), "--version"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert cp.returncode == 0 and cp.stdout == f"{name} {__version__}\n", cp


def test_launchers_ignore_pythonpath(staged, tmp_path):
    """The mechanism runs as root: PYTHONPATH must not choose its code."""
    evil = tmp_path / "locald_admin"
    evil.mkdir()
    (evil / "__init__.py").write_text("raise SystemExit('hijacked')\n")
    mech = staged / "usr/lib/locald-admin/locald-admin-mechanism"
    cp = subprocess.run([str(mech), "--help"], capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert cp.returncode == 0 and "hijacked" not in cp.stderr


def test_uninstall_removes_exactly_what_install_laid(tmp_path):
    dest = tmp_path / "stage"
    foreign = dest / _rel(_dirs()["DBUSCONFDIR"]) / "other.conf"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("<busconfig/>")
    before = _files(dest)
    cp = _make("install", dest)
    if cp.returncode != 0 and "No module named pip" in cp.stderr:
        pytest.skip("Debian's python3-pip is not installed")
    assert cp.returncode == 0, cp.stderr
    assert len(_files(dest)) > len(before)
    cp = _make("uninstall", dest)
    assert cp.returncode == 0, cp.stderr
    assert _files(dest) == before
    assert foreign.read_text() == "<busconfig/>"


def test_install_under_umask_000_leaves_nothing_writable_by_others(tmp_path):
    """root's umask is not the layout's: under `umask 000` no file or
    directory make install creates is group- or world-writable (the compiled
    walk and the launchers are code root runs), down to the parents of
    DESTDIR that install -d makes.  Only the test's own directory is left
    out; symlinks have no mode of their own."""
    dest = tmp_path / "made" / "by" / "install"
    cp = subprocess.run(["sh", "-c", 'umask 000 && exec make -C "$1" install DESTDIR="$2"', "sh", str(ROOT), str(dest)],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    assert list(dest.glob("usr/lib/locald-admin/site/locald_admin/fs/_cwalk*.so")), "the compiled walk is built"
    loose = []
    for top, dirs, files in os.walk(tmp_path):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                loose.append(f"{stat.filemode(st.st_mode)} {os.path.relpath(path, tmp_path)}")
    assert not loose, loose


def test_the_launchers_write_no_bytecode_even_as_root_under_umask_000(tmp_path):
    """Run as root under umask 000, a Python that writes bytecode makes
    __pycache__ directories 0777 beside the code root loads: the launchers
    run with -B (the mechanism's second start under malloc too), and the
    bytecode make install compiled is what they read."""
    dest = tmp_path / "stage"
    cp = _make("install", dest)
    if cp.returncode != 0 and "No module named pip" in cp.stderr:
        pytest.skip("Debian's python3-pip is not installed")
    assert cp.returncode == 0, cp.stderr
    site = dest / "usr/lib/locald-admin/site"
    assert list(site.glob("locald_admin/__pycache__/*.pyc")), "make install compiles the bytecode"
    for p in site.rglob("__pycache__"):
        shutil.rmtree(p)
    lib = dest / "usr/lib/locald-admin"
    for argv in ([str(lib / "locald-shim"), "--version"], [str(lib / "locald-admin-mechanism"), "--help"],
                 [str(lib / "locald-admin-generator"), "--help"]):
        cp = subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh", *argv], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, timeout=60)
        assert cp.returncode == 0, (argv, cp.stderr)
    assert not list(site.rglob("__pycache__"))


def test_installed_modes_are_the_layouts_not_the_umasks(tmp_path):
    """The same tree, mode for mode, under umask 000 and 077 (under 077 the
    compiled walk came out 0700)."""
    modes = {}
    for umask in ("000", "077"):
        dest = tmp_path / umask
        cp = subprocess.run(["sh", "-c", f'umask {umask} && exec make -C "$1" install DESTDIR="$2"', "sh", str(ROOT),
                             str(dest)], capture_output=True, text=True, timeout=300)
        assert cp.returncode == 0, cp.stderr
        modes[umask] = {str(p.relative_to(dest)): oct(p.lstat().st_mode) for p in dest.rglob("*")}
    assert modes["000"] == modes["077"]


def test_an_admins_configuration_is_kept(tmp_path):
    dest = tmp_path / "stage"
    conf = dest / "etc/locald/admin.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[scope]\nallow = /srv\n")
    cp = _make("install", dest)
    if cp.returncode != 0 and "No module named pip" in cp.stderr:
        pytest.skip("Debian's python3-pip is not installed")
    assert cp.returncode == 0, cp.stderr
    assert conf.read_text() == "[scope]\nallow = /srv\n"
    assert _make("uninstall", dest).returncode == 0
    assert conf.read_text() == "[scope]\nallow = /srv\n"


def test_other_prefix_says_what_to_link(tmp_path):
    cp = _make("install", tmp_path / "stage", prefix="/opt/locald")
    if cp.returncode != 0 and "No module named pip" in cp.stderr:
        pytest.skip("Debian's python3-pip is not installed")
    assert cp.returncode == 0, cp.stderr
    assert "/etc/dbus-1/system.d/" in cp.stdout and "/usr/share/polkit-1/actions/" in cp.stdout
    act = (tmp_path / "stage/opt/locald/share/dbus-1/system-services/org.locald.Admin1.service").read_text()
    assert "Exec=/opt/locald/lib/locald-admin/locald-admin-mechanism --idle-timeout 30" in act


TYPED_USE = '''
import asyncio
from locald_admin.client import AdminClient, force_remove_dir_all, force_remove_dir_all_async, request_cleanup


def progress(removed: int, elapsed: float) -> None:
    print(removed, elapsed)


async def main() -> None:
    client: AdminClient = await AdminClient().connect()
    await client.cleanup("/home/me/p/.locald/x", on_progress=progress)
    await request_cleanup("/home/me/p/.locald/y", timeout=10)
    await force_remove_dir_all_async("/home/me/p/.locald/z", bus=client)
    client.close()


force_remove_dir_all("/home/me/p/.locald/w", interactive=True)
asyncio.run(main())
'''


def test_the_installed_client_api_is_typed(staged, tmp_path):
    """PEP 561: the installed package says it is typed (py.typed), and a
    type checker sees the public client API's hints: correct use passes
    --strict, a wrong argument type is an error."""
    pytest.importorskip("mypy")
    site = staged / "usr/lib/locald-admin/site"
    assert (site / "locald_admin" / "py.typed").is_file()
    (tmp_path / "good.py").write_text(TYPED_USE)
    (tmp_path / "bad.py").write_text('from locald_admin.client import force_remove_dir_all\n'
                                     'force_remove_dir_all("/x/.locald/w", interactive="yes")\n')

    def mypy(name, *flags):
        return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", *flags,
                               name], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, MYPYPATH=str(site)))
    good = mypy("good.py", "--strict")
    assert good.returncode == 0, good.stdout
    bad = mypy("bad.py")
    assert bad.returncode == 1 and 'incompatible type "str"; expected "bool"' in bad.stdout, bad.stdout


def _tree(top):
    return {str(p.relative_to(top)): p.stat().st_mtime_ns for p in Path(top).rglob("*")}


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare -n (a network namespace) needs root")
def test_install_works_without_a_network_and_writes_nothing_into_the_source_tree(tmp_path):
    """`make install` (the default: the compiled walk and scan)
    in a network namespace with no network at all: no package index is
    asked; the source tree is left exactly as it was; no build metadata
    (direct_url.json) is installed, and bytecode only beside the sources,
    compiled for their installed place (the launchers write none: -B)."""
    src, dest = tmp_path / "src", tmp_path / "stage"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".hypothesis", "*.so", "tests",
                                                             "harness", "bench-results*"))
    before = _tree(src)
    cp = subprocess.run(["unshare", "-n", "make", "-C", str(src), "install", f"DESTDIR={dest}"],
                        capture_output=True, text=True, timeout=300, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert cp.returncode == 0, cp.stderr
    assert _tree(src) == before
    site = dest / "usr/lib/locald-admin/site"
    installed = [str(p.relative_to(site)) for p in site.rglob("*")]
    assert not [f for f in installed if "dist-info" in f or "direct_url" in f], installed
    pyc = [f for f in installed if f.endswith(".pyc")]
    assert pyc and all(os.path.basename(os.path.dirname(f)) == "__pycache__" for f in pyc), pyc
    shim = [f for f in pyc if f.startswith("locald_admin/client/__pycache__/shim.")]
    code = marshal.loads((site / shim[0]).read_bytes()[16:])
    assert code.co_filename == "/usr/lib/locald-admin/site/locald_admin/client/shim.py"
    assert list(site.glob("locald_admin/fs/_cwalk*.so")), "the compiled walk is built"
    assert list(site.glob("locald_admin/fs/_cprocscan*.so")), "the compiled scan of /proc is built"
    assert list(site.glob("locald_admin/_cwire*.so")), "the compiled reader of D-Bus values is built"
    assert sorted(p.name for p in site.iterdir()) == ["locald_admin"], "the package alone: no dependency"
