"""Scans of /proc shared by the requests that wait for one.

The in-use check needs a census of the host's mount namespaces
(``fs/procscan.py``), which costs microseconds per process on the host.
Concurrent requests share it under one rule: **a scan that starts after a
request arrived serves it**, so N requests waiting together cost one scan,
and no request ever gets a census that began before it arrived (no result
is cached across requests: a container started just before a request is
seen by it).

``SharedScans.ticket()`` is taken when a request arrives; ``ticket.census()``
(in the request's worker thread, when its in-use check needs it) returns
the census of a scan that started after that, waiting for one or running it.
A scan starts only when a check needs one, never at arrival: an
unauthorized caller's flood of calls must not keep a core busy reading
/proc (with a scan per arrival, it would).  At most one scan runs at a time;
the requests that arrive during it are served by the next.
"""

import threading

from locald_admin.fs import procscan


class Ticket:
    """A request's claim on the first scan that starts after it arrived."""

    __slots__ = ("_scans", "_after")

    def __init__(self, scans, after):
        self._scans = scans
        self._after = after  # scans started before the request arrived

    def census(self):
        return self._scans.census_after(self._after)


class SharedScans:
    def __init__(self, scan=procscan.scan):
        self._scan = scan
        self._cond = threading.Condition()
        self._started = 0  # scans started so far (the next one is number _started + 1)
        self._running = False
        self._done = 0  # the number of the last scan that finished
        # Its census (or the exception it raised): kept until the next scan
        # replaces it, for the requests that arrived before it started (a
        # later one never takes it: its ticket is numbered past it).
        self._result = None
        self.scans = 0  # scans run, for the tests and the benchmark

    def ticket(self):
        with self._cond:
            return Ticket(self, self._started)

    def census_after(self, after):
        """The census of a scan numbered above ``after``: the one running
        if it started after, else the next, run by this thread if no other
        runs it."""
        with self._cond:
            while self._done <= after and self._running:
                self._cond.wait()
            if self._done > after:
                return self._take()
            self._running = True
            self._started += 1
            number = self._started
        try:
            result = self._scan()
        except BaseException as e:  # every waiter gets it, not only this one
            result = e
        with self._cond:
            self.scans += 1
            self._running = False
            self._done, self._result = number, result
            self._cond.notify_all()
            return self._take()

    def _take(self):
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result
