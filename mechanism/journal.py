"""The systemd journal's native protocol, spoken directly (no library).

Under systemd the service's stderr is a journal stream, and systemd says so
in ``JOURNAL_STREAM`` (``<device>:<inode>`` of that stream, systemd.exec(5)).
Then each audit record and log message is sent as one datagram of fields to
the journal's socket instead, so that every field (sender, uid, path, ...)
is a field of the entry, with its own priority: ``stderr_is_journal()``
decides, ``Journal.send(fields)`` sends.  Anywhere else (a terminal, a file,
the tests' private buses) nothing changes: text on stderr.

The datagram is ``NAME=value`` lines; a value that holds a newline is sent
as ``NAME``, a newline, its length as a little-endian 64-bit number, the
bytes, and a newline, so nothing a value holds can start another field or
another entry (a path with a newline in it stays one field of one entry).

Not libsystemd's sd_journal_sendv (python3-systemd): it cannot be pointed at
another socket (the tests' journal), blocks holding the GIL while the
journal's queue is full, reports success when there is no journal and
refuses non-UTF-8 text; the datagrams are byte for byte the same
(docs/architecture.md, "Libraries we could use and do not (or do)", has the figures).
"""

import logging
import os
import re
import socket
import struct
import sys

SOCKET = "/run/systemd/journal/socket"
SEND_TIMEOUT = 1.0  # seconds a datagram may wait for room in the journal's queue
IDENTIFIER = "locald-admin-mechanism"

# journald accepts upper-case letters, digits and "_", at most 64 bytes, the
# first neither a digit nor "_" (fields starting with "_" are trusted ones it
# sets itself); it drops any other field silently (journal_field_valid()).
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def stderr_is_journal(fd=2, environ=None):
    """Whether ``fd`` is the journal stream systemd connected it to."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _bytes(value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "backslashreplace")


def encode(fields):
    """``fields`` (name -> str, int or bytes) as one datagram (see above).
    Raises ValueError for a name the journal would refuse."""
    out = bytearray()
    for name, value in fields.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a journal field name: {name!r}")
        data = _bytes(value)
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


def decode(datagram):
    """The fields of one datagram as ``encode`` makes it (for the tests, and
    as the journal reads it); raises ValueError for a malformed one."""
    fields, i, n = {}, 0, len(datagram)
    while i < n:
        nl = datagram.find(b"\n", i)
        if nl < 0:
            raise ValueError("a field without its final newline")
        line = datagram[i:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = nl + 1
        else:
            name = line
            if nl + 9 > n:
                raise ValueError("a binary field without its length")
            (size,) = struct.unpack("<Q", datagram[nl + 1:nl + 9])
            start = nl + 9
            if start + size + 1 > n or datagram[start + size:start + size + 1] != b"\n":
                raise ValueError("a binary field of the wrong length")
            value, i = datagram[start:start + size], start + size + 1
        fields[name.decode("ascii")] = value.decode("utf-8", "backslashreplace")
    return fields


class Journal:
    """A datagram socket to the journal at ``path``."""

    def __init__(self, path=SOCKET):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Blocks at most this long when the journal's queue is full, then
        # the caller writes the text to stderr instead.
        self._sock.settimeout(SEND_TIMEOUT)

    def send(self, fields):
        """Send one entry; False if the journal did not take it."""
        try:
            self._sock.sendto(encode(fields), self.path)
            return True
        except OSError:
            return False

    def close(self):
        self._sock.close()


# Python's logging levels as syslog priorities.
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority_of(levelno):
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return 7  # debug


class JournalHandler(logging.Handler):
    """Log records as journal entries: the whole message (a traceback
    included) in one entry, at the record's priority; on stderr if the
    journal does not take it."""

    def __init__(self, journal):
        super().__init__()
        self.journal = journal

    def emit(self, record):
        try:
            text = self.format(record)
            fields = {"MESSAGE": text, "PRIORITY": priority_of(record.levelno), "SYSLOG_IDENTIFIER": IDENTIFIER,
                      "CODE_FILE": record.pathname, "CODE_LINE": record.lineno, "CODE_FUNC": record.funcName}
            if not self.journal.send(fields):
                print(f"{IDENTIFIER}: {record.levelname}: {text}", file=sys.stderr, flush=True)
        except Exception:  # logging must never take the service down
            self.handleError(record)
