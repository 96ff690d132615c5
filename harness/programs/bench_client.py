"""locald-admin benchmark client (run by bench/ as the
unprivileged test user).  Modes:

  delete PATH          connect, then time one Cleanup(PATH); print JSON
  coldstart PATH       connect, print ready, poll NameHasOwner every 1 ms,
                       call Cleanup(PATH) once it appears; print monotonic times
  load PREFIX          connect, print ready, then serve commands on stdin:
                         run WHAT COUNT START DURATION   (WHAT: cleanup, polkit,
                           ping, driver; COUNT 0: until START+DURATION)
                         quit
"""
import asyncio, json, os, resource, sys, time
from locald_admin import interface as i
from locald_admin import messages as m
from locald_admin.busio import Connection
from locald_admin.client import AdminClient


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def describe(e):
    return f"{type(e).__name__}: {e}"[:300]


async def check(reply):
    if reply.error_name is not None:
        raise RuntimeError(f"{reply.error_name}: {reply.text}")
    return reply


async def delete(path):
    admin = await AdminClient().connect()
    err = None
    t0 = time.perf_counter()
    try:
        await admin.cleanup(path, timeout=3600)
    except Exception as e:
        err = describe(e)
    seconds = time.perf_counter() - t0
    admin.close()
    emit({"seconds": seconds, "error": err})


async def coldstart(path):
    bus = await Connection.open()
    emit({"ready": True})
    has = m.Call(m.DBUS_NAME, m.DBUS_PATH, m.DBUS_NAME, "NameHasOwner", "s", (i.BUS_NAME,))
    deadline = time.monotonic() + 60
    t_name = None
    while time.monotonic() < deadline:
        reply = await bus.call(has)
        if reply.error_name is None and reply.body[0]:
            t_name = time.monotonic()
            break
        await asyncio.sleep(0.001)
    if t_name is None:
        emit({"error": "the name never appeared"})
        return
    reply = await bus.call(m.cleanup(path))
    t_reply = time.monotonic()
    emit({"t_name": t_name, "t_reply": t_reply, "error": reply.error_name})
    bus.close()


async def load(prefix):
    admin = await AdminClient().connect()
    bus = admin._bus
    me = bus.unique_name
    pid = os.getpid()

    def polkit_call():
        return m.check_authorization(me, i.POLKIT_ACTION, False, "")

    async def call(what, k):
        if what == "cleanup":
            await admin.cleanup(f"{prefix}-{pid}-{k}", timeout=60)
        elif what == "polkit":
            decision = m.read_authorization(await check(await bus.call(polkit_call())))
            if not decision.authorized:
                raise RuntimeError("polkit said no" + (" (challenge)" if decision.challenge else ""))
        elif what == "ping":
            await check(await bus.call(m.Call(i.BUS_NAME, i.OBJECT_PATH, m.PEER, "Ping")))
        elif what == "driver":
            await check(await bus.call(m.Call(m.DBUS_NAME, m.DBUS_PATH, m.DBUS_NAME, "GetId")))
        else:
            raise ValueError(what)

    emit({"ready": True, "name": me, "pid": pid})
    n = 0
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
        _, what, count, start, duration = line.split()
        count, start, duration = int(count), float(start), float(duration)
        warm_err = None
        for k in range(3):
            try:
                await call(what, f"w{n}-{k}")
            except Exception as e:
                warm_err = warm_err or describe(e)
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        t_start = time.monotonic()
        end = t_start + (duration if duration > 0 else 600.0)
        lat, errors, first = [], 0, None
        c0 = cpu()
        k = 0
        while count == 0 or k < count:
            t0 = time.monotonic()
            if t0 >= end:
                break
            try:
                await call(what, f"{n}-{k}")
                ok = True
            except Exception as e:
                ok = False
                first = first or describe(e)
            t1 = time.monotonic()
            if count == 0 and t1 > end:
                break  # finished after the window: not counted
            k += 1
            if ok:
                lat.append((t1 - t0) * 1000.0)
            else:
                errors += 1
        elapsed = time.monotonic() - t_start
        n += 1
        emit({"what": what, "ok": len(lat), "errors": errors, "first_error": first, "warmup_error": warm_err,
              "elapsed": elapsed, "cpu": cpu() - c0, "ms": lat if count else None,
              "ms_summary": summary(lat)})
    admin.close()


def summary(v):
    if not v:
        return None
    s = sorted(v)
    pick = lambda q: s[max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))]
    return {"n": len(s), "p50": pick(0.5), "p99": pick(0.99), "max": s[-1]}


def main():
    mode = sys.argv[1]
    if mode == "delete":
        asyncio.run(delete(sys.argv[2]))
    elif mode == "coldstart":
        asyncio.run(coldstart(sys.argv[2]))
    elif mode == "load":
        asyncio.run(load(sys.argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


main()
