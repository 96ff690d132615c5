"""Pipelined and oversized Cleanup calls through busio, as the installed
client meets the installed mechanism (run inside the real-systemd machine
with the installed package on ``sys.path``).

Usage: burst.py SITE CALLS BIG_BYTES

Sends CALLS Cleanup calls of 4,000-byte paths that do not exist, 120 at a
time on one connection (the system bus allows 128 pending replies per
connection), then one call whose path is BIG_BYTES long.  Prints one JSON
object: where busio was loaded from, how the CALLS were answered
({error name or "ok": count}), and the big call's error name and message.
"""

import asyncio
import collections
import json
import sys

sys.path.insert(0, sys.argv[1])

from locald_admin import busio  # noqa: E402
from locald_admin import messages as m  # noqa: E402


def cleanup(path):
    return m.cleanup(path)


async def main(calls, big):
    bus = await busio.Connection.open()
    window = asyncio.Semaphore(120)

    async def one(k):
        async with window:
            return await bus.call(cleanup(f"/nonexistent/{k}/.locald/" + "x" * 4000))

    replies = await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(calls))), 300)
    answers = collections.Counter(r.error_name or "ok" for r in replies)
    reply = await asyncio.wait_for(bus.call(cleanup("/nonexistent/.locald/" + "x" * big)), 120)
    bus.close()
    print(json.dumps({"library": busio.__file__,
                      "answers": dict(answers), "big": [reply.error_name, reply.body[0] if reply.body else None]}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[2]), int(sys.argv[3])))
