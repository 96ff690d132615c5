"""The mechanism's command line: what ``main.parse_args`` makes of it, and
that a setting reaches what it is for, through the service as ``main``
builds it (``CleanupService(bus, settings)``; no bus is needed to make its
engine).  The walk's limits, ``--max-held-fds`` and ``--max-depth``, are
given to every walk as a ``walk.Limits``: nothing patches the walk's module.
Every test that removes runs with the three walks (``mode``), chosen by the
same options the service is given (``fsmode.mechanism_args``).
"""

import errno
import os
import resource

import pytest

from harness import fsmode
from harness.mechanism import Mechanism
from harness.trees import make_chain, rm_rf, write
from locald_admin.fs import walk
from locald_admin.mechanism import fdlimit, main
from locald_admin.mechanism.config import Config
from locald_admin.mechanism.engine import Progress
from locald_admin.mechanism.errors import Failed
from locald_admin.mechanism.service import CleanupService
from locald_admin.mechanism.settings import Settings

ME = os.getuid()


def engine_of(mode, *options):
    """The engine of a service started with ``options`` (and the walk of ``mode``)."""
    return CleanupService(None, main.parse_args([*fsmode.mechanism_args(mode), *options])).engine


def cleanup(engine, path):
    return engine.cleanup(str(path), ME, Config(), Progress()).removed


@pytest.fixture
def anchor(tmp_path):
    """<tmp>/proj/.locald, owned by the current user; removed with rm -rf
    however the test ends (a deep chain defeats pytest's own cleanup)."""
    a = tmp_path / "proj" / ".locald"
    a.mkdir(parents=True)
    yield a
    rm_rf(a)


# -- the defaults ----------------------------------------------------------------------

def test_the_walk_limits_default_to_the_walks_own():
    settings = main.parse_args([])
    assert settings == Settings()
    assert (settings.max_held_fds, settings.max_depth) == (48, 65536)
    assert settings.walk_limits == walk.DEFAULT_LIMITS
    assert CleanupService(None, settings).engine.limits == walk.DEFAULT_LIMITS


def test_the_walk_limits_are_read_from_the_command_line():
    settings = main.parse_args(["--max-held-fds", "4", "--max-depth", "3"])
    assert settings.walk_limits == walk.Limits(max_held_fds=4, max_depth=3)
    assert CleanupService(None, settings).engine.limits == walk.Limits(max_held_fds=4, max_depth=3)


# -- bad values ------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, why", [
    ("--max-held-fds", "0", "must be from 1 to 256, not 0"),
    ("--max-held-fds", "257", "must be from 1 to 256, not 257"),
    ("--max-held-fds", "-3", "must be from 1 to 256, not -3"),
    ("--max-held-fds", "4.5", "'4.5' is not a whole number"),
    ("--max-depth", "0", "must be from 1 to 1048576, not 0"),
    ("--max-depth", str(2 ** 20 + 1), f"must be from 1 to 1048576, not {2 ** 20 + 1}"),
    ("--max-depth", "deep", "'deep' is not a whole number"),
])
def test_bad_walk_limits_are_refused_with_the_reason(capsys, option, value, why):
    with pytest.raises(SystemExit) as ei:
        main.parse_args([option, value])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: {why}\n" in err, err


def test_the_walk_itself_refuses_limits_it_cannot_work_with():
    """What reaches the walk without the command line (a Settings built in
    code) is checked too: both walks need an fd and a depth that is not
    negative."""
    with pytest.raises(ValueError, match="max_held_fds >= 1"):
        Settings(max_held_fds=0).walk_limits
    with pytest.raises(ValueError, match="max_depth >= 0"):
        walk.Limits(max_depth=-1)


# -- the settings reach the walk ---------------------------------------------------------

def test_max_depth_reaches_the_walk(mode, anchor):
    """A chain 5 levels deep: with --max-depth 3 the directory at level 4 is
    not entered, named with the too-deep reason, left in place with its
    ancestors (the files beside them go); without the option it all goes."""
    for engine, limited in ((engine_of(mode, "--max-depth", "3"), True), (engine_of(mode), False)):
        t = anchor / "t"
        make_chain(t, 5, leaf="leaf", create_base=True)
        write(t / "top")
        write(t / "d" / "d" / "beside")
        if limited:
            with pytest.raises(Failed) as ei:
                cleanup(engine, t)
            assert f"{t}/d/d/d/d: deeper than 3 levels; left in place" in ei.value.message
            assert ei.value.removed == 2  # top and beside
            assert os.listdir(t / "d" / "d" / "d") == ["d"]
            assert os.listdir(t / "d" / "d" / "d" / "d" / "d") == ["leaf"]
            rm_rf(t)
        else:
            assert cleanup(engine, t) == 1 + 5 + 3  # t, the chain, leaf, top, beside
            assert not os.path.lexists(t)


def room_for(n):
    """The RLIMIT_NOFILE that leaves exactly ``n`` fd numbers free (new
    fds take the lowest free number; those open above it stay usable)."""
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    free = [fd for fd in range(len(used) + n) if fd not in used]
    return free[n - 1] + 1


def test_max_held_fds_reaches_the_walk(mode, anchor):
    """With room for only 20 more fds than are open (RLIMIT_NOFILE), a
    200-deep chain is removed with --max-held-fds 4 (the walk closes and
    reopens its fds as it goes) and not with the default 48 (it runs out of
    fds, EMFILE, and says so)."""
    depth = 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    outcomes = {}
    for held in ("4", None):
        engine = engine_of(mode, "--walk-threads", "1", *(("--max-held-fds", held) if held else ()))
        t = anchor / "t"
        make_chain(t, depth, leaf="leaf", create_base=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (room_for(20), hard))
        try:
            outcomes[held] = cleanup(engine, t)
        except Failed as e:
            outcomes[held] = e
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        rm_rf(t)
    assert outcomes["4"] == depth + 2
    assert isinstance(outcomes[None], Failed), outcomes[None]
    assert os.strerror(errno.EMFILE) in outcomes[None].message


def _max_open_files(pid):
    """(soft, hard) of RLIMIT_NOFILE of the process ``pid``, from /proc."""
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files in /proc/<pid>/limits")


def test_the_service_raises_its_descriptor_limit_to_the_hard_one(bus):
    """Started with systemd's 1024-like soft limit (here 256), the service
    may hold as many descriptors as its hard limit allows: five deletions of
    four walk threads at the default 48 held fds would take 960 (fdlimit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with Mechanism(bus) as mech:
            assert _max_open_files(mech.proc.pid) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_limit_that_cannot_be_raised_is_logged_and_kept(monkeypatch, caplog):
    def refuse(*_):
        raise ValueError("not allowed")
    monkeypatch.setattr(fdlimit.resource, "getrlimit", lambda _: (256, 4096))
    monkeypatch.setattr(fdlimit.resource, "setrlimit", refuse)
    assert fdlimit.raise_to_hard() == (256, 256)
    assert "could not raise the descriptor limit from 256 to 4096: not allowed" in caplog.text
