"""Scans of /proc shared by the requests that wait for one.

The in-use check needs a census of the host's mount namespaces
(``fs/procscan.py``), which costs microseconds per process on the host.
Concurrent requests share it under one rule: **a scan that starts after a
request arrived serves it**, so N requests waiting together cost one scan,
and no request ever gets a census that began before it arrived (no result
is cached across requests: a container started just before a request is
seen by it).

``SharedScans.ticket(uid)`` is taken when a request arrives;
``ticket.census()`` (in the request's worker thread, when its in-use check
needs it) returns the census of a scan that started after that, waiting for
one or running it; ``ticket.close()`` when the request is over.  A scan looks
at every process but those of login users who are none of the callers
holding tickets when it starts (their namespaces count for nobody else):
another user's 20,000 sleeping processes cost a ``stat`` each.
A scan starts when a check needs one, or ahead (``ahead``): the service
starts one while polkit is being asked, so that the census (most of a small
request's own time) is ready when the answer is, for a request alone (no
other ticket waiting: else the scan that one starts serves both) of a uid
that ``Ahead.wanted`` names: polkit said yes to its last request, and that one
needed a census (a missing target does not: scanning for it would be
wasted).  Never at arrival, nor for a uid polkit did not say yes to: an
unauthorized caller's flood of calls must not keep a core busy reading /proc
(with a scan per arrival, it would).  At most one scan runs at a time; the
requests that arrive during it are served by the next.
"""

import collections
import threading

from locald_admin.fs import procscan


def scan_for(callers):
    """The census for ``callers``: every process but those of login users
    who are none of them (``procscan.skip_owners``)."""
    login_users = procscan.LoginUsers()  # one reading of login.defs and the password database for both
    return procscan.scan(login_users=login_users, skip=procscan.skip_owners(callers, login_users))


class Ticket:
    """A request's claim on the first scan that starts after it arrived;
    the census it got is kept for the request (its retries), for no other."""

    __slots__ = ("_scans", "_after", "uid", "_census", "_open")

    def __init__(self, scans, after, uid):
        self._scans = scans
        self._after = after  # scans started before the request arrived
        self.uid = uid
        self._census = None
        self._open = True

    def census(self):
        if self._census is None:
            self._census = self._scans.census_after(self._after, self)
        return self._census

    @property
    def used(self):
        """Whether the request got a census (its in-use check ran)."""
        return self._census is not None

    def close(self):
        """The request is over: a later scan need not look for its caller."""
        self._scans.release(self)


class SharedScans:
    def __init__(self, scan=scan_for):
        self._scan = scan  # scan(callers): the census for those callers
        self._cond = threading.Condition()
        self._started = 0  # scans started so far (the next one is number _started + 1)
        self._running = False
        self._done = 0  # the number of the last scan that finished
        # Its census (or the exception it raised): kept until the next scan
        # replaces it, for the requests that arrived before it started (a
        # later one never takes it: its ticket is numbered past it).
        self._result = None
        # The callers of the tickets not yet served or closed: every scan
        # looks for each of them (a ticket taken before a scan starts is
        # among them when it starts).
        self._callers = collections.Counter()
        self._waiting = 0  # tickets neither served nor closed: the sum of _callers
        self._ahead = False  # a scan ahead is on its way to a thread
        self.scans = 0  # scans run, for the tests and the benchmark

    def ticket(self, uid):
        with self._cond:
            self._callers[uid] += 1
            self._waiting += 1
            return Ticket(self, self._started, uid)

    def release(self, ticket):
        with self._cond:
            self._release(ticket)

    def _release(self, ticket):
        if ticket._open:
            ticket._open = False
            self._waiting -= 1
            self._callers[ticket.uid] -= 1
            if self._callers[ticket.uid] <= 0:
                del self._callers[ticket.uid]

    def ahead(self, run):
        """Start a scan now, for the tickets taken so far, unless one is
        running or on its way, or another ticket is waiting: ``run(fn)``
        runs ``fn`` in a thread.  A ticket taken before serves itself from
        it (``census``), waiting for it if it is still running.  Returns
        whether one was started.

        Only for a request alone: with other tickets waiting, the scan one
        of them starts when it needs it starts after this one arrived too,
        and serves both.  Under load, a scan ahead at every arrival would
        run back to back, each replaced before anyone took it (measured
        with 32 clients: a quarter of the mechanism's CPU)."""
        with self._cond:
            if self._running or self._ahead or self._waiting > 1:
                return False
            self._ahead = True
            after = self._started
        run(lambda: self._scan_ahead(after))
        return True

    def _scan_ahead(self, after):
        with self._cond:
            self._ahead = False
        try:
            self.census_after(after)
        except BaseException:
            pass  # kept as the scan's result: each request it serves gets it from census()

    def census_after(self, after, ticket=None):
        """The census of a scan numbered above ``after``: the one running
        if it started after, else the next, run by this thread if no other
        runs it."""
        with self._cond:
            while self._done <= after and self._running:
                self._cond.wait()
            if self._done > after:
                return self._take(ticket)
            self._running = True
            self._started += 1
            number = self._started
            callers = frozenset(self._callers)
        try:
            result = self._scan(callers)
        except BaseException as e:  # every waiter gets it, not only this one
            result = e
        with self._cond:
            self.scans += 1
            self._running = False
            self._done, self._result = number, result
            self._cond.notify_all()
            return self._take(ticket)

    def _take(self, ticket):
        if ticket is not None:
            self._release(ticket)
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result


class Ahead:
    """Which uids get a scan started ahead, while polkit is asked: those
    whose last request polkit said yes to and that needed a census.  Only a
    guess at what the next request needs (polkit is asked every time, the
    census is still one that starts after the request arrived).  At most
    ``size`` uids, the least recent forgotten first."""

    def __init__(self, size=4096):
        self.size = size
        self._uids = collections.OrderedDict()

    def wanted(self, uid):
        return uid in self._uids

    def refused(self, uid):
        """polkit did not say yes to ``uid``."""
        self._uids.pop(uid, None)

    def served(self, uid, used):
        """polkit said yes to ``uid``'s request, which ``used`` a census or not."""
        if not used:
            self._uids.pop(uid, None)
            return
        self._uids[uid] = True
        self._uids.move_to_end(uid)
        if len(self._uids) > self.size:
            self._uids.popitem(last=False)
