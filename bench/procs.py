"""Child processes of the benchmark: the reaper that kills whatever still
runs at the end, line reading with timeouts, stopping and closing pipes."""

import contextlib
import json
import os
import select
import time

from harness.waiting import terminate


class Reaper:
    """Every child process the benchmark starts; whatever still runs at the
    end is killed by its own pid."""

    procs = []

    @classmethod
    def add(cls, p):
        cls.procs.append(p)
        return p

    @classmethod
    def kill_all(cls):
        for p in cls.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
                with contextlib.suppress(Exception):
                    p.wait(10)


class Lines:
    """Line reader on a child's stdout with timeouts (never blocks forever)."""

    def __init__(self, proc):
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line from pid {self.proc.pid} within {timeout:g} s")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 1 << 16)
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True
        if b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            return line.decode()
        line, self.buf = self.buf, b""
        if not line:
            raise EOFError(f"pid {self.proc.pid} exited (rc {self.proc.poll()}) without output")
        return line.decode()

    def json(self, timeout):
        return json.loads(self.readline(timeout))


def stop_proc(p, timeout=10):
    if p is None:
        return
    terminate(p, timeout)
    close_pipes(p)


def close_pipes(p):
    for f in (p.stdin, p.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
