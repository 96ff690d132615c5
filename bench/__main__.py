"""The command line (``python -m bench``, run through scripts/bench): the
options, signals, the undo stack around the run, the results file and the
printed summary."""

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from harness import ROOT

from . import phases, worktree
from .context import Context
from .hostinfo import machine_info
from .procs import Reaper
from .report import heading, table

DESCRIPTION = "locald-admin benchmark (run through scripts/bench, as root)."
EPILOG = """\
--baseline REV: an A/B of the small-call path against another commit, in the
same run.  REV's code (from a detached git worktree, removed again) and the
working tree's are each staged as `make install` lays them out; then, with the
polkit mock and with the real polkitd, rounds A B B A A B ... (A: REV), each
with a fresh mechanism and client from that side's code: sequential Cleanup
calls of small root-owned leftovers and of missing targets (client p50/p99,
the mechanism's CPU per call), and with the real polkitd `locald-shim
--version` and `locald-shim admin cleanup --no-interactive` of a missing path
(wall time to exit, peak RSS).  Per figure: each side's median, the ratio
working / baseline, and "no worse" when that ratio is at most 1.05 (see
docs/performance.md).  Alone it runs only the A/B; --only adds sections.
  scripts/bench --baseline HEAD~1                 # the working tree vs the commit before
  scripts/bench --baseline HEAD --against HEAD    # identical code: the noise
"""


def parser():
    p = argparse.ArgumentParser(prog="scripts/bench", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", action="store_true",
                   help="more rounds, tree (b) 3x, the disk (/var/tmp) too, longer latency and throughput runs "
                        "(up to ~20 min)")
    p.add_argument("--rounds", type=int, help="rounds per method for trees (a), (c), (d) (default 5; --long 9); "
                                              "with --baseline also the A/B's rounds per side (default 4; --long 8)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results.json",
                   help="JSON results (default bench-results.json in the repository, git-ignored)")
    p.add_argument("--only", help=f"comma-separated sections to run: {', '.join(phases.SECTIONS)} "
                                  "(installed only when named, or with --installed)")
    p.add_argument("--baseline", metavar="REV",
                   help="A/B of the small-call path and the command line against commit REV, alternating rounds "
                        "on the same stack (see below); alone, runs only that")
    p.add_argument("--against", metavar="REV",
                   help="with --baseline: compare with commit REV's code instead of the working tree's")
    p.add_argument("--installed", action="store_true",
                   help="also run section installed: the in-use check under the installed unit in a Debian 12 "
                        "booted with systemd-nspawn, per call with and without 1,000 extra processes (~2 min)")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.against is not None and args.baseline is None:
        p.error("--against needs --baseline")
    for opt in ("baseline", "against"):  # before anything is set up: an unknown REV stops here
        if getattr(args, opt) is not None:
            try:
                worktree.resolve(getattr(args, opt))
            except ValueError as e:
                p.error(f"--{opt}: {e}")
    if os.geteuid() != 0:
        print("bench: must run as root (tmpfs mount, real polkitd, installed polkit action and rule, clients "
              "as the user locald-test); try: sudo scripts/bench", file=sys.stderr)
        return 1
    args.ab_rounds = args.rounds if args.rounds is not None else (8 if args.long else 4)
    if args.rounds is None:
        args.rounds = 9 if args.long else 5
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.calls = 5000 if args.long else 1000
    args.duration = 15.0 if args.long else 5.0
    args.pairs = 3 if args.long else 2
    if args.only:
        args.only = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = args.only - set(phases.SECTIONS)
        if unknown:
            p.error(f"unknown sections: {', '.join(sorted(unknown))}")
        if "baseline" in args.only and args.baseline is None:
            p.error("section baseline needs --baseline REV")
    if args.baseline is not None:
        args.only = (args.only or set()) | {"baseline"}  # alone: only the A/B
    args.out = args.out.resolve()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    os.umask(0o022)

    interrupted = None
    with contextlib.ExitStack() as stack:
        stack.callback(Reaper.kill_all)  # runs last: anything a step left running
        ctx = Context(args, stack)
        try:
            phases.run(ctx)
        except BaseException as e:  # noqa: B036 -- undo everything, keep the numbers
            ctx.note_error("benchmark", e)
            if not isinstance(e, Exception):
                interrupted = e
        finally:
            ctx.results.setdefault("machine", machine_info())
    res = ctx.results
    lines = table(res)
    res["table"] = lines
    args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    with contextlib.suppress(OSError):
        Path(str(args.out) + ".partial").unlink()
    print()
    print(heading(res))
    print("\n".join(lines))
    if res["errors"]:
        print("\nerrors:")
        for e in res["errors"]:
            print(f"  {e}")
    print(f"\nresults: {args.out}")
    if isinstance(interrupted, SystemExit):
        return interrupted.code
    if interrupted is not None:
        return 130
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
