"""A fair, bounded scheduler of blocking jobs, off the event loop.

It knows nothing about what a job does (``submit(uid, fn, *args)``): the
engine owns the request's sequence, and decides there whether two requests
share one walk.

* Each job runs in a thread of its own (unlinkat and getdents release the
  GIL), so the event loop keeps answering other callers.
* At most ``max_running`` jobs run at once.  A job that has run longer than
  ``long_after`` seconds stops counting against that limit: it is a huge
  delete or it is stuck (a FUSE file system above the anchor whose daemon
  hangs), and either way small requests must not queue behind it.
* At most ``per_uid`` jobs of one uid run at once, and waiting jobs are
  started round-robin across uids (the uid served longest ago first): one user firing hundreds of requests, or
  hanging their own threads on purpose, cannot starve another user.
"""

import asyncio
import collections
import queue
import threading


class _Threads:
    """Threads for jobs: an idle one is reused, otherwise a new one starts.
    No fixed cap (a thread stuck in the kernel must not take a slot from
    anyone else: the Jobs limits decide what runs); idle threads beyond a
    few exit.

    Idle threads wait on one queue; ``_idle`` counts them, and a job is put
    there only for a thread counted idle, which takes it off the count: so
    every job put is taken at once.  (A queue.SimpleQueue hands a job over
    in half the time of an Event per parked thread: 38 against 72 us.)"""

    KEEP_IDLE = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._work = queue.SimpleQueue()
        self._idle = 0  # threads waiting on _work, or about to

    def run(self, fn):
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._work.put(fn)
                return
        threading.Thread(target=self._worker, args=(fn,), name="cleanup", daemon=True).start()

    def _worker(self, fn):
        while True:
            fn()
            with self._lock:
                if self._idle >= self.KEEP_IDLE:
                    return
                self._idle += 1
            fn = self._work.get()


class _Job:
    __slots__ = ("uid", "fn", "args", "on_start", "future", "started_at")

    def __init__(self, uid, fn, args, on_start, future):
        self.uid, self.fn, self.args, self.on_start, self.future = uid, fn, args, on_start, future
        self.started_at = None


class Jobs:
    def __init__(self, max_running=4, per_uid=2, long_after=5.0):
        self.max_running = max_running
        self.per_uid = per_uid
        self.long_after = long_after
        self._waiting = {}  # uid -> deque of waiting jobs
        self._last_turn = {}  # uid -> value of self.started when it last got a turn
        self._running_per_uid = collections.Counter()
        self._counted = set()  # running jobs that count against max_running
        self._long_check = None  # the timer that finds jobs gone long, while jobs wait for a slot
        self._threads = _Threads()
        self.started = 0  # jobs started, for tests and stats

    @property
    def running(self):
        return sum(self._running_per_uid.values())

    def spawn(self, fn):
        """Run ``fn()`` in one of the jobs' threads now, outside the limits
        and the turns: for work of the service's own that is bounded by its
        caller (the census ahead, at most one at a time: ``scans.ahead``)."""
        self._threads.run(fn)

    async def submit(self, uid, fn, *args, on_start=None):
        """Run ``fn(*args)`` in a thread when ``uid``'s turn comes;
        ``on_start()`` is called (on the loop) when it gets its thread.

        Cancelling the awaiting task before then takes the job out of the
        queue; once it runs, the job is not interrupted (the caller's own
        function decides when to stop) and the task waits for it."""
        loop = asyncio.get_running_loop()
        job = _Job(uid, fn, args, on_start, loop.create_future())
        self._waiting.setdefault(uid, collections.deque()).append(job)
        self._dispatch(loop)
        try:
            return await job.future
        except asyncio.CancelledError:
            waiting = self._waiting.get(uid)
            if waiting is not None and job in waiting:
                waiting.remove(job)
                if not waiting:
                    del self._waiting[uid]
                raise
            # Already running: its thread cannot be interrupted from here.
            # The cancellation cancelled the future it was awaiting (unless
            # the job had just finished): wait on a new one, which _finish
            # resolves.
            if not job.future.cancelled():
                return job.future.result()
            job.future = loop.create_future()
            return await job.future

    # -- scheduling (event loop thread only) -----------------------------------
    def _dispatch(self, loop):
        while len(self._counted) < self.max_running and self._waiting:
            # The eligible uid served longest ago goes next (never: first).
            eligible = [u for u in self._waiting if self._running_per_uid[u] < self.per_uid]
            if not eligible:
                return  # everyone waiting is at their own limit
            uid = min(eligible, key=lambda u: self._last_turn.get(u, -1))
            waiting = self._waiting[uid]
            job = waiting.popleft()
            if not waiting:
                del self._waiting[uid]
            self._last_turn[uid] = self.started
            self._start(loop, job)
        if self._waiting and self._counted and self._long_check is None:
            # Jobs wait for a slot: one timer, for when the oldest counted job
            # has run long_after (whether a job has gone long matters only
            # then, so a request that nobody waits behind costs no timer).
            due = min(j.started_at for j in self._counted) + self.long_after
            self._long_check = loop.call_at(due, self._gone_long, loop)

    def _start(self, loop, job):
        self.started += 1
        if job.on_start is not None:
            job.on_start()
        self._running_per_uid[job.uid] += 1
        self._counted.add(job)
        job.started_at = loop.time()

        def run():
            try:
                result, error = job.fn(*job.args), None
            except BaseException as e:  # delivered to the awaiting caller
                result, error = None, e
            loop.call_soon_threadsafe(self._finish, loop, job, result, error)

        self._threads.run(run)

    def _gone_long(self, loop):
        self._long_check = None
        now = loop.time()
        self._counted = {j for j in self._counted if now - j.started_at < self.long_after}
        self._dispatch(loop)

    def _finish(self, loop, job, result, error):
        self._counted.discard(job)
        self._running_per_uid[job.uid] -= 1
        if not self._running_per_uid[job.uid]:
            del self._running_per_uid[job.uid]
        fut = job.future
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(result)
        self._dispatch(loop)
