"""Ask polkit whether the caller may run a method's action.

The subject is the caller's unique bus name ("system-bus-name"), never a PID:
polkit resolves the name itself, which avoids the PID-reuse race of
CVE-2013-4288 (``messages.check_authorization``).  uid 0 is authorized
without polkit, as systemd's mechanisms do.  Every failure to get a clear
"yes" is a "no": polkit missing, erroring, or slower than our own timeout.
Nothing is cached across calls.
"""

import asyncio
import itertools

from locald_admin import messages
from locald_admin.busio import BusError
from .errors import InteractiveAuthorizationRequired, NotAuthorized


class Authority:
    """polkit as seen from one bus connection.

    The bus lets one connection wait for at most 128 replies at once (the
    system bus default, max_replies_per_connection); past that it refuses our
    calls with LimitsExceeded, which would deny callers for no reason.  At
    most ``max_in_flight`` checks are in flight; the others wait their turn
    (within their own timeout).
    """

    def __init__(self, bus, max_in_flight=96):
        self.bus = bus
        self._slots = asyncio.Semaphore(max_in_flight)
        self._cancel_ids = itertools.count(1)

    async def authorize(self, sender, uid, action, interactive, timeout):
        """Return None if ``sender`` (uid ``uid``) may run ``action``; raise otherwise."""
        if uid == 0:
            return
        cancel_id = f"locald-admin-{next(self._cancel_ids)}"
        call = messages.check_authorization(sender, action, interactive, cancel_id)

        async def ask():
            async with self._slots:
                return await self.bus.call(call)

        try:
            reply = await asyncio.wait_for(ask(), timeout)
        except asyncio.TimeoutError:
            # Best effort: tell polkit to drop an authentication dialog we gave up on.
            self.bus.post(messages.cancel_check_authorization(cancel_id))
            raise NotAuthorized(f"polkit did not answer within {timeout:g} s") from None
        except BusError as e:  # the bus connection itself failed
            raise NotAuthorized(f"polkit could not be asked: {e}") from None
        try:
            decision = messages.read_authorization(reply)
        except messages.BadReply as e:
            raise NotAuthorized(str(e)) from None
        if decision.authorized:
            return
        if decision.challenge and not interactive:
            raise InteractiveAuthorizationRequired(
                "authentication is required; call again allowing interactive authorization")
        raise NotAuthorized(f"polkit denied {action} to uid {uid}")
