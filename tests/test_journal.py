"""Audit records and log messages in the journal (mechanism/audit.py,
mechanism/journal.py): when stderr is the journal stream (JOURNAL_STREAM),
every request is one entry with structured fields, the fixed MESSAGE_ID and
the priority of the error table, and nothing goes to stderr; a path holding
newlines stays one field of one entry; an internal error is one entry at
priority err with its traceback, which the caller never sees.

Here the journal is a datagram socket bound by the test (the mechanism is
told with --journal-socket and a JOURNAL_STREAM naming its log file); the
real journald is in tests/test_systemd.py."""

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from locald_admin import interface as i
from locald_admin.mechanism import audit, journal
from harness import calls
from harness.mechanism import Mechanism
from harness.trees import rm_rf, world_tmpdir

FORGED = "x\nMESSAGE_ID=" + audit.MESSAGE_ID + "\nLOCALD_RESULT=ok\n\nMESSAGE=audit sender=:1.1 uid=0 result=ok"


# -- the protocol, without a mechanism ------------------------------------------

def test_a_value_with_newlines_is_one_binary_field():
    fields = {"MESSAGE": "one line", "LOCALD_PATH": FORGED, "LOCALD_UID": 1000}
    data = journal.encode(fields)
    assert journal.decode(data) == {k: str(v) for k, v in fields.items()}
    # The forged lines are inside the length-prefixed value, not fields.
    assert data.count(b"\nMESSAGE_ID=") == 1 and data.startswith(b"MESSAGE=one line\n")
    assert b"LOCALD_PATH\n" in data


@pytest.mark.parametrize("name", ["lower", "_SOURCE_UID", "A-B", "", "X" * 65, "MESSAGE ID", "9LIVES", "A=B", "\u00c9T\u00c9"])
def test_names_the_journal_would_refuse_are_refused(name):
    with pytest.raises(ValueError):
        journal.encode({name: "v"})


