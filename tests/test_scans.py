"""The in-use check's census of /proc (``fs/procscan.py``) and its sharing
between requests (``mechanism/scans.py``), without a bus.

* Per process, the first bytes of its mountinfo and the file's owner; a
  namespace's whole table is read once per census, only when a check asks.
* A scan that starts after a request arrived serves it: N requests waiting
  together cost one scan; a request never gets a census that began before
  it arrived.

A fake /proc (a directory of <pid>/mountinfo and uid_map files) makes the
census deterministic; the real one is checked too.  Anywhere, any user;
owners other than the current user need root.
"""

import os
import threading
import time

import pytest

from harness import IS_ROOT
from locald_admin.fs import inuse, mounts, procscan
from locald_admin.mechanism.scans import Ahead, SharedScans

IDENTITY = b"         0          0 4294967295\n"
ROOTLESS = b"         0       4300          1\n         1     200000      65536\n"


def fake_proc(top, procs):
    """``procs``: pid -> (first mount id or raw head, owner or None, uid_map)."""
    proc = top / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a pid: passed over
    for pid, (first, owner, uid_map) in procs.items():
        d = proc / str(pid)
        d.mkdir()
        head = first if isinstance(first, bytes) else b"%d 1 0:1 / / rw - tmpfs t rw\n%d %d 0:2 / /x rw - tmpfs t rw\n" % (
            first, first + 1, first)
        (d / "mountinfo").write_bytes(head)
        (d / "uid_map").write_bytes(uid_map)
        if owner is not None:  # the owner of /proc/<pid> is the process' (that of its files too)
            os.chown(d, owner, owner)
            os.chown(d / "mountinfo", owner, owner)
    return proc


class Logins:
    """Login users by a given set (instead of the password database)."""

    def __init__(self, uids):
        self.uids = set(uids)

    def __contains__(self, uid):
        return uid in self.uids


def test_processes_of_one_namespace_are_one_entry_and_its_table_is_read_once(tmp_path):
    me = os.getuid()
    proc = fake_proc(tmp_path, {10: (100, None, IDENTITY), 11: (100, None, IDENTITY), 12: (200, None, IDENTITY),
                                13: (b"garbage\n", None, IDENTITY), 14: (b"", None, IDENTITY)})
    census = procscan.scan(str(proc), Logins({me}))
    assert census.processes == 3
    assert sorted(census.namespaces) == [100, 200]
    ns = census.namespaces[100]
    assert list(ns.owners) == [me] and ns.owners[me] in (10, 11)  # the first of its processes listed
    assert census.table_reads == 0  # the heads only
    for _ in range(3):
        table = census.table(ns, mounts.parse)
        assert [m.id for m in table] == [100, 101]
    assert census.table_reads == 1


def test_a_table_whose_pid_was_reused_is_not_taken_for_the_namespaces(tmp_path):
    proc = fake_proc(tmp_path, {10: (100, None, IDENTITY)})
    census = procscan.scan(str(proc), Logins(set()))
    (proc / "10" / "mountinfo").write_bytes(b"500 1 0:1 / / rw - tmpfs t rw\n")  # another process now
    assert census.table(census.namespaces[100], mounts.parse) == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root: files of other owners in the fake /proc")
def test_uid_map_is_read_only_for_owners_that_are_neither_root_nor_login_users(tmp_path):
    proc = fake_proc(tmp_path, {10: (100, 0, b"bad"), 11: (100, 1000, b"bad"), 12: (100, 65534, IDENTITY),
                                20: (200, 4300, ROOTLESS), 21: (200, 200033, ROOTLESS)})
    census = procscan.scan(str(proc), Logins({1000}))
    a, b = census.namespaces[100], census.namespaces[200]
    assert set(a.owners) == {0, 1000, 65534} and a.initial == {65534}
    assert set(b.owners) == {4300, 200033} and b.initial == set()
    whose = inuse.Whose(4300)
    assert whose.counts(a)  # root's (and a rootful container's 65534)
    assert whose.counts(b)  # the caller's own rootless container
    assert not inuse.Whose(4242).counts(b)  # another's rootless container
    assert whose.named_pid(a) == 10 and whose.named_pid(b) == 20


@pytest.mark.skipif(not IS_ROOT, reason="needs root: files of other owners in the fake /proc")
@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_processes_of_skipped_owners_are_counted_but_not_read(tmp_path, compiled):
    if compiled and procscan.compiled_scan() is None:
        pytest.skip("the compiled scan is not built")
    proc = fake_proc(tmp_path, {10: (100, 0, IDENTITY), 11: (200, 1001, IDENTITY), 12: (300, 1002, IDENTITY)})
    census = procscan.scan(str(proc), Logins({1001, 1002}), compiled=compiled, skip=frozenset({1001}))
    assert (census.processes, census.skipped) == (2, 1)
    assert sorted(census.namespaces) == [100, 300]  # 11's mountinfo was not read: its namespace is unknown


def test_skip_owners_are_login_users_other_than_the_callers():
    logins = procscan.LoginUsers()
    listed = logins.listed()
    for uid in listed:
        assert uid in logins
    some = next(iter(listed), None)
    skip = procscan.skip_owners({some} if some is not None else set(), logins)
    assert 0 not in skip and some not in skip and skip == listed - {some}


