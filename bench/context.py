"""What the sections share: the options, the results, the undo steps of the
run, the client code staged for the unprivileged user and its processes,
the small anchor, and the log."""

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


EXPLICIT = ("installed",)  # sections run only when asked for (--installed, or named in --only): it boots a machine


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Context:
    def __init__(self, args, stack):
        self.args = args
        self.stack = stack
        self.results = {"errors": []}
        self.runner = None
        self.client_script = None
        self.logdir = None
        self.n_clients = 0
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
        self.runner = ClientRunner()
        self.cleanup_cb("remove client stage", self.runner.close)
        stage = Path(self.runner.stage)
        self.client_script = self.runner.program("bench_client.py")
        # Precompile, as an installed package would be: the 32 clients would
        # otherwise each compile the pure-Python modules (locald_admin, dbus-fast's
        # uncompiled parts) from source at start-up.
        subprocess.run([self.runner.python, "-m", "compileall", "-q", str(stage)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["chmod", "-R", "a+rX", str(stage)], check=True)
        # An anchor owned by the test user for the small calls (missing targets).
        self.small_top = trees.world_tmpdir("locald-bench-small-")
        self.cleanup_cb("remove small anchor", trees.rm_rf, self.small_top)
        self.small_anchor = trees.make_anchor(self.small_top, self.runner.uid, self.runner.gid)

    def spawn_client(self, argv, address, stdin=False):
        self.n_clients += 1
        errpath = self.logdir / f"client-{self.n_clients}.stderr"
        with open(errpath, "wb") as err:
            p = self.runner.popen([self.client_script, *argv], address,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=err)
        p.errpath = errpath
        return Reaper.add(p)

    def client_stderr(self, p):
        try:
            return p.errpath.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # -- the results ------------------------------------------------------------
    def want(self, section):
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
