"""The README's "Installing on a real system": every command in it is one
that a test runs (or, for the apt-get lines, whose packages are what the
tested build and install need), so that following it is known to work.

A command added to the README without a test, or a test that stops running
its command, fails here; the runs themselves are in test_debian.py,
test_install.py and harness/machine.py."""

import re
import shutil
import subprocess

import pytest

from locald_admin import __version__
from harness import ROOT

BUILD_PREREQUISITES = "sudo apt-get install debhelper dh-python python3-dev gettext lintian"
BUILD = "DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b"
INSTALL_DEB = f"sudo apt-get install ../locald-admin_{__version__}_*.deb"
MAKE_PREREQUISITES = "sudo apt-get install gcc python3-dev gettext"
MAKE_INSTALL = "sudo make install"
MAKE_UNINSTALL = "sudo make uninstall"

# Each command, and the code that runs it: text that must be in that file.
RUN_BY = {
    BUILD: ("tests/test_debian.py", ['["dpkg-buildpackage", "-us", "-uc", "-b"]', '"DEB_BUILD_OPTIONS": "nocheck"']),
    INSTALL_DEB: ("harness/machine.py", ['apt-get install --yes "']),
    MAKE_INSTALL: ("tests/test_install.py", ['_make("install"']),
    MAKE_UNINSTALL: ("tests/test_install.py", ['_make("uninstall"']),
}


def _section_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Installing on a real system", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def test_every_command_of_the_section_is_known_here():
    assert _section_commands() == [BUILD_PREREQUISITES, BUILD, INSTALL_DEB, MAKE_PREREQUISITES, MAKE_INSTALL,
                                   MAKE_UNINSTALL]


@pytest.mark.parametrize("command", sorted(RUN_BY))
def test_each_command_is_run_by_its_test(command):
    path, needles = RUN_BY[command]
    source = (ROOT / path).read_text()
    for needle in needles:
        assert needle in source, f"{path} no longer runs '{command}' ({needle} is gone)"


def _build_depends():
    control = (ROOT / "debian" / "control").read_text()
    field = re.search(r"^Build-Depends:(.*?)^\S", control, re.M | re.S).group(1)
    names = {re.split(r"[\s(]", d.strip())[0] for d in field.split(",") if d.strip()}
    return {"debhelper" if n == "debhelper-compat" else n for n in names}


def _packages(line):
    return set(line.split("apt-get install", 1)[1].split())


def test_the_build_prerequisites_are_the_packages_build_depends_and_tests_need():
    """The README's list holds every Build-Depends (python3 comes with
    python3-dev) and lintian, which the package test runs; make install
    needs a compiler and Python's headers (for the compiled walk and scan)
    and msgfmt (the translations of the polkit action)."""
    listed = _packages(BUILD_PREREQUISITES)
    assert _build_depends() - {"python3"} <= listed
    assert "lintian" in listed
    assert {"gcc", "python3-dev", "gettext"} <= _packages(MAKE_PREREQUISITES)


def test_the_listed_packages_are_installed_where_the_tests_ran():
    """On the machine that runs the package and install tests (CI), the
    README's packages are exactly the ones those tests had."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system")
    wanted = sorted(_packages(BUILD_PREREQUISITES) | _packages(MAKE_PREREQUISITES))
    cp = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *wanted], capture_output=True, text=True)
    installed = {line.split()[0] for line in cp.stdout.splitlines() if line.endswith("install ok installed")}
    missing = set(wanted) - installed
    if missing and shutil.which("dpkg-buildpackage") is None:
        pytest.skip(f"the build tools are not installed here (scripts/bootstrap installs them): {sorted(missing)}")
    assert not missing, f"listed in the README but not what the tests ran with: {sorted(missing)}"
