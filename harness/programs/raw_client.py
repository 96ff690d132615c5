"""Raw D-Bus messages sent by the client user with dbus-fast.

Usage: raw_client.py MESSAGES_JSON

MESSAGES_JSON: a list of {destination, path, interface (may be null),
member, signature, body}.  Prints one JSON list: per message the reply's
type, error name and body.
"""

import asyncio
import json
import sys

from dbus_fast import Message

from locald_admin.busio import connect_system_bus


async def main(spec):
    bus = await connect_system_bus()
    out = []
    for m in spec:
        reply = await bus.call(Message(destination=m["destination"], path=m["path"],
                                       interface=m.get("interface"), member=m["member"],
                                       signature=m.get("signature", ""), body=m.get("body", [])))
        out.append({"type": reply.message_type.name, "error": reply.error_name,
                    "body": [b if isinstance(b, (str, int)) else repr(b) for b in reply.body]})
    bus.disconnect()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
