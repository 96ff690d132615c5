"""What the sections share: the options, the results, the undo steps of the
run, the client code staged for the unprivileged user and its processes
(``ClientSide``: one per tree under test, see bench/baseline.py), the small
anchor, and the log."""

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from harness import trees
from harness.users import ClientRunner

from .mounts import mount_tmpfs, unmount
from .procs import Reaper


# Sections run only when asked for: installed (--installed, or named in
# --only) boots a machine; baseline needs --baseline REV.
EXPLICIT = ("installed", "baseline")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class ClientSide:
    """Client code staged for the unprivileged user (a ClientRunner) and
    the bench client program in it; starts clients whose stderr goes to the
    log directory.  ``spawn_client`` and ``client_stderr`` are all that the
    load protocol's helpers (bench/load.py, bench/inuse.py's Clients) use of
    the context, so a ClientSide can stand in for it."""

    started = 0  # clients started by every side (their log files' numbers)

    def __init__(self, runner, logdir, label=""):
        self.runner = runner
        self.logdir = logdir
        self.label = label
        self.client_script = runner.program("bench_client.py")

    @classmethod
    def stage(cls, ctx, what, label="", **runner_kw):
        """Stage client code (``runner_kw``: ClientRunner's site/programs),
        precompiled and world-readable, removed at the end of the run."""
        runner = ClientRunner(**runner_kw)
        ctx.cleanup_cb(f"remove {what}", runner.close)
        if runner.stage is not None:
            # Precompile, as an installed package would be: the 32 clients would
            # otherwise each compile the package's modules from source at start-up.
            subprocess.run([runner.python, "-m", "compileall", "-q", str(runner.stage)], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["chmod", "-R", "a+rX", str(runner.stage)], check=True)
        return cls(runner, ctx.logdir, label)

    def spawn_client(self, argv, address, stdin=False):
        ClientSide.started += 1
        errpath = self.logdir / f"{self.label + '-' if self.label else ''}client-{ClientSide.started}.stderr"
        with open(errpath, "wb") as err:
            p = self.runner.popen([self.client_script, *argv], address,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=err)
        p.errpath = errpath
        return Reaper.add(p)

    @staticmethod
    def client_stderr(p):
        try:
            return p.errpath.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class Context:
    def __init__(self, args, stack):
        self.args = args
        self.stack = stack
        self.results = {"errors": []}
        self.runner = None
        self.client_script = None
        self.clients = None  # the ClientSide of this checkout's client code
        self.logdir = None
        self.mech = None
        self.delete_watch = {}  # the processes a Cleanup run uses besides its client

    # -- undo steps -----------------------------------------------------------
    def cleanup_cb(self, what, fn, *a, **kw):
        """Register an undo step, run at the end unless run earlier through
        the returned function; failures are logged, never stop the others."""
        done = []

        def run():
            if done:
                return
            done.append(True)
            try:
                fn(*a, **kw)
            except Exception as e:
                log(f"cleanup: {what} failed: {type(e).__name__}: {e}")
                self.results["errors"].append(f"cleanup {what}: {e}")

        self.stack.callback(run)
        return run

    def enter(self, what, cm):
        """Enter the context manager ``cm``; its exit is an undo step."""
        value = cm.__enter__()
        self.cleanup_cb(what, cm.__exit__, None, None, None)
        return value

    def tmpfs(self, what, options):
        """A tmpfs mounted for the run on a new directory in /tmp; returns
        (its path, the undo step that unmounts it)."""
        top = mount_tmpfs(what, options)
        self.cleanup_cb(f"remove {what} mount point", os.rmdir, top)
        return top, self.cleanup_cb(f"unmount {what} tmpfs", unmount, top)

    # -- the staged client ----------------------------------------------------
    def setup_common(self):
        self.logdir = Path(tempfile.mkdtemp(prefix="locald-bench-logs-", dir="/tmp"))
        self.cleanup_cb("remove logs", trees.rm_rf, self.logdir)
        log("staging the client code for the unprivileged user locald-test")
        self.clients = ClientSide.stage(self, "client stage")
        self.runner = self.clients.runner
        self.client_script = self.clients.client_script
        # An anchor owned by the test user for the small calls (missing targets).
        self.small_top = trees.world_tmpdir("locald-bench-small-")
        self.cleanup_cb("remove small anchor", trees.rm_rf, self.small_top)
        self.small_anchor = trees.make_anchor(self.small_top, self.runner.uid, self.runner.gid)

    def spawn_client(self, argv, address, stdin=False):
        return self.clients.spawn_client(argv, address, stdin)

    def client_stderr(self, p):
        return self.clients.client_stderr(p)

    # -- the results ------------------------------------------------------------
    def want(self, section):
        if section == "baseline":
            return self.args.baseline is not None
        if section in EXPLICIT:
            return (section == "installed" and self.args.installed) or section in (self.args.only or ())
        return self.args.only is None or section in self.args.only

    def note_error(self, what, e):
        log(f"{what}: FAILED: {type(e).__name__}: {e}")
        self.results["errors"].append(f"{what}: {type(e).__name__}: {e}")
        self.results.setdefault("tracebacks", []).append(traceback.format_exc())

    def flush(self):
        """Write what we have so far (a crash later still leaves numbers)."""
        tmp = Path(str(self.args.out) + ".partial")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
