"""Ask polkit whether the caller may run a method's action.

The subject is the caller's unique bus name ("system-bus-name"), never a PID:
polkit resolves the name itself, which avoids the PID-reuse race of
CVE-2013-4288 (``messages.check_authorization``).  uid 0 is authorized
without polkit, as systemd's mechanisms do.  Every failure to get a clear
"yes" is a "no": polkit missing, erroring, or slower than our own timeout.
Nothing is cached across calls.

Checks in flight are bounded twice:

* per uid: at most ``interactive_per_uid`` checks that may show an
  authentication dialog (which can stay unanswered for the whole interactive
  timeout, when the caller's own agent never replies) and at most
  ``plain_per_uid`` others.  A caller waits for one of *their own* slots
  (that wait counts against their own timeout); one user holding all of
  theirs takes nothing from anyone else.
* in all: the bus lets one connection wait for at most 128 replies at once
  (the system bus default, max_replies_per_connection); past that it refuses
  our calls with LimitsExceeded, which would deny callers for no reason.  At
  most ``max_in_flight`` checks are sent at once; waiting for that shared
  pool does not count against a caller's timeout (it is bounded by the
  others' timeouts, and the per-uid bounds keep any one user's share small).

A check whose caller leaves the bus is cancelled: the service cancels the
task waiting in ``authorize``, which tells polkit (``CancelCheckAuthorization``,
so that an authentication dialog goes away) and frees its slots at once.
"""

import asyncio
import itertools

from locald_admin import messages
from locald_admin.busio import BusError
from .errors import InteractiveAuthorizationRequired, NotAuthorized


class _PerUid:
    """``limit`` slots for each uid, made when first needed and dropped
    when nobody uses them (so that a uid that has gone costs nothing)."""

    def __init__(self, limit):
        self.limit = limit
        self._slots = {}  # uid -> [Semaphore, users]

    def get(self, uid):
        entry = self._slots.get(uid)
        if entry is None:
            entry = self._slots[uid] = [asyncio.Semaphore(self.limit), 0]
        entry[1] += 1
        return entry[0]

    def put(self, uid):
        entry = self._slots[uid]
        entry[1] -= 1
        if not entry[1]:
            del self._slots[uid]


# The second way in, for callers without a session (ssh, CI, services): the
# example rule the package ships (Makefile, debian/: installed there).
EXAMPLE_RULE = "/usr/share/doc/locald-admin/examples/50-locald-admin.rules.example"
WAYS_IN = (f"for callers without one (ssh, CI, services) the administrator can allow a group with the polkit "
           f"rule {EXAMPLE_RULE}")


class Authority:
    """polkit as seen from one bus connection."""

    def __init__(self, bus, max_in_flight=96, plain_per_uid=12, interactive_per_uid=4):
        self.bus = bus
        self._pool = asyncio.Semaphore(max_in_flight)
        self._plain = _PerUid(plain_per_uid)
        self._interactive = _PerUid(interactive_per_uid)
        self._cancel_ids = itertools.count(1)

    async def authorize(self, sender, uid, action, interactive, timeout, gone=None):
        """Return None if ``sender`` (uid ``uid``) may run ``action``; raise
        NotAuthorized otherwise.  Cancelling the awaiting task cancels the
        check with polkit too.  ``gone``: an Event set once the caller has
        left the bus; then no check is sent (asyncio.wait_for of Python 3.11
        can swallow a cancellation that arrives as a slot is granted, so
        the flag is read too)."""
        if uid == 0:
            return
        cancel_id = f"locald-admin-{next(self._cancel_ids)}"
        call = messages.check_authorization(sender, action, interactive, cancel_id)
        mine = self._interactive if interactive else self._plain
        slot = mine.get(uid)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            try:
                if slot.locked():  # wait for one of the caller's own slots, against their timeout
                    await asyncio.wait_for(slot.acquire(), timeout)
                else:
                    await slot.acquire()  # free: taken at once (wait_for would cost a task)
            except asyncio.TimeoutError:
                raise NotAuthorized(f"polkit did not answer within {timeout:g} s: the caller's other checks "
                                    f"({mine.limit} at most at once) kept it waiting") from None
            try:
                own_wait = loop.time() - started
                async with self._pool:
                    if gone is not None and gone.is_set():
                        raise asyncio.CancelledError()
                    reply = await self._ask(call, cancel_id, max(timeout - own_wait, 0.0), timeout)
            finally:
                slot.release()
        finally:
            mine.put(uid)
        try:
            decision = messages.read_authorization(reply)
        except messages.BadReply as e:
            raise NotAuthorized(str(e)) from None
        if decision.authorized:
            return
        # What a person can do about it, in the answer itself (issue 26):
        # the two ways in that polkit's defaults and the shipped rule give.
        if decision.challenge and not interactive:
            raise InteractiveAuthorizationRequired(
                "authentication is required: the caller is in no active local session; call again allowing "
                f"interactive authorization (locald-shim --interactive, on a terminal), or {WAYS_IN}")
        raise NotAuthorized(f"polkit denied {action} to uid {uid}: it is allowed without a password from an active "
                            f"local session (a desktop or console login on this machine); {WAYS_IN}")

    async def _ask(self, call, cancel_id, remaining, timeout):
        try:
            return await self.bus.call(call, remaining)
        except asyncio.TimeoutError:
            # Tell polkit to drop an authentication dialog we gave up on.
            self.bus.post(messages.cancel_check_authorization(cancel_id))
            raise NotAuthorized(f"polkit did not answer within {timeout:g} s") from None
        except asyncio.CancelledError:  # the caller left the bus
            self.bus.post(messages.cancel_check_authorization(cancel_id))
            raise
        except BusError as e:  # the bus connection itself failed
            raise NotAuthorized(f"polkit could not be asked: {e}") from None
