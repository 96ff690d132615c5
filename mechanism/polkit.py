"""Ask polkit whether the caller may run the cleanup action.

The subject is the caller's unique bus name ("system-bus-name"), never a PID:
polkit resolves the name itself, which avoids the PID-reuse race of
CVE-2013-4288.  uid 0 is authorized without polkit, as systemd's mechanisms
do.  Every failure to get a clear "yes" is a "no": polkit missing, erroring,
or slower than our own timeout.  Nothing is cached across calls.
"""

import asyncio
import itertools
import logging

from dbus_next import Message, MessageFlag, MessageType, Variant

from .. import interface as i
from .errors import InteractiveAuthorizationRequired, NotAuthorized

log = logging.getLogger(__name__)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"

_cancel_ids = itertools.count(1)

# The bus lets one connection wait for at most 128 replies at once (the
# system bus default, max_replies_per_connection); past that it refuses our
# calls with LimitsExceeded, which would deny callers for no reason.  At most
# this many checks are in flight; the others wait their turn (within their
# own timeout).
MAX_CHECKS_IN_FLIGHT = 96
_slots = {}  # event loop -> Semaphore


async def authorize(bus, sender, uid, interactive, timeout):
    """Return None if ``sender`` (uid ``uid``) may clean up; raise otherwise."""
    if uid == 0:
        return
    cancel_id = f"locald-admin-{next(_cancel_ids)}"
    flags = i.POLKIT_ALLOW_USER_INTERACTION if interactive else 0
    call = Message(
        destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
        member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
        body=[["system-bus-name", {"name": Variant("s", sender)}], i.POLKIT_ACTION, {}, flags, cancel_id],
        # polkit may itself have to ask an agent: allow it when we may.
        flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE,
    )
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(MAX_CHECKS_IN_FLIGHT)

    async def ask():
        async with slots:
            return await bus.call(call)

    try:
        reply = await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        _cancel(bus, cancel_id)
        raise NotAuthorized(f"polkit did not answer within {timeout:g} s") from None
    except Exception as e:  # the bus connection itself failed
        raise NotAuthorized(f"polkit could not be asked: {e}") from None
    if reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise NotAuthorized(f"polkit is unavailable ({reply.error_name}{': ' + detail if detail else ''})")
    try:
        authorized, challenge, _details = reply.body[0]
    except (TypeError, ValueError, IndexError):
        raise NotAuthorized("polkit sent a malformed answer") from None
    if authorized is True:
        return
    if challenge and not interactive:
        raise InteractiveAuthorizationRequired(
            "authentication is required; call again allowing interactive authorization")
    raise NotAuthorized(f"polkit denied {i.POLKIT_ACTION} to uid {uid}")


def _cancel(bus, cancel_id):
    """Best effort: tell polkit to drop an authentication dialog we gave up on."""
    try:
        bus.send(Message(destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
                         member="CancelCheckAuthorization", signature="s", body=[cancel_id],
                         flags=MessageFlag.NO_REPLY_EXPECTED))
    except Exception:
        log.debug("could not cancel polkit check %s", cancel_id, exc_info=True)
