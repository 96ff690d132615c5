"""locald-admin-generator (mechanism/generator.py): the roots allowed in
admin.conf become the unit's ReadWritePaths= drop-in, so widening where
projects may live is one step for the administrator (edit admin.conf,
systemctl daemon-reload).  Runs anywhere; tests/test_systemd.py runs it
under a real systemd."""

import os
import shutil
import subprocess

import pytest

from locald_admin.mechanism import config as cfgmod
from locald_admin.mechanism import generator
from locald_admin.mechanism import scope


def test_each_allowed_root_that_is_not_denied_becomes_writable(tmp_path):
    conf = tmp_path / "admin.conf"
    conf.write_text("[scope]\nallow = /home /opt/projects /usr/local/x\ndeny = /usr/local/x /proc\n")
    assert generator.main([str(tmp_path / "normal"), str(tmp_path / "early"), str(tmp_path / "late")], path=str(conf)) == 0
    text = (tmp_path / "normal" / "locald-admin.service.d" / "50-allowed-roots.conf").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == ["[Service]", "ReadWritePaths=-/home", "ReadWritePaths=-/opt/projects"]


def test_the_defaults_make_the_units_own_list(tmp_path):
    assert generator.main([str(tmp_path)], path=str(tmp_path / "missing.conf")) == 0
    text = (tmp_path / "locald-admin.service.d" / "50-allowed-roots.conf").read_text()
    assert [ln.split("-", 1)[1] for ln in text.splitlines() if ln.startswith("ReadWritePaths=")] == \
        list(cfgmod.DEFAULT_ALLOW)


def test_a_malformed_configuration_writes_nothing_and_never_fails_the_boot(tmp_path, capsys):
    conf = tmp_path / "admin.conf"
    conf.write_text("[scope\n")
    assert generator.main([str(tmp_path / "normal")], path=str(conf)) == 0
    assert not (tmp_path / "normal").exists()
    assert "no drop-in written" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["--version"], ["relative/dir"], ["/a", "/b"], ["/a", "/b", "/c", "/d"]])
def test_a_wrong_call_says_how_to_call_it_and_writes_nothing(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert generator.main(argv) == 2
    assert "usage" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_help_is_usage_on_stdout(capsys):
    assert generator.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: locald-admin-generator")


def _read_back(text):
    """The paths a drop-in's ReadWritePaths= lines name, read as systemd 252
    reads that setting (systemd.syntax(7) "Quoting", systemd.unit(5)
    "Specifiers"): words split at unquoted spaces and tabs; a word in double
    or single quotes keeps them, the quotes removed; a backslash takes the
    next character as it is; then %% is %, and any other % a specifier."""
    paths = []
    for line in text.splitlines():
        if not line.startswith("ReadWritePaths="):
            continue
        value, i = line.split("=", 1)[1], 0
        while i < len(value):
            if value[i] in " \t":
                i += 1
                continue
            word, quote = "", None
            if value[i] in "\"'":
                quote, i = value[i], i + 1
            while True:
                assert i < len(value) or quote is None, f"unterminated quote: {line!r}"
                if i == len(value):
                    break
                c = value[i]
                if c == "\\":
                    # The only escapes both readings agree on: systemd 252
                    # takes \x as x here, the man page as a C escape.
                    assert value[i + 1] in "\\\"'", f"ambiguous escape: {line!r}"
                    word, i = word + value[i + 1], i + 2
                elif c == quote:
                    i += 1
                    assert i == len(value) or value[i] in " \t", f"text after a closing quote: {line!r}"
                    break
                elif quote is None and c in " \t":
                    break
                else:
                    word, i = word + c, i + 1
            parts = word.split("%")
            for p in parts[1::2]:
                assert p == "", f"a % specifier: {line!r}"
            paths.append("%".join(parts[0::2]))
    return paths


SPECIAL = ("/srv/100%", "/srv/%h", "/srv/a\\b", "/srv/with space", "/srv/tab\there", "/srv/q\"u'o", "/srv/ends\\",
           "/srv/bell\a")


def test_percent_backslash_and_whitespace_reach_systemd_as_written():
    """systemd expands % specifiers and takes backslashes, quotes and
    whitespace as syntax in ReadWritePaths=: each path is escaped so that
    it is read back as exactly itself, one word."""
    text = generator.dropin(cfgmod.Config(allow=SPECIAL, deny=()))
    assert _read_back(text) == ["-" + p for p in SPECIAL]
    assert "ReadWritePaths=-/srv/100%%\n" in text and "ReadWritePaths=-/srv/a\\\\b\n" in text


def test_percent_and_backslash_from_admin_conf(tmp_path):
    conf = tmp_path / "admin.conf"
    conf.write_text("[scope]\nallow = /srv/100% /srv/a\\b\n")
    assert generator.main([str(tmp_path / "normal")], path=str(conf)) == 0
    text = (tmp_path / "normal" / "locald-admin.service.d" / "50-allowed-roots.conf").read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("ReadWritePaths=")] == \
        ["ReadWritePaths=-/srv/100%%", "ReadWritePaths=-/srv/a\\\\b"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_reads_the_escaped_paths_back(tmp_path):
    """systemd itself parses the drop-in: `systemd-analyze verify` at debug
    level dumps the unit it loaded, ReadWritePaths= included."""
    unit = tmp_path / "locald-generator-escape-test.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / (unit.name + ".d")).mkdir()
    (tmp_path / (unit.name + ".d") / generator.DROPIN).write_text(generator.dropin(cfgmod.Config(allow=SPECIAL,
                                                                                                deny=())))
    cp = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, SYSTEMD_LOG_LEVEL="debug", SYSTEMD_LOG_COLOR="0"))
    out = (cp.stdout + cp.stderr).splitlines()
    said = "\n".join(ln for ln in out if unit.name in ln or "ReadWritePaths" in ln)
    if f"\t-> Unit {unit.name}:" not in out:
        pytest.skip("this systemd-analyze does not dump the units it verifies")
    dump = out[out.index(f"\t-> Unit {unit.name}:") + 1:]
    dump = dump[:next((i for i, ln in enumerate(dump) if "-> Unit " in ln), len(dump))]
    assert [ln.strip("\t") for ln in dump if ln.startswith("\t\tReadWritePaths:")] == \
        ["ReadWritePaths: " + " ".join("-" + p for p in SPECIAL)], said
    assert not [ln for ln in out if "ReadWritePaths" in ln and "\t\t" not in ln], said


