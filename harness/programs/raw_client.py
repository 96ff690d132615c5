"""Raw D-Bus messages sent by the client user through busio.

Usage: raw_client.py MESSAGES_JSON

MESSAGES_JSON: a list of {destination, path, interface (may be null),
member, signature, body}.  Prints one JSON list: per message the reply's
type ("METHOD_RETURN" or "ERROR"), error name and body.
"""

import asyncio
import json
import sys

from locald_admin import messages as m
from locald_admin.busio import Connection


async def main(spec):
    bus = await Connection.open()
    out = []
    for d in spec:
        reply = await bus.call(m.Call(d["destination"], d["path"], d.get("interface"), d["member"],
                                      d.get("signature", ""), tuple(d.get("body", []))))
        out.append({"type": "ERROR" if reply.error_name else "METHOD_RETURN", "error": reply.error_name,
                    "body": [b if isinstance(b, (str, int)) else repr(b) for b in reply.body]})
    bus.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
