"""The request's way through the service, piece by piece, without a bus:
the one lookup of the target's final component (what is removed is what was
looked up, whose identity the walks are shared by), a method's arguments
unpacked by its spec, the callers' bookkeeping, and the memory trim's timer.
The whole way over a real bus is test_dbusmock_tier.py's and
test_hostile.py's.
"""

import asyncio
import os
import shutil

import pytest

from harness import trees
from locald_admin import interface as i
from locald_admin import messages
from locald_admin.mechanism import engine, memory
from locald_admin.mechanism.callers import Callers
from locald_admin.mechanism.config import Config
from locald_admin.mechanism.scans import SharedScans, scan_for
from locald_admin.mechanism.errors import Busy, MechanismError
from locald_admin.mechanism.service import CleanupService

ME = os.getuid()


@pytest.fixture
def anchor(tmp_path):
    a = tmp_path / "proj" / ".locald"
    a.mkdir(parents=True)
    return a


def write(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    trees.write(path, data)


def swap_after_lookup(monkeypatch, act):
    """Run ``act()`` right after the engine's first lookup of a target."""
    real, done = engine.look_up, []

    def racing(target):
        ident = real(target)
        if not done:
            done.append(True)
            act()
        return ident

    monkeypatch.setattr(engine, "look_up", racing)
    return done


# -- one lookup of the final component -------------------------------------------

def test_the_directory_looked_up_is_the_one_removed(mode, tmp_path, anchor, monkeypatch):
    """The target swapped for another directory between its lookup and its
    removal: the directory looked up (whose identity the walks are shared
    by) is the one emptied, the one swapped in is untouched (until the
    lookup was made once, removal looked the name up again and emptied the
    directory swapped in)."""
    t = anchor / "t"
    write(t / "a" / "f")
    write(t / "g")
    moved = tmp_path / "moved"

    def swap():
        os.rename(t, moved)
        write(t / "keep", b"swapped in")

    done = swap_after_lookup(monkeypatch, swap)
    try:
        engine.cleanup(str(t), ME)
    except MechanismError as e:
        assert "replaced" in e.message  # the final rmdir by name found another directory (R4)
    assert done
    assert (t / "keep").read_bytes() == b"swapped in"
    assert not moved.exists() or os.listdir(moved) == []


def test_a_file_swapped_for_a_directory_after_its_lookup_is_looked_up_again(mode, anchor, monkeypatch):
    """The file looked up is a directory by the time it is unlinked: not
    removed as if it were the file; the request starts again with a new
    lookup (and a new identity), which finds the directory."""
    t = anchor / "t"
    write(t, b"a file")

    def swap():
        os.unlink(t)
        write(t / "f")

    done = swap_after_lookup(monkeypatch, swap)
    assert engine.cleanup(str(t), ME) == 2
    assert done and not os.path.lexists(t)


def test_a_symlink_target_is_looked_up_as_the_link(mode, tmp_path, anchor):
    """The one lookup does not follow the final component: the link goes,
    the directory it points to stays."""
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "f", b"kept")
    (anchor / "link").symlink_to(elsewhere)
    assert engine.cleanup(str(anchor / "link"), ME) == 1
    assert not os.path.lexists(anchor / "link") and (elsewhere / "f").read_bytes() == b"kept"


# -- arguments by the method's spec ----------------------------------------------------

def test_a_method_gets_its_arguments_by_its_spec():
    assert i.CLEANUP.unpack(("/x",)) == ("/x",)
    assert [a.python_type for a in i.CLEANUP.in_args] == [str]
    with pytest.raises(ValueError, match="takes 1 arguments"):
        i.CLEANUP.unpack(())
    with pytest.raises(ValueError, match="path is int"):
        i.CLEANUP.unpack((1,))


# -- the callers' bookkeeping -------------------------------------------------------------

def call(sender=":1.5", body=("/nowhere/.locald/x",)):
    return messages.Incoming(sender=sender, path=i.OBJECT_PATH, interface=i.INTERFACE, member=i.METHOD_CLEANUP,
                             signature="s", body=body, allow_interactive=False, no_reply=False)


def test_each_uid_queues_at_most_its_bound_and_the_last_end_is_idle():
    async def main():
        idles = []
        c = Callers(max_queued_per_uid=2, on_idle=lambda: idles.append(c.in_flight))
        reqs = [c.begin(call()) for _ in range(3)]
        for r in reqs:
            r.uid = 1000
        c.queue(reqs[0])
        c.queue(reqs[1])
        with pytest.raises(Busy, match="uid 1000 already has 2 requests queued"):
            c.queue(reqs[2])
        assert not c.idle.is_set() and set(c.of(":1.5")) == set(reqs)
        c.end(reqs[0])
        c.queue(reqs[2])  # a place was freed
        c.end(reqs[1])
        c.end(reqs[2])
        assert idles == [0] and c.idle.is_set() and c.in_flight == 0 and not c.of(":1.5")
        assert not c._queued and not c._by_sender
    asyncio.run(main())


class _Bus:
    connected = True

    def __init__(self):
        self.errors = []

    async def reply(self, incoming, signature="", body=()):
        pass

    async def reply_error(self, incoming, name, text):
        self.errors.append((name, text))