def test_the_real_proc_has_our_own_namespace():
    census = procscan.scan()
    own = mounts.table()
    assert own[0].id in census.namespaces
    assert census.namespaces[own[0].id].pid_of(os.getuid()) is not None


# -- sharing ---------------------------------------------------------------------------

class SlowScan:
    """A scan that counts its runs and waits until released."""

    def __init__(self):
        self.runs = 0
        self.release = threading.Event()
        self.running = threading.Event()

    def __call__(self, callers):
        self.callers = callers
        self.runs += 1
        self.running.set()
        assert self.release.wait(10)
        return f"census {self.runs}"


def in_threads(fn, n):
    out = [None] * n

    def run(k):
        out[k] = fn(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    return threads, out


def test_requests_waiting_together_share_one_scan():
    scan = SlowScan()
    scans = SharedScans(scan)
    tickets = [scans.ticket(1000 + k % 3) for k in range(16)]
    threads, out = in_threads(lambda k: tickets[k].census(), 16)
    assert scan.running.wait(10)
    time.sleep(0.05)
    scan.release.set()
    for t in threads:
        t.join(10)
    assert out == ["census 1"] * 16 and scan.runs == 1 == scans.scans
    assert scan.callers == {1000, 1001, 1002}  # the scan looked for every waiting caller


def test_a_request_arriving_during_a_scan_is_served_by_the_next():
    scan = SlowScan()
    scans = SharedScans(scan)
    first = scans.ticket(1)
    threads, out = in_threads(lambda k: first.census(), 1)
    assert scan.running.wait(10)
    late = [scans.ticket(2) for _ in range(4)]  # arrived after the scan began
    late_threads, late_out = in_threads(lambda k: late[k].census(), 4)
    time.sleep(0.05)
    scan.release.set()
    for t in threads + late_threads:
        t.join(10)
    assert out == ["census 1"] and late_out == ["census 2"] * 4 and scan.runs == 2


def test_no_census_is_reused_by_a_request_that_arrives_after_it_began():
    scan = SlowScan()
    scan.release.set()
    scans = SharedScans(scan)
    early = scans.ticket(7)
    assert scans.ticket(8).census() == "census 1"
    assert scan.callers == {7, 8}
    assert early.census() == "census 1"  # arrived before it began: served by it
    closed = scans.ticket(9)
    closed.close()
    later = scans.ticket(10)
    assert later.census() == "census 2"
    assert scan.callers == {10}  # served and closed tickets are no longer looked for
    assert later.census() == "census 2"  # the request's own retry: its census, no new scan
    assert scan.runs == 2


def test_a_scan_ahead_serves_the_tickets_taken_before_it_and_only_one_runs_at_a_time():
    """``ahead``: started as polkit is asked, it serves the request's
    ticket (no second scan when its check asks), and no second one starts
    while it runs; a ticket taken while it runs gets the next."""
    scan = SlowScan()
    scans = SharedScans(scan)
    ticket = scans.ticket(5)
    started = []

    def run(fn):
        t = threading.Thread(target=fn)
        started.append(t)
        t.start()

    assert scans.ahead(run)
    assert scan.running.wait(10)
    assert not scans.ahead(run)  # one is running: it serves whoever took a ticket before it
    late = scans.ticket(6)
    threads, out = in_threads(lambda k: ticket.census(), 1)
    time.sleep(0.05)
    scan.release.set()
    for t in threads + started:
        t.join(10)
    assert out == ["census 1"] and scan.runs == 1 and scan.callers == {5}  # taken before it began
    assert late.census() == "census 2"  # it arrived after that scan began
    assert len(started) == 1


def test_no_scan_ahead_while_another_ticket_waits_the_scan_it_needs_serves_both():
    """Under load, a scan ahead per arrival would run back to back, each
    replaced before anyone took it: with another ticket waiting, ``ahead``
    starts none, and the scan the first check starts serves both (it
    starts after both arrived).  Alone again, it starts one."""
    scan = SlowScan()
    scan.release.set()
    scans = SharedScans(scan)
    ran = []

    def run(fn):
        ran.append(fn)
        fn()

    first, second = scans.ticket(5), scans.ticket(6)
    assert not scans.ahead(run) and ran == []
    assert first.census() == "census 1" and second.census() == "census 1" and scan.runs == 1
    first.close()
    second.close()
    alone = scans.ticket(7)
    assert scans.ahead(run) and len(ran) == 1 and scan.runs == 2
    assert alone.census() == "census 2" and scan.runs == 2


def test_ahead_names_uids_whose_last_allowed_request_needed_a_census_and_forgets_the_oldest():
    ahead = Ahead(size=2)
    assert not ahead.wanted(1)
    ahead.served(1, used=True)
    ahead.served(2, used=True)
    assert ahead.wanted(1) and ahead.wanted(2)
    ahead.served(3, used=True)  # over the size: the least recent (1) goes
    assert not ahead.wanted(1) and ahead.wanted(2) and ahead.wanted(3)
    ahead.served(2, used=False)  # its last request needed none
    ahead.refused(3)  # polkit said no
    assert not ahead.wanted(2) and not ahead.wanted(3)


def test_a_failed_scan_fails_its_waiters_and_the_next_request_scans_again():
    calls = []

    def scan(callers):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return "ok"

    scans = SharedScans(scan)
    t = scans.ticket(1)
    with pytest.raises(OSError):
        t.census()
    assert scans.ticket(1).census() == "ok"


# -- the compiled scan against the Python one (the reference) ---------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

needs_cscan = pytest.mark.skipif(procscan.compiled_scan() is None,
                                 reason="the compiled scan is not built (locald_admin.fs._cprocscan: no gcc or "
                                        "Python headers at install time; scripts/bootstrap builds it)")
FUZZ_EXAMPLES = int(os.environ.get("LOCALD_ADMIN_FUZZ_EXAMPLES", "2000"))


def summary(census):
    return (census.processes, census.skipped,
            {k: (dict(ns.owners), set(ns.initial)) for k, ns in census.namespaces.items()})


def both_scans(proc, logins, skip=frozenset({1000})):
    c = procscan.scan(str(proc), logins, compiled=True, skip=skip)
    py = procscan.scan(str(proc), logins, compiled=False, skip=skip)
    return summary(c), summary(py), list(c.namespaces) == list(py.namespaces)


@needs_cscan
def test_the_compiled_scan_of_the_real_proc_matches_the_python_one():
    """Processes come and go between two scans: compared where both saw them."""
    logins = procscan.LoginUsers()
    for _ in range(5):
        c, py, _ = both_scans("/proc", logins)
        if c == py:
            return
    own = mounts.table()[0].id
    assert c[2][own][0].keys() == py[2][own][0].keys()


HEADS = st.one_of(st.binary(max_size=70),
                  st.integers(0, 10 ** 21).map(lambda n: b"%d 1 0:1 / / rw - t t rw\n" % n),
                  st.sampled_from([b"", b"12", b"12 ", b"0 1", b"1" * 19 + b" x", b"1" * 20 + b" x", b"1" * 64,
                                   b"12\n", b" 12 "]))
UID_MAPS = st.one_of(st.binary(max_size=300),
                     st.sampled_from([IDENTITY, ROOTLESS, b"0 0 4294967295", b"0 0 4294967295\n\n",
                                      b"\t0\t0\t4294967295\r\n", b"0 0 4294967295 1\n", b"0 0 4294967296\n",
                                      b"0 0 4294967295\n0 0 1\n", b"00 0 04294967295\n", b"0 0 +4294967295\n",
                                      b"0 0 42949672950000000000000\n"]))


@needs_cscan
@settings(max_examples=FUZZ_EXAMPLES // 10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(procs=st.dictionaries(st.integers(1, 4194304), st.tuples(HEADS, st.sampled_from([0, 1000, 65534, 4300]),
                                                                 UID_MAPS), max_size=12))
