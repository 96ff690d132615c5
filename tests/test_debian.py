"""The Debian package (debian/): it builds on Debian 12 from Debian's
packages alone (``DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b``),
lintian reports no error, it holds what ``make install`` lays out and
nothing a package must not ship, its configuration is a conffile, and
installed with ``apt-get install`` of the file (the README's command) into
the booted Debian 12 of the real-systemd tier (harness/machine.py) the service activates and removes a project's
root-owned leftovers there.

Skipped with the reason where the build tools (scripts/bootstrap installs
them) or the real-systemd tier are missing."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from locald_admin import __version__
from locald_admin import interface as i
from locald_admin.mechanism import polkit
from locald_admin.mechanism import audit
from harness import ROOT
from harness import machine as machines
from harness.trees import rm_rf, world_tmpdir

BUILD_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian")


@pytest.fixture(scope="module")
def deb():
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (Debian packages dpkg-dev, debhelper, dh-python, lintian)")
    top = world_tmpdir("locald-admin-deb-")
    src = top / "locald-admin"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "bench-results*", "*.so")
    shutil.copytree(ROOT, src, ignore=ignore)
    try:
        cp = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, capture_output=True, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEB_BUILD_OPTIONS": "nocheck",
                                 "LANG": "C.UTF-8"}, timeout=900)
        assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
        [package] = top.glob(f"locald-admin_{__version__}_*.deb")
        yield package
    finally:
        rm_rf(top)


def _contents(package):
    out = subprocess.run(["dpkg-deb", "-c", str(package)], capture_output=True, text=True, check=True).stdout
    return [line.split()[5].lstrip(".") for line in out.splitlines()]


def test_lintian_reports_no_error(deb):
    cp = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0 and not [ln for ln in cp.stdout.splitlines() if ln.startswith("E:")], cp.stdout


def test_the_package_holds_the_installed_layout_and_nothing_it_must_not(deb):
    files = _contents(deb)
    for path in ("/usr/lib/locald-admin/locald-admin-mechanism", "/usr/bin/locald-shim",
                 "/usr/share/dbus-1/system.d/org.locald.Admin1.conf",
                 "/usr/share/dbus-1/system-services/org.locald.Admin1.service",
                 "/usr/share/dbus-1/interfaces/org.locald.Admin1.xml",
                 "/usr/share/polkit-1/actions/org.locald.admin1.policy",
                 "/usr/share/man/man8/locald-admin-mechanism.8.gz", "/usr/share/man/man1/locald-shim.1.gz",
                 "/usr/share/bash-completion/completions/locald-shim", "/etc/locald/admin.conf",
                 polkit.EXAMPLE_RULE,  # where polkit's refusals say the example rule is
                 "/usr/lib/systemd/catalog/locald-admin.catalog",  # systemd's dpkg trigger builds it in
                 *(f"/usr/share/locale/{po.stem}/LC_MESSAGES/locald-admin.mo" for po in (ROOT / "po").glob("*.po"))):
        assert path in files, path
    assert any(f.endswith("/locald-admin.service") and "/systemd/system/" in f for f in files)
    assert not [f for f in files if f.endswith(".pyc") or "__pycache__" in f], "bytecode is made at install"
    assert not [f for f in files if "direct_url.json" in f or "/dbus_fast/" in f], "no D-Bus library is shipped"
    control = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True,
                             check=True).stdout
    assert "polkitd" in control and "dbus" in control and "dbus-fast" not in control, control
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True).stdout
    assert conffiles.split() == ["/etc/locald/admin.conf"], conffiles


@pytest.mark.skipif(machines.unavailable() is not None, reason=f"systemd tier: {machines.unavailable()}")
def test_the_installed_package_activates_and_cleans_up_under_systemd(deb, tmp_path):
    m = machines.Machine(tmp_path, deb=deb)
    try:
        m.sh("useradd -m tester && mkdir -p /home/tester/p/.locald/svc/rootfs/run/shm"
             " && chown -R tester:tester /home/tester/p && chown root:root /home/tester/p/.locald/svc/rootfs/run"
             " /home/tester/p/.locald/svc/rootfs/run/shm && chmod 700 /home/tester/p/.locald/svc/rootfs/run",
             check=True)
        # As root (no polkit rule needed): the first call activates the unit.
        r = m.run("locald-shim", "admin", "cleanup", "--no-interactive", "/home/tester/p/.locald/svc")
        assert r.returncode == 0, r.stdout + r.stderr
        assert m.run("test", "-e", "/home/tester/p/.locald/svc").returncode == 1
        show = m.run("systemctl", "show", "-p", "ActiveState", "-p", "FragmentPath", "locald-admin.service",
                     check=True).stdout
        assert "ActiveState=active" in show and "/systemd/system/locald-admin.service" in show, show
        got = m.run("busctl", "get-property", i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, "Version", check=True).stdout
        assert got == f's "{__version__}"\n', got
        assert m.run("man", "-w", "8", "locald-admin-mechanism").returncode == 0
        version = m.run("locald-shim", "--version", check=True).stdout
        assert version == f"locald-shim {__version__}\n", version
        # The request's audit record, as the README's journalctl command lists it.
        records = []
        for _ in range(50):
            out = m.run("journalctl", f"MESSAGE_ID={audit.MESSAGE_ID}", "-o", "json", "--no-pager", check=True).stdout
            records = [json.loads(line) for line in out.splitlines() if line.strip()]
            if records:
                break
            time.sleep(0.2)
        assert [(r["LOCALD_PATH"], r["LOCALD_RESULT"], r["LOCALD_UID"]) for r in records] == [
            ("/home/tester/p/.locald/svc", "ok", "0")], records
        # Explained by the catalog entry, which systemd's dpkg trigger built
        # into the database when the package was installed (nobody ran
        # journalctl --update-catalog).
        explained = m.run("journalctl", "-x", f"MESSAGE_ID={audit.MESSAGE_ID}", "--no-pager", check=True).stdout
        assert "Subject: Cleanup of /home/tester/p/.locald/svc for uid 0 ended: ok" in explained, explained
        # Tab completion from the installed file, as bash-completion loads it.
        words = m.run("bash", "-c", "source /usr/share/bash-completion/completions/locald-shim; "
                      "COMP_WORDS=(locald-shim admin c); COMP_CWORD=2; _locald_shim; echo \"${COMPREPLY[@]}\"",
                      check=True).stdout
        assert words == "cleanup\n", words
        status = m.run("dpkg-query", "-W", "-f=${Status}", "locald-admin", check=True).stdout
        assert status == "install ok installed", status
    finally:
        m.stop()
