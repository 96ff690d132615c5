"""The stacks the sections run on and their order: the A/B against another
commit (``--baseline``: a bus with the polkit mock, then one with the real
polkitd, a fresh mechanism per round from either tree), phase 1 (private
bus, polkit mock: latency, delete), phase 2 (Debian's bus policy and the
real polkitd: coldstart, rss, latency, throughput, cli), the in-use phase (its
own private bus, the real polkitd and a fresh mechanism: inuse), phase 3
(attack)."""

import os
import time

from harness import realsystem
from harness.buses import PolkitMock, PrivateBus
from harness.mechanism import Mechanism
from harness.users import TEST_USER

from . import attack, baseline, cli, coldstart, delete, installed, inuse, latency, rss, throughput
from .context import log
from .hostinfo import machine_info
from .procs import Reaper
from .sampling import NPROC, background_load
from .targets import TARGETS

SECTIONS = ("baseline", "delete", "latency", "throughput", "cli", "coldstart", "rss", "inuse", "installed", "attack")
BENCH_RULE_NAME = "50-locald-admin-bench.rules"
REAL_MECHANISM_ARGS = ("--polkit-timeout", "10")


def start_mechanism(ctx, bus, label, *args, site=None):
    """A fresh mechanism on ``bus`` (from the staged ``site`` if given, see
    harness.mechanism), undone by the context if the run stops early;
    returns (mechanism, stop)."""
    mech = Mechanism(bus, *args, site=site)
    Reaper.add(mech.proc)
    return mech, ctx.cleanup_cb(f"stop mechanism ({label})", mech.stop)


def with_mechanism(ctx, label, bus, watch, stop_bus, *args):
    """A fresh mechanism (``args``) on ``bus`` (a ``mock_bus`` or
    ``polkitd_bus``); returns (bus, mechanism, watch, stop), ``stop()``
    stopping the mechanism, then the bus."""
    mech, stop_mech = start_mechanism(ctx, bus, label, *args)
    watch = {"mechanism": mech.proc.pid, **watch}

    def stop():
        stop_mech()
        stop_bus()

    return bus, mech, watch, stop


def mock_bus(ctx, label):
    """A private permissive bus and the polkit mock allowing the action,
    each undone by the context if the run stops early; returns (bus, watch,
    stop), ``stop()`` undoing them now."""
    bus = PrivateBus()
    Reaper.add(bus.proc)
    stop_bus = ctx.cleanup_cb(f"stop {label} bus", bus.stop)
    mock = PolkitMock(bus)
    Reaper.add(mock.proc)
    stop_mock = ctx.cleanup_cb(f"stop {label} polkit mock", mock.stop)
    mock.allow()

    def stop():
        stop_mock()
        stop_bus()

    return bus, {"polkit_mock": mock.proc.pid, "dbus-daemon": bus.proc.pid}, stop


def mock_stack(ctx, label):
    """``mock_bus`` and a fresh mechanism on it; returns (bus, mechanism,
    watch, stop)."""
    return with_mechanism(ctx, label, *mock_bus(ctx, label))


def phase_mock(ctx):
    """Private permissive bus, polkit mock allowing the action, the mechanism."""
    log("phase 1: private bus + polkit mock + mechanism")
    bus, mech, watch, stop = mock_stack(ctx, "mock bus")
    ctx.mech = mech
    ctx.delete_watch = watch
    if ctx.want("latency"):
        log("latency with the polkit mock")
        latency.run(ctx, "mock", bus.address, watch, ctx.args.calls)
    if ctx.want("delete"):
        delete.run(ctx, bus.address)
    rss.run(ctx, "mock-bus mechanism after the phase", mech.proc.pid)
    ctx.mech = None
    stop()


def phase_inuse(ctx):
    """The in-use check's cost (issue 21) on a stack of its own: Debian's
    system-bus policy, the real polkitd and a fresh mechanism (the issue's
    "direct polkit" is the real one: the mock answers about five times as
    many checks per second as polkitd, which measures the mock), and a tmpfs
    for the leftovers."""
    log("in-use phase: private bus with the real system-bus policy + real polkitd + fresh mechanism")
    top, do_unmount = ctx.tmpfs("inuse", "size=1g,nr_inodes=2m,mode=755")
    bus, mech, watch, stop = real_stack(ctx, "in-use")
    ctx.group.ensure()
    inuse.run(ctx, bus.address, watch, top)
    rss.run(ctx, "in-use mechanism after the phase", mech.proc.pid)
    stop()
    do_unmount()


def polkit_setup(ctx):
    """The polkit action where polkitd reads actions (left alone if
    identical), the headless group rule and locald-test in its group, for
    the rest of the run; once per run.  Returns the group membership."""
    if getattr(ctx, "group", None) is not None:
        return ctx.group
    if not os.access(realsystem.POLKITD, os.X_OK):
        raise RuntimeError(f"{realsystem.POLKITD} is missing")
    why = realsystem.action_conflict()
    if why:
        raise RuntimeError(why)
    if realsystem.ACTION_DEST.exists():
        log(f"{realsystem.ACTION_DEST} already installed (identical); leaving it")
    ctx.enter("remove polkit action", realsystem.installed_action())
    ctx.enter("remove polkit rule", realsystem.installed_rule(BENCH_RULE_NAME))
    group = realsystem.GroupMembership(TEST_USER)
    ctx.cleanup_cb("restore group", group.restore)
    group.ensure()
    ctx.group = group
    return group