def test_stderr_is_the_journal_only_when_journal_stream_names_it():
    with tempfile.TemporaryFile() as f, tempfile.TemporaryFile() as other:
        st, so = os.fstat(f.fileno()), os.fstat(other.fileno())
        fd = f.fileno()
        assert journal.stderr_is_journal(fd, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not journal.stderr_is_journal(fd, {"JOURNAL_STREAM": f"{so.st_dev}:{so.st_ino}"})
        assert not journal.stderr_is_journal(fd, {"JOURNAL_STREAM": "garbage"})
        assert not journal.stderr_is_journal(fd, {})


def test_priorities_come_from_the_error_table():
    """As decided for the journal: info for success, notice for refusals
    (and for a caller that left), warning for InUse, MountPoint and Busy,
    err for Failed."""
    expected = {i.FAILED: 3, i.NOT_AUTHORIZED: 5, i.INTERACTIVE_AUTH_REQUIRED: 5, i.INVALID_PATH: 5,
                i.OUTSIDE_SCOPE: 5, i.MOUNT_POINT: 4, i.IN_USE: 4, i.BUSY: 4, i.INVALID_ARGS: 5}
    assert set(expected) == set(i.ERRORS)
    for spec, prio in expected.items():
        assert audit.priority(spec.dbus_name) == prio, spec.dbus_name
    assert audit.priority("ok") == 6 and audit.priority("cancelled") == 5
    assert audit.priority("something.Unknown") == 3


def test_a_record_is_one_entry_whatever_its_path_holds():
    entry = journal.decode(journal.encode(audit.journal_fields(
        sender=":1.7", uid=1000, pid=42, path=FORGED, result=i.ERROR_OUTSIDE_SCOPE, removed=0, duration_ms=1.5)))
    assert entry["MESSAGE_ID"] == audit.MESSAGE_ID and entry["PRIORITY"] == "5"
    assert entry["LOCALD_PATH"] == FORGED and entry["LOCALD_RESULT"] == i.ERROR_OUTSIDE_SCOPE
    assert entry["LOCALD_SENDER"] == ":1.7" and entry["LOCALD_UID"] == "1000" and entry["LOCALD_PID"] == "42"
    assert entry["LOCALD_REMOVED"] == "0" and entry["LOCALD_DURATION_MS"] == "1.5"
    assert "\n" not in entry["MESSAGE"] and entry["MESSAGE"].startswith("audit sender=:1.7 ")


def test_a_record_names_the_callers_pid_and_why_it_was_refused():
    """OBJECT_PID, so that journald attaches the caller's uid, unit and
    command line itself, and the refusal's reason as its own field; no
    OBJECT_PID when the bus daemon did not know the pid."""
    entry = journal.decode(journal.encode(audit.journal_fields(
        sender=":1.7", uid=1000, pid=42, path="/p/.locald/x", result=i.ERROR_OUTSIDE_SCOPE, removed=0,
        duration_ms=1.5, reason="/p/.locald/x: owned by uid 7")))
    assert entry["OBJECT_PID"] == "42" and entry["LOCALD_REASON"] == "/p/.locald/x: owned by uid 7"
    assert 'reason="/p/.locald/x: owned by uid 7"' in entry["MESSAGE"]
    unknown = audit.journal_fields(sender=":1.7", uid=1000, pid="-", path="/p", result="ok", removed=0,
                                   duration_ms=1.0)
    assert "OBJECT_PID" not in unknown and "LOCALD_REASON" not in unknown


# -- the real mechanism, its stderr counted as the journal --------------------------

class FakeJournal:
    """A datagram socket where the mechanism sends its entries."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ljr-", dir="/tmp"))  # short: sun_path is 108 bytes
        self.path = self.dir / "socket"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.dir, 0o755)
        os.chmod(self.path, 0o666)
        self.entries = []

    def read(self, until, timeout=20.0):
        """Entries received until ``until(entries)`` holds (or the timeout)."""
        deadline = time.monotonic() + timeout
        while not until(self.entries) and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.entries.append(journal.decode(self.sock.recv(1 << 20)))
            except socket.timeout:
                break
        return self.entries

    def audits(self):
        return [e for e in self.entries if e.get("MESSAGE_ID") == audit.MESSAGE_ID]

    def close(self):
        self.sock.close()
        rm_rf(self.dir)


@pytest.fixture
def fake_journal():
    j = FakeJournal()
    yield j
    j.close()


@pytest.fixture
def project(clients):
    top = world_tmpdir("locald-admin-journal-")
    anchor = top / "proj" / ".locald"
    (anchor / "run").mkdir(parents=True)
    (anchor / "run" / "data").write_text("x")
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(top / "proj")], check=True)
    yield anchor
    rm_rf(top)


def test_each_request_is_one_structured_entry_and_stderr_gets_none(bus, polkit, fake_journal, project, clients):
    polkit.allow(True)
    try:
        with Mechanism(bus, journal=fake_journal.path) as mech:
            ok = clients.api("request", str(project / "run"), bus.address)
            forged = clients.api("request", str(project / FORGED), bus.address)
            outside = clients.api("request", "/etc/passwd", bus.address)
            assert ok["ok"] and forged["ok"] and outside["type"] == "OutsideScopeError", (ok, forged, outside)
            fake_journal.read(lambda _: len(fake_journal.audits()) >= 3)
            log = mech.log()
    finally:
        polkit.allow(False)
    records = fake_journal.audits()
    assert [r["LOCALD_PATH"] for r in records] == [str(project / "run"), str(project / FORGED), "/etc/passwd"]
    assert [r["LOCALD_RESULT"] for r in records] == ["ok", "ok", i.ERROR_OUTSIDE_SCOPE]
    assert [r["PRIORITY"] for r in records] == ["6", "6", "5"]
    for r, reply in zip(records, (ok, forged, outside)):
        assert r["LOCALD_SENDER"] == reply["sender"] and r["LOCALD_UID"] == str(clients.uid)
        assert int(r["LOCALD_PID"]) > 0 and float(r["LOCALD_DURATION_MS"]) >= 0
        assert r["SYSLOG_IDENTIFIER"] == "locald-admin-mechanism" and "\n" not in r["MESSAGE"]
    assert records[0]["LOCALD_REMOVED"] == "2"
    # Log messages are entries too, at their own priority; stderr got nothing.
    assert any(e.get("PRIORITY") == "6" and e["MESSAGE"].startswith("serving ") for e in fake_journal.entries)
    assert "audit " not in log and "serving " not in log, log


def test_an_internal_error_is_one_err_entry_with_its_traceback(bus, polkit, fake_journal, project, clients):
    (project / "boom-walk-runtime").mkdir()
    polkit.allow(True)
    try:
        with Mechanism(bus, faults=True, journal=fake_journal.path) as mech:
            r = clients.api("request", str(project / "boom-walk-runtime"), bus.address)
            fake_journal.read(lambda _: len(fake_journal.audits()) >= 1)
            log = mech.log()
    finally:
        polkit.allow(False)
    assert r["type"] == "CleanupFailedError" and "Traceback" not in r["message"], r
    errors = [e for e in fake_journal.entries if e.get("PRIORITY") == "3" and "MESSAGE_ID" not in e]
    assert len(errors) == 1 and "Traceback" in errors[0]["MESSAGE"], fake_journal.entries
    assert "RuntimeError: injected failure" in errors[0]["MESSAGE"]
    [record] = fake_journal.audits()
    assert record["LOCALD_RESULT"] == i.ERROR_FAILED and record["PRIORITY"] == "3"
    assert "Traceback" not in log


def test_every_field_a_record_has_is_in_the_table(bus, polkit, fake_journal, project, clients):
    """audit.FIELDS, from which the journal catalog entry and the man page
    are made, names every field these records have, and they have every
    field it names: a field added to the record without its row (or a row
    no record writes) fails here.  The requests: a dry run (dry_run,
    would_remove), a path over the limit (path_bytes) and a call too big to
    read (message_bytes) sent raw, a refusal (reason), and the anchor in a
    directory others may write, emptied and kept (anchor_kept)."""
    os.chown(project.parent, 0, 0)
    os.chmod(project.parent, 0o777)  # anyone may rename entries here (not sticky): threat model R8
    polkit.allow(True)
    try:
        with Mechanism(bus, journal=fake_journal.path):
            dry = clients.api("options", str(project / "run"), bus.address, dry_run=True)
            assert dry["ok"] and dry["result"]["would-remove"] == 2, dry
            long = calls.cleanup(bus, "/" + "x" * i.MAX_PATH_BYTES)
            big = calls.cleanup(bus, "/" + "x" * 8_000_000)
            assert long.error == big.error == i.ERROR_INVALID_PATH, (long, big)
            outside = clients.api("request", "/etc/passwd", bus.address)
            kept = clients.api("request", str(project), bus.address)
            assert outside["type"] == "OutsideScopeError" and kept["ok"], (outside, kept)
            fake_journal.read(lambda _: len(fake_journal.audits()) >= 5)
    finally:
        polkit.allow(False)
    records = fake_journal.audits()
    assert len(records) == 5, records
    assert records[-1]["LOCALD_ANCHOR_KEPT"] == "yes" and project.is_dir(), records[-1]
    written = {k for r in records for k in r if k.startswith(audit.FIELD_PREFIX)}
    assert written == {audit.FIELD_PREFIX + name.upper() for name in audit.FIELDS}
    # The caller's pid as journald takes it, on every record whose pid is known.
    assert all(r["OBJECT_PID"] == r["LOCALD_PID"] for r in records if r["LOCALD_PID"] != "-")
