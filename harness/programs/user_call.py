"""One Cleanup through the public client API, run as the client user.

Usage: user_call.py [--pid] < REQUEST_JSON

The request, {"op": "request" | "force", "path": ..., "timeout": ...}, comes
on stdin (so that 1 MiB and control characters reach the bus unchanged):
``request`` is the bare call (request_cleanup sends the string as is, no
client-side check), ``force`` is force_remove_dir_all.  With --pid, first a
JSON line {"pid": ...} (the audit line names it), once the request is read.
Then one JSON line: {"ok": true} or {"ok": false, "type", "message"}.
"""

import asyncio
import json
import os
import sys

from locald_admin import client


def main():
    req = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    if "--pid" in sys.argv[1:]:
        print(json.dumps({"pid": os.getpid()}), flush=True)
    try:
        if req.get("op", "request") == "request":
            asyncio.run(client.request_cleanup(req["path"], timeout=req["timeout"]))
        else:
            client.force_remove_dir_all(req["path"], timeout=req["timeout"])
        out = {"ok": True}
    except Exception as e:
        out = {"ok": False, "type": type(e).__name__, "message": str(e)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
