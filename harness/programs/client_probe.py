"""Runs one client API call (as whatever user the test chose) and prints a
JSON report of the outcome.  Usage: client_probe.py OP PATH OPTIONS_JSON

OP: force (force_remove_dir_all), force_async, request (request_cleanup on
a connection of its own, whose unique name is reported).
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
        else:
            raise SystemExit(f"unknown op {op}")
    except Exception as exc:
        report = describe(exc)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