def test_the_compiled_scan_matches_the_python_one_on_any_proc(tmp_path_factory, procs):
    """Any mountinfo heads and uid_maps (the parsers of both), owners of
    every kind (as root), pids listed in the directory's order."""
    top = tmp_path_factory.mktemp("proc")
    owned = {pid: (head, owner if IS_ROOT else None, uid_map) for pid, (head, owner, uid_map) in procs.items()}
    proc = fake_proc(top, owned)
    c, py, same_order = both_scans(proc, Logins({1000}))
    assert c == py and same_order


@needs_cscan
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=300))
def test_the_parsers_agree_on_any_bytes(head, uid_map):
    """procscan.first_mount_id and identity_map against the C scan's, through
    a one-process /proc written once per example (fast: no hypothesis
    fixture per example)."""
    proc = _scratch_proc()
    (proc / "7" / "mountinfo").write_bytes(head)
    (proc / "7" / "uid_map").write_bytes(uid_map)
    c, py, _ = both_scans(proc, Logins(set()))
    assert c == py
    first = procscan.first_mount_id(head[:procscan.HEAD])
    assert (first is not None) == (py[0] == 1)
    if first is not None:  # the owner is no login user and not root: its uid_map was read
        assert py[2][first][1] == ({OWNER} if procscan.identity_map(uid_map[:procscan.UID_MAP_MAX]) else set())


_SCRATCH = []
OWNER = 65534 if IS_ROOT else os.getuid()  # of the scratch process: no login user, not root


def _scratch_proc():
    if not _SCRATCH:
        import tempfile
        from pathlib import Path
        d = Path(tempfile.mkdtemp(prefix="locald-admin-proc-"))
        (d / "7").mkdir()
        (d / "7" / "mountinfo").write_bytes(b"")
        if IS_ROOT:
            os.chown(d / "7", OWNER, OWNER)
            os.chown(d / "7" / "mountinfo", OWNER, OWNER)
        _SCRATCH.append(d)
    return _SCRATCH[0]


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch():
    yield
    import shutil
    for d in _SCRATCH:
        shutil.rmtree(d, ignore_errors=True)
