"""``locald-shim admin cleanup <absolute-path>``: ask the mechanism directly.

Exit codes (locald_admin.interface): 0 done or nothing there; 1 failed
(with --dry-run also: a cleanup would leave something in place);
2 usage; 3 not authorized; 4 invalid path (a relative path included: the
shim never resolves one against its working directory); 5 outside scope;
6 mount point; 7 no mechanism to ask; 8 in use (a running container); 9 busy
(the caller's queue at the mechanism stayed full); 10 invalid arguments;
11 the mechanism is too old for what was asked; 130 / 143 interrupted by
SIGINT / SIGTERM (the connection closes, so the mechanism stops the walk, and
a pkttyagent the shim started is stopped).  On failure one plain line on
stderr.

locald runs it for every delegated delete, so it starts with what one call
needs and no more: the blocking call (``blocking.cleanup``, no asyncio), the
request's rules (``request``), the error table; pkttyagent's helpers
(``subprocess``, ``shutil``) only when it is interactive.
"""

import signal
import sys

from locald_admin import __version__
from locald_admin import interface as i
from locald_admin.pathrules import display
from . import blocking
from .errors import CleanupError, InvalidPathError, MechanismUnavailable
from .request import absolute_path, seconds

PROG = "locald-shim"


def _parser():
    import argparse  # 5-6 ms of a start: only when the quick reading below does not do
    import textwrap

    p = argparse.ArgumentParser(prog=PROG, description="locald's privileged helper commands.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="group", required=True, metavar="admin")
    admin = sub.add_parser("admin", help="privileged operations through locald-admin")
    asub = admin.add_subparsers(dest="command", required=True, metavar="cleanup")
    c = asub.add_parser("cleanup", help="remove root-owned leftovers below a .locald directory",
                        description="Ask the locald-admin mechanism to remove PATH.",
                        epilog=_EPILOG + "\n".join(textwrap.fill(text, 79, initial_indent=f"  {code:>3}  ",
                                                                  subsequent_indent=" " * 7)
                                                    for code, text in i.exit_statuses()),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("path", metavar="ABSOLUTE-PATH",
                   help="the entry to remove: an absolute path at or below a .locald directory the caller owns")
    inter = c.add_mutually_exclusive_group()
    inter.add_argument("--interactive", dest="interactive", action="store_true", default=None,
                       help="allow polkit to ask for a password (default: when stdin is a terminal)")
    inter.add_argument("--no-interactive", dest="interactive", action="store_false",
                       help="never ask for a password")
    prog = c.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show entries removed during a long cleanup (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    c.add_argument("--timeout", type=float, default=i.DEFAULT_CALL_TIMEOUT, metavar="SECONDS",
                   help=f"give up after this long (default {i.DEFAULT_CALL_TIMEOUT:g})")
    c.add_argument("--dry-run", action="store_true",
                   help="check and walk PATH as a cleanup would, remove nothing, and say what it would remove "
                        "and what it would leave in place (exit 0 only if nothing would be left)")
    c.add_argument("--json", action="store_true",
                   help="print the result object (removed, existed, duration-usec; for a dry run would-remove "
                        "and refused) as JSON on standard output")
    return p


_EPILOG = """\
accepted paths: an absolute path at or below
  a directory named .locald that you own (root-made ones count when the
  directory holding it is yours and only you may write it), or
  below your own ~/.local/share/locald (your home from the password database),
within the roots the administrator allows in /etc/locald/admin.conf
(locald-admin.conf(5)).

exit status:
"""


class _Args:
    """What ``_parser().parse_args`` gives for a cleanup, read by ``_quick``."""

    def __init__(self, path, interactive, progress, timeout, dry_run, json):
        self.group, self.command = "admin", "cleanup"
        self.path, self.interactive, self.progress, self.timeout = path, interactive, progress, timeout
        self.dry_run, self.json = dry_run, json


_SWITCHES = {"--interactive": ("interactive", True), "--no-interactive": ("interactive", False),
             "--progress": ("progress", True), "--no-progress": ("progress", False),
             "--dry-run": ("dry_run", True), "--json": ("json", True)}


def _quick(argv):
    """The arguments of a cleanup as locald writes them (``admin cleanup``,
    then whole option names, ``--timeout`` with its value as the next
    argument, and one path that does not start with '-'), read without
    building the parser (argparse costs 5-6 ms of a 30 ms start); the same
    values as ``_parser().parse_args`` (``tests/test_shim.py`` holds the two
    together).  None for anything else: argparse reads it (help, errors,
    abbreviations, ``--timeout=N``, ``--``, a repeated option)."""
    if len(argv) < 3 or argv[0] != "admin" or argv[1] != "cleanup":
        return None
    values = {"path": None, "interactive": None, "progress": None, "timeout": None, "dry_run": None, "json": None}
    rest = iter(argv[2:])
    for arg in rest:
        if arg in _SWITCHES:
            name, value = _SWITCHES[arg]
            if values[name] is not None:
                return None
            values[name] = value
        elif arg == "--timeout":
            value = next(rest, None)
            if values["timeout"] is not None or value is None or value.startswith("-"):
                return None
            try:
                values["timeout"] = float(value)
            except ValueError:
                return None
        elif arg.startswith("-") or values["path"] is not None:
            return None
        else:
            values["path"] = arg
    if values["path"] is None:
        return None
    timeout = i.DEFAULT_CALL_TIMEOUT if values["timeout"] is None else values["timeout"]
    return _Args(values["path"], values["interactive"], values["progress"], timeout, bool(values["dry_run"]),
                 bool(values["json"]))


class _Terminated(SystemExit):
    """SIGTERM arrived.  A SystemExit, so that it ends the call wherever it
    lands (a wait for the bus, a pause before a retry) and nothing on the
    way takes it for an error of the call; the connection is closed on the
    way out."""


def _terminated(signum, frame):
    raise _Terminated()


def _fail(code, message):
    print(f"{PROG}: {' '.join(str(message).splitlines())}", file=sys.stderr)  # always one line
    return code


def _start_agent():
    """Start pkttyagent for this process, as systemctl does, so that polkit
    can ask for a password on this terminal.  Returns the process or None."""
    import os
    import shutil
    import subprocess

    agent = shutil.which("pkttyagent")
    if agent is None:
        return None
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([agent, "--process", str(os.getpid()), "--notify-fd", str(w), "--fallback"],
                                pass_fds=(w,), stdout=subprocess.DEVNULL)
    except OSError:
        os.close(r)
        os.close(w)
        return None
    os.close(w)
    try:
        os.read(r, 1)  # EOF once the agent has registered (or died)
    finally:
        os.close(r)
    return proc


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:  # as argparse's version action says it
        print(f"{PROG} {__version__}")
        return i.EXIT_OK
    args = _quick(argv) or _parser().parse_args(argv)
    try:
        seconds(args.timeout)
    except ValueError as e:
        return _fail(i.EXIT_USAGE, f"--{e}")
    if not args.path.startswith("/"):
        return _fail(i.EXIT_INVALID_PATH, f"path must be absolute: {display(args.path)}")
    try:
        absolute_path(args.path)  # the lexical rules, checked before the bus
    except InvalidPathError as e:
        return _fail(i.EXIT_INVALID_PATH, str(e))
    interactive = sys.stdin.isatty() if args.interactive is None else args.interactive
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    shown = []

    def on_progress(removed, elapsed):
        shown.append(removed)
        print(f"\r{PROG}: {removed} entries removed, {elapsed:.0f} s", end="", file=sys.stderr, flush=True)

    # The result is asked for only when someone reads it: locald (no
    # terminal, no --json) makes the plain Cleanup call it always made.
    summary = sys.stdout.isatty() and not args.json
    agent = None
    failure = None
    outcome = None
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        agent = _start_agent() if interactive else None
        outcome = blocking.cleanup(args.path, interactive=interactive, timeout=args.timeout,
                                   on_progress=on_progress if show_progress else None,
                                   with_result=args.json or summary, dry_run=args.dry_run)
    except CleanupError as e:
        failure = (e.exit_code, str(e))
    except MechanismUnavailable as e:
        failure = (i.EXIT_NO_SERVICE, f"locald-admin is not available ({e}); install it: apt install "
                                      "locald-admin, or make install from its source (see its README)")
    except KeyboardInterrupt:
        # The bus connection is closed on the way out: the mechanism sees
        # the caller leave and stops the walk (or drops the queued call).
        failure = (i.EXIT_SIGINT, "interrupted; locald-admin stops what it was doing for this call")
    except _Terminated:
        failure = (i.EXIT_SIGTERM, "terminated; locald-admin stops what it was doing for this call")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if agent is not None:
            agent.terminate()
            agent.wait()
    if shown:
        print(file=sys.stderr)  # end the progress line
    if failure:
        return _fail(*failure)
    if outcome is not None:
        if args.json:
            import json

            print(json.dumps(outcome.as_dict()))
        elif summary:
            print(_summary(display(args.path), outcome))
    if args.dry_run and outcome.left_behind:
        return i.EXIT_LEFT_BEHIND
    return i.EXIT_OK


def _summary(path, outcome):
    """The result in words, for a person at a terminal: one line, and for
    a dry run one more per entry it would leave in place."""
    if outcome.existed is False:
        return f"{path}: nothing there; nothing to remove"
    if outcome.dry_run:
        lines = [f"{path}: a cleanup would remove {outcome.would_remove:,} entries"
                 + (f" and leave {len(outcome.refused)}{'+' if len(outcome.refused) >= i.MAX_REFUSED else ''} "
                    "in place:" if outcome.refused else "; nothing would be left in place")]
        lines += [f"  {display(p)}: {display(why)}" for p, why in outcome.refused]
        return "\n".join(lines)
    if outcome.removed is None:  # an older mechanism: it says only that it succeeded
        return f"{path}: removed"
    return f"{path}: removed {outcome.removed:,} entries in {outcome.duration_usec / 1e6:.2f} s"


if __name__ == "__main__":
    sys.exit(main())
