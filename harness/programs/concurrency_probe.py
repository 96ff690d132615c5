"""Client side of tests/test_concurrency.py, run as the unprivileged client
user (or the current user when the suite is not root).

Usage: concurrency_probe.py OP OPTIONS_JSON

OP ``force_many``: ``force_remove_dir_all_async`` for every path of
  ``paths`` at once in one event loop (the shared AdminClient), with
  ``timeouts`` {index: seconds} on some.  ``force_delegate``: the user's own
  removal raises PermissionError without trying (used when the suite is not
  root: a leftover the user cannot remove itself would be out of the
  mechanism's reach too, since it then runs as the same user).  Prints one
  JSON report.

OP ``calls``: ``AdminClient.cleanup`` calls, started in ``phases`` (lists
  of paths); each phase after the first waits for a line on stdin, while the
  earlier calls keep running.  ``connections`` AdminClients (calls are
  spread round-robin), each with ``max_in_flight``.  Prints JSON lines:
  {"event": "ready", "senders": [...]} once connected, {"event": "reply",
  ...} per answer in the order answers arrive, then {"event": "done", ...}
  with the most calls ever outstanding on each connection and what is left
  in the D-Bus library's reply table.
"""

import asyncio
import json
import sys
import time

from locald_admin import client
from locald_admin.client import as_user
from outcome import describe


def expand(paths):
    """A list of paths, or {"pattern": ".../t{k}", "count": N} (argv stays
    short: one argument may not exceed 128 KiB)."""
    if isinstance(paths, dict):
        return [paths["pattern"].format(k=k) for k in range(paths["count"])]
    return list(paths)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def count_outstanding(admin):
    """Wrap the connection's ``call`` to record how many calls were ever
    outstanding on it at once."""
    bus = admin._bus
    real_call = bus.call
    state = {"now": 0, "max": 0}

    async def call(*args, **kwargs):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        try:
            return await real_call(*args, **kwargs)
        finally:
            state["now"] -= 1

    bus.call = call
    return state


async def force_many(options):
    paths = expand(options["paths"])
    timeouts = {int(k): v for k, v in options.get("timeouts", {}).items()}
    if options.get("force_delegate"):
        def refuse(path):
            raise PermissionError(13, "Permission denied (forced by the test)", path)
        as_user.remove = refuse
    shared = client.shared_client()
    await shared.connect()
    state = count_outstanding(shared)

    async def one(k, path):
        kw = {"timeout": timeouts[k]} if k in timeouts else {}
        try:
            await client.force_remove_dir_all_async(path, **kw)
            return {"ok": True}
        except Exception as exc:
            return describe(exc)

    start = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(one(k, p) for k, p in enumerate(paths))), options.get("deadline", 120))
    await asyncio.sleep(0)
    same = client.shared_client()
    return {
        "results": results,
        "elapsed": time.monotonic() - start,
        "same_client": same is shared,
        "sender": same.unique_name,
        "connected": same._bus is not None and same._bus.connected,
        "pending_replies": same._bus.pending_replies,
        "progress_callbacks": len(same._progress),
        "free_slots": same._slots._value,
        "max_outstanding": state["max"],
        "tasks_left": len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()]),
    }


async def calls(options):
    phases = [expand(p) for p in options["phases"]]
    n = options.get("connections", 1)
    admins = [client.AdminClient(max_in_flight=options.get("max_in_flight", 64)) for _ in range(n)]
    for a in admins:
        await a.connect()
    states = [count_outstanding(a) for a in admins]
    emit({"event": "ready", "senders": [a.unique_name for a in admins]})
    loop = asyncio.get_running_loop()
    tasks = []
    counter = 0

    async def one(phase, k, path, admin):
        progress = []
        entry = {"event": "reply", "phase": phase, "index": k, "path": path}
        try:
            await admin.cleanup(path, on_progress=lambda *a: progress.append(a),
                                timeout=options.get("timeout", 120))
            entry["ok"] = True
        except Exception as exc:
            entry.update(describe(exc))
        entry["t"] = time.monotonic()
        entry["progress"] = progress
        emit(entry)
        return entry

    for phase, paths in enumerate(phases):
        if phase > 0:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break  # the test gave up
        for k, path in enumerate(paths):
            tasks.append(asyncio.ensure_future(one(phase, k, path, admins[counter % n])))
            counter += 1
        await asyncio.sleep(0)
    results = await asyncio.wait_for(asyncio.gather(*tasks), options.get("deadline", 120))
    emit({"event": "done", "ok": all(r.get("ok") for r in results),
          "max_outstanding": [s["max"] for s in states],
          "pending_replies": [a._bus.pending_replies for a in admins]})
    for a in admins:
        a.close()


def main():
    op, options = sys.argv[1], json.loads(sys.argv[2])
    if op == "force_many":
        emit(asyncio.run(force_many(options)))
    elif op == "calls":
        asyncio.run(calls(options))
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
