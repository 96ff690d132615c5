"""locald-admin-generator (mechanism/generator.py): the roots allowed in
admin.conf become the unit's ReadWritePaths= drop-in, so widening where
projects may live is one step for the administrator (edit admin.conf,
systemctl daemon-reload).  Runs anywhere; tests/test_systemd.py runs it
under a real systemd."""

from locald_admin.mechanism import config as cfgmod
from locald_admin.mechanism import generator


def test_each_allowed_root_that_is_not_denied_becomes_writable(tmp_path):
    conf = tmp_path / "admin.conf"
    conf.write_text("[scope]\nallow = /home /opt/projects /usr/local/x\ndeny = /usr/local/x /proc\n")
    assert generator.main([str(tmp_path / "normal"), "early", "late"], path=str(conf)) == 0
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


def test_without_arguments_it_says_how_to_call_it(capsys):
    assert generator.main([]) == 2
    assert "usage" in capsys.readouterr().err
