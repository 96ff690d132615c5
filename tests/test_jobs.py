"""The scheduler (mechanism/jobs.py) as pure logic: limits, fairness across
uids, long jobs that stop counting; and the engine's shared walks.  Jobs block on events
the test controls, so every assertion is about order, never about time."""

import asyncio
import os
import threading
import time

import pytest

from locald_admin.mechanism import engine, jobs


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class Gate:
    """A job body that records its start and waits to be released."""

    def __init__(self):
        self.started = []
        self.release = {}
        self.lock = threading.Lock()

    def body(self, tag):
        ev = threading.Event()
        with self.lock:
            self.release[tag] = ev
            self.started.append(tag)
        assert ev.wait(20), f"{tag} never released"
        return tag

    async def open(self, tag):
        """Release ``tag`` once it has started (the loop keeps running)."""
        while tag not in self.release:
            await asyncio.sleep(0.005)
        self.release[tag].set()


async def until(pred):
    while not pred():
        await asyncio.sleep(0.005)


def test_global_and_per_uid_limits_and_round_robin():
    async def main():
        j = jobs.Jobs(max_running=2, per_uid=1, long_after=60)
        g = Gate()
        a = [asyncio.ensure_future(j.submit(1000, g.body, f"a{k}")) for k in range(3)]
        b = [asyncio.ensure_future(j.submit(2000, g.body, f"b{k}")) for k in range(2)]
        await until(lambda: len(g.started) == 2)
        await asyncio.sleep(0.05)
        assert sorted(g.started) == ["a0", "b0"]  # one per uid, two in all
        await g.open("a0")
        await until(lambda: len(g.started) == 3)
        assert g.started[2] == "a1"  # uid 1000's next; uid 2000 is at its limit
        await g.open("b0")
        await until(lambda: len(g.started) == 4)
        assert g.started[3] == "b1"
        for t in ("a1", "b1", "a2"):
            await g.open(t)
        assert [await f for f in a] == ["a0", "a1", "a2"] and [await f for f in b] == ["b0", "b1"]
    run(main())


def test_a_flood_from_one_uid_does_not_starve_another():
    async def main():
        j = jobs.Jobs(max_running=1, per_uid=1, long_after=60)
        g = Gate()
        flood = [asyncio.ensure_future(j.submit(1000, g.body, f"a{k}")) for k in range(20)]
        await until(lambda: g.started == ["a0"])
        other = asyncio.ensure_future(j.submit(2000, g.body, "b0"))
        await asyncio.sleep(0)
        await g.open("a0")
        await until(lambda: len(g.started) == 2)
        assert g.started[1] == "b0"  # next turn goes to the other uid, not a1
        await g.open("b0")
        assert await other == "b0"
        for k in range(1, 20):
            await g.open(f"a{k}")
        await asyncio.gather(*flood)
    run(main())


def test_long_running_jobs_stop_counting_so_small_ones_are_not_stuck():
    """A huge (or hung) delete holds its thread, but after long_after it no
    longer blocks the global limit: another uid's request starts."""
    async def main():
        j = jobs.Jobs(max_running=1, per_uid=1, long_after=0.2)
        g = Gate()
        huge = asyncio.ensure_future(j.submit(1000, g.body, "huge"))
        await until(lambda: g.started == ["huge"])
        small = asyncio.ensure_future(j.submit(2000, lambda: "small"))
        assert await asyncio.wait_for(small, 10) == "small"
        assert not huge.done()
        # ... but the same uid stays at its own limit
        same = asyncio.ensure_future(j.submit(1000, lambda: "same"))
        await asyncio.sleep(0.4)
        assert not same.done()
        await g.open("huge")
        assert await huge == "huge" and await same == "same"
    run(main())


def test_errors_reach_the_caller_and_free_the_slot():
    async def main():
        j = jobs.Jobs(max_running=1, per_uid=1)

        def boom():
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await j.submit(1, boom)
        assert await j.submit(1, lambda: 7) == 7 and j.running == 0
    run(main())