def test_a_call_whose_caller_left_before_it_ran_is_not_counted_forever(capsys):
    """NameOwnerChanged read right behind the call: its task is cancelled
    before its first step, and its bookkeeping still ends (the service goes
    idle)."""
    async def main():
        service = CleanupService(_Bus())
        assert service.dispatch(call())
        service.caller_left(":1.5")
        await asyncio.wait_for(service.drain(), 5)
        assert service.callers.in_flight == 0
    asyncio.run(main())


def test_a_call_with_the_wrong_signature_is_answered_invalid_args_and_not_counted():
    async def main():
        bus = _Bus()
        service = CleanupService(bus)
        wrong = messages.Incoming(sender=":1.6", path=i.OBJECT_PATH, interface=i.INTERFACE,
                                  member=i.METHOD_CLEANUP, signature="u", body=(7,), allow_interactive=False,
                                  no_reply=False)
        assert service.dispatch(wrong)
        assert service.callers.in_flight == 0
        await asyncio.sleep(0.01)
        assert bus.errors == [(messages.INVALID_ARGS, "Cleanup takes signature 's', got 'u'")]
    asyncio.run(main())


# -- the census ahead ---------------------------------------------------------------------------

class _Reply:
    def __init__(self, body):
        self.body, self.error_name, self.text = body, None, ""


CALLER = ME if ME != 0 else 4242  # polkit is not asked about root


class _PolkitBus(_Bus):
    """The bus daemon answers at once (uid CALLER); each CheckAuthorization
    waits for the test's answer (``asked``: a future per check)."""

    def __init__(self):
        super().__init__()
        self.asked = asyncio.Queue()
        self.answered = asyncio.Queue()

    async def call(self, msg, timeout=None):
        if msg.member == "GetConnectionCredentials":
            return _Reply(({"UnixUserID": CALLER, "ProcessID": 7},))
        answer = asyncio.get_running_loop().create_future()
        await self.asked.put(answer)
        return _Reply(((await answer, False, {}),))

    def post(self, msg):
        pass

    async def reply(self, incoming, signature="", body=()):
        await self.answered.put(None)

    async def reply_error(self, incoming, name, text):
        await self.answered.put(name)


def test_the_census_starts_as_polkit_is_asked_for_a_uid_whose_last_request_was_allowed_and_needed_one(anchor):
    """The in-use check's census is most of a small request's own time: it
    starts while polkit is asked for a uid whose last request polkit said
    yes to and needed a census; never for a uid polkit has not said yes to,
    nor after a no (a flood of refused calls costs no scan of /proc), nor
    after a request that needed none (a missing target)."""
    if ME == 0:
        for p in (anchor.parent, anchor):
            os.chown(p, CALLER, CALLER)

    async def main():
        bus = _PolkitBus()
        service = CleanupService(bus, config=Config())
        scanned = []
        service.engine.scans = SharedScans(scan=lambda callers: scanned.append(set(callers)) or scan_for(callers))

        async def one(yes, leftover=True):
            target = anchor / "t"
            if leftover:
                (target / "run").mkdir(parents=True)
                if ME == 0:
                    os.chown(target, CALLER, CALLER)  # run stays root's: a leftover
            assert service.dispatch(call(body=(str(target),)))
            answer = await asyncio.wait_for(bus.asked.get(), 5)
            await asyncio.sleep(0.1)  # time for a census ahead to run
            during = len(scanned)
            answer.set_result(yes)
            reply = await asyncio.wait_for(bus.answered.get(), 5)
            await service.drain()
            if reply is not None:
                shutil.rmtree(target)
            return during, reply

        assert await one(True) == (0, None)  # never said yes before: no scan ahead; its check scanned
        assert scanned == [{CALLER}]
        assert await one(False) == (2, i.ERROR_NOT_AUTHORIZED)  # yes and a census last time: one ahead
        assert await one(True) == (2, None)  # no last time: none ahead; its check scanned
        assert await one(True, leftover=False) == (4, None)  # yes and a census: ahead (not needed this time)
        assert await one(True) == (4, None)  # the last one needed none: none ahead
        assert scanned == [{CALLER}] * 5
    asyncio.run(main())


# -- the memory trim's timer ------------------------------------------------------------------

def test_the_trim_runs_once_after_a_quiet_moment_and_not_while_busy(monkeypatch):
    trims = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(True))

    async def main():
        busy = [False]
        t = memory.IdleTrim(busy=lambda: busy[0], after=0.1)
        t.idle()
        await asyncio.sleep(0.05)
        t.idle()  # another call ended meanwhile: the one timer moves on
        await asyncio.sleep(0.08)
        assert trims == []  # 0.13 s after the first, 0.08 after the last
        await asyncio.sleep(0.1)
        assert trims == [True]
        busy[0] = True
        t.idle()
        await asyncio.sleep(0.2)
        assert trims == [True]  # a call was in flight when it fired: the next idle() schedules it
        busy[0] = False
        t.idle()
        await asyncio.sleep(0.2)
        assert trims == [True, True]
    asyncio.run(main())