def _written(tmp_path, allow, deny):
    conf = tmp_path / "admin.conf"
    conf.write_text(f"[scope]\nallow = {allow}\ndeny = {deny}\n")
    out = tmp_path / "normal"
    shutil.rmtree(out, ignore_errors=True)
    assert generator.main([str(out)], path=str(conf)) == 0
    f = out / "locald-admin.service.d" / "50-allowed-roots.conf"
    return _read_back(f.read_text()) if f.exists() else None


def test_a_denied_root_is_denied_however_it_is_spelt(tmp_path):
    """The mechanism matches roots by what they name, not by their spelling
    (`allow = /etc/` named the denied /etc and was made writable)."""
    assert _written(tmp_path, "/etc/ /etc// //etc /srv/ /srv //srv//x/", "/etc") == ["-/srv", "-/srv/x"]
    assert _written(tmp_path, "/usr/local/x /srv", "/usr/local/x/ /proc") == ["-/srv"]
    # '.' and '..' make admin.conf malformed: nothing is written at all.
    assert _written(tmp_path, "/etc/. /srv", "/etc") is None
    assert _written(tmp_path, "/srv/../etc /srv", "/etc") is None


def test_a_config_built_in_code_is_normalized_and_dot_dot_is_dropped():
    warned = []
    cfg = cfgmod.Config(allow=("/etc/.", "/./etc", "/srv/../etc", "/srv/./x/", "relative"), deny=("/etc",))
    assert _read_back(generator.dropin(cfg, warn=warned.append)) == ["-/srv/x"]
    assert len(warned) == 2 and "'/srv/../etc'" in warned[0] and "'relative'" in warned[1], warned
    assert generator.dropin(cfgmod.Config(allow=("/srv/a\nb",), deny=()), warn=warned.append) is None
    assert "line break" in warned[-1]


def test_the_nearest_root_decides_as_in_the_mechanism(tmp_path):
    """Roots below and above denied ones: the generator makes writable
    exactly the allowed roots below which the mechanism itself
    (scope._config_excludes, by identity, nearest root first) accepts an
    anchor."""
    t = tmp_path
    for d in ("etc/p", "usr/local/projects/p", "home/secret/p", "home/p", "srv/p", "opt/p"):
        (t / d).mkdir(parents=True)
    (t / "link").symlink_to(t / "etc")
    allow = [f"{t}/etc/", f"{t}//etc", f"{t}/usr/local/projects", f"{t}/home", f"{t}/srv/", f"{t}/link", f"{t}/opt"]
    deny = [f"{t}/etc", f"{t}/usr", f"{t}/home/secret/", f"{t}/opt/"]
    cfg = cfgmod.parse(f"[scope]\nallow = {' '.join(allow)}\ndeny = {' '.join(deny)}\n")

    def mechanism_accepts(root):
        fd = os.open(os.path.join(root, "p"), os.O_PATH | os.O_DIRECTORY)
        try:
            return scope._config_excludes(fd, os.fstat(fd), cfg) is None
        finally:
            os.close(fd)

    expected = []
    for root in allow:
        norm = os.path.normpath(root)
        if mechanism_accepts(root) and norm not in expected:
            expected.append(norm)
    assert expected == [f"{t}/usr/local/projects", f"{t}/home", f"{t}/srv"]  # the cases, as the mechanism decides
    assert _read_back(generator.dropin(cfg)) == ["-" + r for r in expected]
    assert generator.writable_roots(cfg) == expected
