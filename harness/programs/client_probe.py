"""Runs one client API call (as whatever user the test chose) and prints a
JSON report of the outcome.  Usage: client_probe.py OP PATH OPTIONS_JSON

OP: force (force_remove_dir_all), force_async, request (request_cleanup on
a connection of its own, whose unique name is reported), options
(AdminClient.cleanup_with_options: its result as a dict), raw (one
CleanupWithOptions message as given: OPTIONS_JSON is {"options": {key:
[signature, value]}, "flag": bool}, the message's interactive flag; the
reply's error or its result).
"""

import asyncio
import json
import sys

from locald_admin import client
from outcome import describe


async def request(path, options):
    admin = await client.AdminClient().connect()
    report = {"sender": admin.unique_name, "progress": []}
    try:
        await client.request_cleanup(path, bus=admin, on_progress=lambda *a: report["progress"].append(a),
                                     **options)
        report["ok"] = True
    except Exception as exc:
        report.update(describe(exc))
    admin.close()
    return report


async def options_call(path, options):
    admin = await client.AdminClient().connect()
    report = {"sender": admin.unique_name}
    try:
        result = await admin.cleanup_with_options(path, **options)
        report.update(ok=True, result=result.as_dict(), left_behind=result.left_behind, dry_run=result.dry_run)
    except Exception as exc:
        report.update(describe(exc))
    admin.close()
    return report


async def raw(path, spec):
    from locald_admin import interface as i
    from locald_admin import messages as m
    from locald_admin.busio import Connection

    bus = await Connection.open()
    options = {k: m.Variant(sig, value) for k, (sig, value) in spec["options"].items()}
    call = m.Call(i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, i.CLEANUP_WITH_OPTIONS.name,
                  i.CLEANUP_WITH_OPTIONS.in_signature, (path, options), allow_interactive=spec.get("flag", False))
    reply = await bus.call(call, 30)
    bus.close()
    if reply.error_name is not None:
        return {"ok": False, "error": reply.error_name, "message": reply.text, "sender": bus.unique_name}
    return {"ok": True, "result": m.read_cleanup_result(reply), "sender": bus.unique_name}


def main():
    op, path, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        if op == "force":
            client.force_remove_dir_all(path, **options)
            report = {"ok": True}
        elif op == "force_async":
            asyncio.run(client.force_remove_dir_all_async(path, **options))
            report = {"ok": True}
        elif op == "request":
            report = asyncio.run(request(path, options))
        elif op == "options":
            report = asyncio.run(options_call(path, options))
        elif op == "raw":
            report = asyncio.run(raw(path, options))
        else:
            raise SystemExit(f"unknown op {op}")
    except Exception as exc:
        report = describe(exc)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
