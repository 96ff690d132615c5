"""One audit record per request: what was asked, by whom, and how it ended.

``Recorder.record(sender=..., uid=..., pid=..., path=..., result=...,
removed=..., duration_ms=..., **notes)`` writes it once, either

* as one journal entry (``journal.py``; when stderr is the journal): every
  field its own journal field (``LOCALD_SENDER``, ``LOCALD_UID``,
  ``LOCALD_PATH``, ``LOCALD_RESULT``, ...), the fixed ``MESSAGE_ID`` below
  (``journalctl MESSAGE_ID=...`` lists exactly the audit records), the
  priority the error table gives the result, and the text line as
  ``MESSAGE``; or
* as that text line on stderr: ``audit key=value ...``, in which every value
  that is not plain printable text is quoted and escaped (``_quote``), so
  that one request is always one line, which no path can break or forge.
"""

import re
import sys

from locald_admin import interface as i
from . import journal

# The audit record's journal MESSAGE_ID (made once, for this record only).
# data/catalog/locald-admin.catalog explains it to journalctl -x.
MESSAGE_ID = "13a44aa9707e4642986da99ab5b39cc2"
FIELD_PREFIX = "LOCALD_"
RESULT_OK = "ok"
RESULT_CANCELLED = "cancelled"

# Every field a record may have, with what it says, in the order the docs
# list them: the one list that the journal catalog entry and the man page are
# made from (scripts/generate), and that tests/test_journal.py holds the
# records to (a field written without its row here fails it).
FIELDS = {
    "sender": "the caller's unique bus name",
    "uid": "the caller's uid, as the bus daemon gave it (\"-\" when the call was refused before it was asked)",
    "pid": "the caller's pid, as the bus daemon gave it (\"-\" when not known); the journal entry also "
           "has it as OBJECT_PID, to which journald attaches the caller's OBJECT_UID, OBJECT_COMM, "
           "OBJECT_CMDLINE and unit",
    "path": "the path asked for, as the caller sent it (empty when it was too long to keep)",
    "path_bytes": "instead of the path: the length in bytes of a path over the limit",
    "message_bytes": "instead of the path: the length in bytes of a call too big to be read",
    "dry_run": "\"yes\" for a dry run (CleanupWithOptions with dry-run), which removed nothing",
    "result": "\"ok\", \"cancelled\" (the caller left before the answer), or the D-Bus error it was answered",
    "removed": "the entries removed, also by a call that failed or was cancelled part of the way",
    "duration_ms": "milliseconds from the call's arrival to its answer",
    "anchor_kept": "\"yes\" when the .locald directory was emptied and kept because others may write the "
                   "directory that holds it",
    "would_remove": "a dry run's count: the entries a real call would remove",
    "reason": "the error's message, for a call that ended in one",
}


_SPECIAL = re.compile(r'[ "=\\]')  # what ends a value or starts a quoted one


def _quote(text):
    """``text`` as a double-quoted string in which every character that is
    not printable (control characters, U+0085, U+2028, U+2029, lone
    surrogates, ...) is escaped JSON-style, so that nothing in it can end
    the line or be read as another record; ``json.loads`` gives it back."""
    out = ['"']
    for c in text:
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            code = ord(c)
            if code > 0xFFFF:  # as a surrogate pair, as JSON spells it
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def audit_line(**fields):
    """One request as one line of ``key=value`` fields; a value that is
    empty or holds anything but plain printable characters is quoted
    (``_quote``)."""
    parts = []
    for k, v in fields.items():
        t = type(v)
        if t is int or t is float:
            parts.append(f"{k}={v}")
            continue
        s = v if t is str else str(v)
        if not s or _SPECIAL.search(s) or not s.isprintable():
            s = _quote(s)
        parts.append(f"{k}={s}")
    return "audit " + " ".join(parts)


def priority(result):
    """The journal priority of a request that ended with ``result``: the
    error table's for an error, info for success, notice when the caller
    left; err for anything else (an unknown result is a bug)."""
    if result == RESULT_OK:
        return i.PRIORITY_OK
    if result == RESULT_CANCELLED:
        return i.PRIORITY_CANCELLED
    spec = i.ERROR_BY_NAME.get(result)
    return spec.priority if spec is not None else i.PRIORITY_ERR


def journal_fields(**fields):
    """The journal entry of one record."""
    entry = {"MESSAGE": audit_line(**fields), "MESSAGE_ID": MESSAGE_ID,
             "PRIORITY": priority(fields.get("result")), "SYSLOG_IDENTIFIER": journal.IDENTIFIER}
    entry.update((FIELD_PREFIX + k.upper(), v) for k, v in fields.items())
    # The caller's pid, as systemd's own services give it: journald (we run
    # as root) then attaches the caller's OBJECT_UID, unit and command line
    # itself.  Only a real pid: the bus daemon may not know it ("-").
    pid = fields.get("pid")
    if type(pid) is int and pid > 0:
        entry["OBJECT_PID"] = pid
    return entry


class Recorder:
    """Where the records go: ``journal`` (a journal.Journal) or, when it is
    None or does not take one, stderr."""

    def __init__(self, journal=None):
        self.journal = journal

    def record(self, **fields):
        if self.journal is not None and self.journal.send(journal_fields(**fields)):
            return
        sys.stderr.write(audit_line(**fields) + "\n")
        sys.stderr.flush()
