"""Many Cleanup calls at once from one user, pipelined on raw connections.

Usage: flood.py CONFIG_JSON, run as the client user.  CONFIG_JSON:
{"calls": N, "path": P, "pad_to": BYTES (optional: P padded with "x" to this
many bytes), "interactive": bool, "connections": C, "timeout": seconds}.

Sends every call without waiting (spread over C connections: the bus lets
one connection wait for a bounded number of replies), prints one JSON line
{"sent": N, "names": [unique names]}, then, once every call is answered or
stdin reaches EOF (whichever comes first), one JSON line with the tally
{"answers": {error name or "ok": count}, "unanswered": n} and exits,
disconnecting.
"""

import asyncio
import collections
import json
import os
import sys

from locald_admin import interface as i
from locald_admin import messages as m
from locald_admin.busio import Connection


async def main(cfg):
    path = cfg["path"]
    if cfg.get("pad_to"):
        path = path + "x" * (cfg["pad_to"] - len(path.encode()))
    buses = [await Connection.open() for _ in range(cfg.get("connections", 1))]
    tally = collections.Counter()

    async def one(bus):
        msg = m.Call(i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, "Cleanup", "s", (path,),
                     allow_interactive=bool(cfg.get("interactive")))
        try:
            reply = await asyncio.wait_for(bus.call(msg), cfg.get("timeout", 600))
            tally[reply.error_name or "ok"] += 1
        except asyncio.TimeoutError:
            tally["timeout"] += 1

    calls = [asyncio.ensure_future(one(buses[k % len(buses)])) for k in range(cfg["calls"])]
    await asyncio.sleep(0)
    print(json.dumps({"sent": len(calls), "names": [b.unique_name for b in buses]}), flush=True)
    loop = asyncio.get_running_loop()
    eof = loop.run_in_executor(None, sys.stdin.read)
    done = asyncio.ensure_future(asyncio.gather(*calls))
    await asyncio.wait([done, eof], return_when=asyncio.FIRST_COMPLETED)
    unanswered = sum(1 for c in calls if not c.done())
    print(json.dumps({"answers": dict(tally), "unanswered": unanswered}), flush=True)
    for b in buses:
        b.close()
    os._exit(0)  # the stdin reader thread would keep the interpreter alive


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
