"""``locald-admin-mechanism``: run the service on the system bus."""

import argparse
import asyncio
import logging
import signal
import sys

from locald_admin import __version__
from locald_admin import interface as i
from locald_admin.busio import BusError, Connection
from . import config as configuration
from . import fdlimit, journal, memory
from .audit import Recorder
from .service import CleanupService
from .settings import Settings

log = logging.getLogger("locald_admin.mechanism")

# After the bus connection is lost, how long a stop signal may take to
# arrive for the loss to count as part of being stopped (seconds).
STOP_GRACE = 1.0


def _nonneg(text):
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _positive(text):
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _at_least_one(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _whole_number_from(low, high):
    """An option's type: a whole number from ``low`` to ``high``."""
    def whole_number(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {v}")
        return v
    return whole_number


# --max-held-fds: the walk keeps the current directory's fd whatever the
# bound, so 1 is enough to walk any tree (fewer held: more reopening through
# ".."; the race tests run with 1).  Every walk thread of every deletion
# holds that many: 256 keeps one to a quarter of the 1024 fds a systemd
# service gets (the default soft RLIMIT_NOFILE, which fdlimit raises to the
# hard limit at start), so that a deep chain cannot take the descriptors the
# bus connection and the other walks need (V1).
HELD_FDS_RANGE = (1, 256)
# --max-depth: at least the target's own subdirectories; at most 2**20
# levels, since a walk keeps some state per level (V13: a chain a million
# levels deep is left at the limit, not followed with its memory).
DEPTH_RANGE = (1, 1 << 20)


D = Settings()  # the defaults, shown in --help


def parser():
    p = argparse.ArgumentParser(
        prog="locald-admin-mechanism",
        description=f"Serve {i.BUS_NAME} on the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--idle-timeout", type=_nonneg, default=D.idle_timeout, metavar="SECONDS",
                   help="exit after this many seconds without a call in flight (0: never; default 0)")
    p.add_argument("--log-level", default=D.log_level, choices=["debug", "info", "warning", "error"],
                   metavar="LEVEL",
                   help=f"what is logged: debug, info, warning or error (default {D.log_level}); "
                        "audit records are always written")
    p.add_argument("--address", default=D.address, help="bus address to use instead of the system bus")
    p.add_argument("--workers", type=_at_least_one, default=D.workers, metavar="N",
                   help=f"deletions running at once (default {D.workers}; one running longer than "
                        "--long-job-after stops counting)")
    p.add_argument("--per-uid", type=_at_least_one, default=D.per_uid, metavar="N",
                   help=f"deletions of one caller running at once (default {D.per_uid})")
    p.add_argument("--long-job-after", type=_positive, default=D.long_job_after, metavar="SECONDS",
                   help=f"a deletion running this long stops counting against --workers "
                        f"(default {D.long_job_after:g})")
    p.add_argument("--walk-threads", type=_at_least_one, default=D.walk_threads, metavar="N",
                   help=f"threads removing one tree at once with the compiled walk: they take the "
                        f"subdirectories of its first level with two or more (default {D.walk_threads}: "
                        "one per core, at most 4; the Python walk uses one)")
    p.add_argument("--max-held-fds", type=_whole_number_from(*HELD_FDS_RANGE), default=D.max_held_fds,
                   metavar="N",
                   help=f"directory fds one walk thread keeps open, whatever the depth: beyond that the "
                        f"oldest are closed, and reopened through '..' (identity checked) on the way back "
                        f"(default {D.max_held_fds}; {HELD_FDS_RANGE[0]} to {HELD_FDS_RANGE[1]})")
    p.add_argument("--max-depth", type=_whole_number_from(*DEPTH_RANGE), default=D.max_depth, metavar="N",
                   help=f"levels below the target a removal enters; a directory deeper is left in place and "
                        f"named in the error (default {D.max_depth}; {DEPTH_RANGE[0]} to {DEPTH_RANGE[1]})")
    p.add_argument("--polkit-timeout", type=_nonneg, default=D.polkit_timeout, metavar="SECONDS",
                   help=f"give up on polkit after this long for non-interactive calls "
                        f"(default {D.polkit_timeout:g})")
    p.add_argument("--polkit-interactive-timeout", type=_nonneg, default=D.polkit_interactive_timeout,
                   metavar="SECONDS", help="the same for calls that allow interactive authorization "
                                           f"(default {D.polkit_interactive_timeout:g})")
    p.add_argument("--progress-interval", type=_positive, default=D.progress_interval, metavar="SECONDS",
                   help=f"seconds between Progress signals to a caller (default {D.progress_interval:g})")
    p.add_argument("--config", dest="config_path", default=D.config_path, metavar="FILE",
                   help=f"administrator's configuration (default {D.config_path}; "
                        "missing: built-in defaults; re-read on SIGHUP)")
    p.add_argument("--journal-socket", default=D.journal_socket, metavar="PATH",
                   help="the journal's native socket, used when stderr is the journal "
                        f"(JOURNAL_STREAM; default {D.journal_socket})")
    p.add_argument("--no-openat2", dest="openat2", action="store_false",
                   help="use the O_NOFOLLOW + mount-id fallback even where openat2 exists (testing); "
                        "implies the Python walk")
    p.add_argument("--python-walk", action="store_true",
                   help="remove with the Python (reference) walk even where the compiled walk is built")
    return p


def parse_args(argv=None):
    """The command line as Settings."""
    return Settings(**vars(parser().parse_args(argv)))


def load_config(path):
    """The configuration, or the ConfigError to fail closed with."""
    try:
        cfg = configuration.load(path)
        log.info("configuration: %s", cfg.source)
        return cfg
    except configuration.ConfigError as e:
        log.error("configuration is malformed, every call will fail until it is fixed: %s", e)
        return e


def reload_config(service, path):
    """SIGHUP: take a good new configuration; keep the old one otherwise."""
    try:
        service.config = configuration.load(path)
        log.info("configuration reloaded: %s", service.config.source)
    except configuration.ConfigError as e:
        log.error("configuration not reloaded, the previous one stays in force: %s", e)


async def serve(settings, sink=None):
    """Serve until stopped; ``sink``: the journal.Journal records and log
    messages go to (None: stderr)."""
    try:
        bus = await Connection.open(settings.address)
    except BusError as e:
        log.error("cannot connect to the bus: %s", e)
        return 1
    service = CleanupService(bus, settings, load_config(settings.config_path), Recorder(sink))
    try:
        await service.start()
    except BusError as e:
        log.error("%s", e)
        return 1
    # Signal handlers before the name: whoever sees the name may signal us
    # (systemctl reload right after activation), and SIGHUP's default action
    # would kill the service.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config, service, settings.config_path)
    try:
        await bus.own_name(i.BUS_NAME)
    except BusError as e:
        log.error("cannot own %s: %s", i.BUS_NAME, e)
        return 1
    log.info("serving %s as %s (openat2: %s, compiled walk: %s)", i.BUS_NAME, bus.unique_name,
             service.engine.fs.openat2, service.engine.fs.compiled)

    waiters = {
        loop.create_task(bus.wait_closed()): "disconnected",
        loop.create_task(stop.wait()): "signal",
    }
    if settings.idle_timeout > 0:
        waiters[loop.create_task(service.wait_idle(settings.idle_timeout))] = "idle"
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    why = waiters[next(iter(done))]
    for t in pending:
        t.cancel()
    if why == "disconnected":
        # At shutdown the bus may go at the same moment as our own stop (or
        # just before it): a stop signal within STOP_GRACE means we were being
        # stopped, which is no failure.  Otherwise never hang on a dead
        # connection: exit non-zero so that bus activation or systemd starts
        # a fresh instance.
        try:
            await asyncio.wait_for(stop.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            log.error("lost the bus connection; exiting")
            return 1
        why = "signal"
    if not bus.connected:
        # Being stopped and the bus is gone too: the calls in flight finish
        # (their replies cannot be sent), one line says so.
        await service.drain()
        log.info("%s: stopping; the bus is gone (%d replies could not be sent)", why, service.unsent)
        return 0
    # Release the name first so that new calls go to a new instance, then
    # answer every call that was already queued to us, then exit.  Calls that
    # reached us before the release are read before its reply arrives.
    log.info("%s: releasing %s", why, i.BUS_NAME)
    try:
        await bus.release_name(i.BUS_NAME)
    except BusError:
        pass  # the bus went away meanwhile; drain() still lets the calls finish
    await service.drain()
    bus.close()
    return 0


def main(argv=None):
    settings = parse_args(argv)
    memory.one_arena()  # before any thread exists
    # Under systemd (stderr is the journal): structured entries through the
    # journal's socket, each at its own priority; otherwise text on stderr.
    sink = journal.Journal(settings.journal_socket) if journal.stderr_is_journal() else None
    if sink is not None:
        handler = journal.JournalHandler(sink)
        logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], format="%(message)s")
    else:
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="locald-admin-mechanism: %(levelname)s: %(message)s")
    fdlimit.raise_to_hard()  # every walk thread holds up to --max-held-fds
    try:
        return asyncio.run(serve(settings, sink))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