def polkitd_bus(ctx, label):
    """A private bus with Debian's system-bus policy and the real polkitd
    (``polkit_setup`` done), each undone by the context if the run stops
    early; returns (bus, watch, stop)."""
    polkit_setup(ctx)
    bus = realsystem.real_bus()
    Reaper.add(bus.proc)
    stop_bus = ctx.cleanup_cb(f"stop {label} bus", bus.stop)
    polkitd = realsystem.Polkitd(bus)
    Reaper.add(polkitd.proc)
    stop_polkitd = ctx.cleanup_cb(f"stop {label} polkitd", polkitd.stop)

    def stop():
        stop_polkitd()
        stop_bus()

    return bus, {"polkitd": polkitd.proc.pid, "dbus-daemon": bus.proc.pid}, stop


def real_stack(ctx, label, coldstart_first=False):
    """``polkitd_bus`` and a fresh mechanism on it; returns (bus, mechanism,
    watch, stop).  ``coldstart_first``: run the cold-start section on the
    bus before the mechanism starts."""
    bus, watch, stop_bus = polkitd_bus(ctx, label)
    if coldstart_first:
        coldstart.run(ctx, bus)
    return with_mechanism(ctx, label, bus, watch, stop_bus, *REAL_MECHANISM_ARGS)


def phase_baseline(ctx):
    """The A/B: both trees staged, then on a bus with the polkit mock and on
    one with the real polkitd, rounds alternating the trees, each round a
    fresh mechanism (and client) from its tree's code."""
    log(f"A/B against {ctx.args.baseline}: staging both trees")
    ab = baseline.prepare(ctx)
    for label, make_bus, args in (("mock", mock_bus, ()), ("real polkitd", polkitd_bus, REAL_MECHANISM_ARGS)):
        try:
            bus, watch, stop = make_bus(ctx, f"A/B {label}")
            if label == "real polkitd":
                ctx.group.ensure()

            def start(site, label=label, bus=bus, args=args):
                return start_mechanism(ctx, bus, f"A/B {label}", *args, site=site)

            baseline.rounds(ctx, label, bus.address, watch, start, ab, cli=label == "real polkitd")
            stop()
        except Exception as e:
            ctx.note_error(f"A/B ({label})", e)
    baseline.summarize(ctx)


def phase_real(ctx):
    """Debian's system-bus policy, the real polkitd, the group rule."""
    log("phase 2: private bus with the real system-bus policy + real polkitd + headless group rule")
    group = polkit_setup(ctx)
    bus, mech, watch, stop = real_stack(ctx, "real", coldstart_first=ctx.want("coldstart"))
    if ctx.want("rss"):
        log("idle RSS of a fresh mechanism after 10 calls and 1 s idle")
        rss.run(ctx, "fresh mechanism, 10 calls, 1 s idle", mech.proc.pid, bus.address, 10)
    if ctx.want("latency"):
        group.ensure()
        log("latency with the real polkitd")
        latency.run(ctx, "real polkitd", bus.address, watch, ctx.args.calls)
    if ctx.want("throughput"):
        group.ensure()
        throughput.run(ctx, bus.address, watch, ctx.args.duration, ctx.args.pairs)
    if ctx.want("cli"):
        group.ensure()
        log("the command line as locald runs it, with the real polkitd")
        cli.run(ctx, bus.address, watch)
    if ctx.want("rss"):
        rss.run(ctx, "real-bus mechanism after the phase", mech.proc.pid)
    stop()


def run(ctx):
    """Every wanted section, phase by phase; a failed phase is noted and the next one runs."""
    ctx.results["machine"] = machine_info()
    ctx.results["config"] = {"long": ctx.args.long, "rounds": ctx.args.rounds, "calls": ctx.args.calls,
                             "duration_s": ctx.args.duration, "pairs": ctx.args.pairs,
                             "only": sorted(ctx.args.only) if ctx.args.only else None,
                             "baseline": ctx.args.baseline, "against": ctx.args.against,
                             "clients": throughput.CLIENTS, "targets": TARGETS}
    t0 = time.monotonic()
    ctx.results["machine"]["background_busy_cores_start"] = background_load()
    log(f"background load: {ctx.results['machine']['background_busy_cores_start']:.2f} of {NPROC} cores busy "
        "before we start")
    ctx.setup_common()
    if ctx.want("baseline"):
        try:
            phase_baseline(ctx)
        except Exception as e:
            ctx.note_error("A/B against the baseline", e)
    if ctx.want("latency") or ctx.want("delete"):
        try:
            phase_mock(ctx)
        except Exception as e:
            ctx.note_error("phase 1 (polkit mock)", e)
    if any(ctx.want(s) for s in ("latency", "throughput", "cli", "coldstart", "rss")):
        try:
            phase_real(ctx)
        except Exception as e:
            ctx.note_error("phase 2 (real polkitd)", e)
    if ctx.want("inuse"):
        try:
            phase_inuse(ctx)
        except Exception as e:
            ctx.note_error("in-use phase", e)
    if ctx.want("installed"):
        try:
            installed.run(ctx)
        except Exception as e:
            ctx.note_error("installed unit", e)
    if ctx.want("attack"):
        try:
            attack.run(ctx)
        except Exception as e:
            ctx.note_error("phase 3 (under attack)", e)
    ctx.results["machine"]["loadavg_end"] = os.getloadavg()
    ctx.results["machine"]["background_busy_cores_end"] = background_load()
    ctx.results["wall_seconds"] = time.monotonic() - t0