async def two_sharing_one_walk(path1, path2, entered):
    """Two Cleanup jobs of one caller, the second submitted once the first's
    walk has started (``entered``) and awaited until it shares that walk:
    (engine, progress 1, progress 2, job 1, job 2)."""
    j, eng = jobs.Jobs(max_running=4, per_uid=2), engine.Engine()
    p1, p2 = engine.Progress(), engine.Progress()
    uid = os.getuid()
    first = asyncio.ensure_future(j.submit(uid, eng.cleanup, path1, uid, engine.Config(), p1))
    await until(entered.is_set)
    second = asyncio.ensure_future(j.submit(uid, eng.cleanup, path2, uid, engine.Config(), p2))
    await until(lambda: eng.shared_walks == 1)
    return eng, p1, p2, first, second


def test_same_target_twice_shares_one_walk(tmp_path, monkeypatch):
    anchor = tmp_path / "p" / ".locald"
    (anchor / "t" / "d").mkdir(parents=True)
    (anchor / "t" / "d" / "f").write_text("x")
    entered, release = threading.Event(), threading.Event()
    real_remove = engine.remove
    walks = []

    def slow_remove(target, *args):
        walks.append(target.display)
        entered.set()
        assert release.wait(20)
        return real_remove(target, *args)

    monkeypatch.setattr(engine, "remove", slow_remove)

    async def main():
        # the same directory, spelled differently
        eng, p1, p2, first, second = await two_sharing_one_walk(str(anchor / "t"), str(anchor) + "//t/", entered)
        release.set()
        return await first, await second, p2.walk is p1.walk

    r1, r2, same_progress = run(main())
    assert (r1.removed, r2.removed) == (3, 3) and same_progress
    assert len(walks) == 1 and not (anchor / "t").exists()


def test_a_shared_walk_stops_only_when_every_caller_has_left(tmp_path, monkeypatch):
    """Two requests share one walk.  The first's caller leaves: the walk
    goes on (the second still wants it).  The second's leaves too: the walk
    is told to stop, and both requests end Cancelled."""
    anchor = tmp_path / "p" / ".locald"
    (anchor / "t").mkdir(parents=True)
    entered = threading.Event()
    seen = []

    def watched_remove(target, progress=None, threads=1, cancel=None, *_):
        entered.set()
        try:
            deadline = time.monotonic() + 20
            while not cancel.is_set():
                assert time.monotonic() < deadline, "never told to stop"
                seen.append(False)
                time.sleep(0.01)
            raise engine.Cancelled(7)
        finally:
            target.close()

    monkeypatch.setattr(engine, "remove", watched_remove)

    async def main():
        eng, p1, p2, first, second = await two_sharing_one_walk(str(anchor / "t"), str(anchor / "t"), entered)
        p1.cancelled.set()
        n = len(seen)
        await until(lambda: len(seen) > n + 10)  # still walking
        assert not first.done() and not second.done()
        p2.cancelled.set()
        return await asyncio.gather(first, second, return_exceptions=True)

    r1, r2 = run(main())
    assert isinstance(r1, engine.Cancelled) and isinstance(r2, engine.Cancelled), (r1, r2)
    assert r1.removed == 7


def test_a_cancelled_waiting_job_leaves_the_queue_and_never_runs():
    """The caller of a queued job left: its task is cancelled, the job is
    taken out of the queue; a running job is waited for, not abandoned."""
    async def main():
        j, g = jobs.Jobs(max_running=1, per_uid=1), Gate()
        started = []
        a = asyncio.ensure_future(j.submit(1, g.body, "a", on_start=lambda: started.append("a")))
        await until(lambda: g.started == ["a"])
        b = asyncio.ensure_future(j.submit(1, g.body, "b", on_start=lambda: started.append("b")))
        await asyncio.sleep(0.05)
        b.cancel()
        a.cancel()  # running: the task waits for the job to end
        await asyncio.sleep(0.05)
        assert not a.done()
        await g.open("a")
        assert await a == "a"
        with pytest.raises(asyncio.CancelledError):
            await b
        await asyncio.sleep(0.05)
        assert g.started == ["a"] and started == ["a"] and j.running == 0
    run(main())
