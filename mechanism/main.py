"""``locald-admin-mechanism``: run the service on the system bus."""

import argparse
import asyncio
import logging
import signal
import sys

from .. import interface as i
from ..busio import BusError, Connection
from . import config as configuration
from ..fs import fsops
from . import engine
from .service import CleanupService

log = logging.getLogger("locald_admin.mechanism")


def _nonneg(text):
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="locald-admin-mechanism",
        description=f"Serve {i.BUS_NAME} on the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured).")
    p.add_argument("--idle-timeout", type=_nonneg, default=0, metavar="SECONDS",
                   help="exit after this many seconds without a call in flight (0: never; default 0)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log level on stderr (default info); audit lines are always written")
    p.add_argument("--address", help="bus address to use instead of the system bus")
    p.add_argument("--workers", type=int, default=4,
                   help="deletions running at once (default 4; one running longer than 5 s stops counting)")
    p.add_argument("--per-uid", type=int, default=2,
                   help="deletions of one caller running at once (default 2)")
    p.add_argument("--walk-threads", type=int, default=engine.WALK_THREADS,
                   help=f"threads removing one tree's subdirectories at once (default {engine.WALK_THREADS})")
    p.add_argument("--polkit-timeout", type=_nonneg, default=15.0, metavar="SECONDS",
                   help="give up on polkit after this long for non-interactive calls (default 15)")
    p.add_argument("--polkit-interactive-timeout", type=_nonneg, default=300.0, metavar="SECONDS",
                   help="the same for calls that allow interactive authorization (default 300)")
    p.add_argument("--config", default=configuration.DEFAULT_PATH, metavar="FILE",
                   help=f"administrator's configuration (default {configuration.DEFAULT_PATH}; "
                        "missing: built-in defaults; re-read on SIGHUP)")
    p.add_argument("--no-openat2", action="store_true",
                   help="use the O_NOFOLLOW + mount-id fallback even where openat2 exists (testing)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.per_uid < 1 or args.walk_threads < 1:
        p.error("--workers, --per-uid and --walk-threads must be at least 1")
    return args


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


async def serve(args):
    try:
        bus = await Connection.open(args.address)
    except BusError as e:
        log.error("cannot connect to the bus: %s", e)
        return 1
    service = CleanupService(bus, workers=args.workers, per_uid=args.per_uid,
                             polkit_timeout=args.polkit_timeout,
                             polkit_interactive_timeout=args.polkit_interactive_timeout,
                             config=load_config(args.config))
    service.install()
    try:
        await bus.own_name(i.BUS_NAME)
    except BusError as e:
        log.error("cannot own %s: %s", i.BUS_NAME, e)
        return 1
    log.info("serving %s as %s (openat2: %s)", i.BUS_NAME, bus.unique_name, fsops.openat2_available())

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config, service, args.config)
    waiters = {
        loop.create_task(bus.wait_closed()): "disconnected",
        loop.create_task(stop.wait()): "signal",
    }
    if args.idle_timeout > 0:
        waiters[loop.create_task(service.wait_idle(args.idle_timeout))] = "idle"
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    why = waiters[next(iter(done))]
    for t in pending:
        t.cancel()
    if why == "disconnected":
        # Never hang on a dead connection: exit non-zero so that bus
        # activation or systemd starts a fresh instance.
        log.error("lost the bus connection; exiting")
        return 1
    # Release the name first so that new calls go to a new instance, then
    # answer every call that was already queued to us, then exit.  Calls that
    # reached us before the release are read before its reply arrives.
    log.info("%s: releasing %s", why, i.BUS_NAME)
    try:
        await bus.release_name(i.BUS_NAME)
    except BusError as e:
        log.warning("could not release %s: %s", i.BUS_NAME, e)
    await service.drain()
    bus.close()
    return 0


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="locald-admin-mechanism: %(levelname)s: %(message)s")
    if args.no_openat2:
        fsops.set_openat2(False)
    engine.WALK_THREADS = args.walk_threads
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
