"""locald-admin benchmark (run through scripts/bench, as root: ``python -m bench``).

What it measures (docs/performance.md explains each figure):

1. Deletion, side by side in one run: ``Cleanup`` through the bus (the real
   mechanism as root on a private bus, the polkit mock allowing the action,
   called by the unprivileged user locald-test, timed inside the client from
   just before the call to the reply) vs ``rm -rf`` (timed around the
   subprocess) vs ``shutil.rmtree`` (timed inside its subprocess).  Methods
   alternate per round, each on a freshly built identical tree whose
   ``.locald`` anchor belongs to locald-test and whose contents are
   root-owned.  Trees: (a) 100k files in 1,000 dirs, (b) 1M files in 1,000
   dirs, (c) 100k files in one dir, (d) a 10,000-deep chain; on a tmpfs
   mounted for the run, and with --long on the disk (/var/tmp) as well.
2. Small-call latency: sequential Cleanup calls on a missing target over one
   AdminClient connection, with the polkit mock and with the real polkitd
   (the headless group rule installed for the run); Peer.Ping to the
   mechanism, a bus-driver call and a direct CheckAuthorization for reference.
3. Throughput: 32 client processes (own connections, locald-test) calling
   Cleanup through the mechanism with the real polkitd, vs the same 32
   clients calling polkit's CheckAuthorization directly; alternated.
4. Cold start: spawn the mechanism, time to its first Cleanup reply (the
   client polls for the name), median of 5; also the installed launcher.
5. Idle RSS of the mechanism after a few calls and 1 s idle.
6. Under attack (``harness.attack``): one user at once floods interactive
   checks never answered, 8 MB paths, deletes of two directories of 1,000,000
   entries with 200-byte names and of a 1,000,000-deep chain, and kills a
   caller 0.4 s into a third such delete, while a second user makes small
   calls: their latency against the same calls before the attack, and the
   mechanism's memory (idle, peak, 10 s after).
7. The in-use check (issue 21): the small realistic request (a root-owned
   leftover) with and without 2,000 extra idle processes and 20 extra mount
   namespaces, 32 clients against direct polkit with them, and 32 clients
   with and without another user's 20,000 sleeping processes; on a private
   bus with Debian's policy and the real polkitd.
8. The in-use check under the installed unit (``--installed``, or named in
   ``--only``; not run otherwise: it boots a machine): Debian 12 booted with
   systemd-nspawn, ``locald-shim admin cleanup`` of a small root-owned
   leftover per call, with and without 1,000 extra idle processes, and
   ``pkcheck`` of the same action beside it.
9. The A/B against another commit (``--baseline REV``; alone it runs only
   this, ``--only`` adds sections): REV's code and the working tree's (or
   ``--against REV2``'s), each staged as ``make install`` lays it out, in
   alternating rounds A B B A ... on a bus with the polkit mock and on one
   with the real polkitd, each round a fresh mechanism and client from that
   side's code: sequential Cleanup of small root-owned leftovers and of
   missing targets (client p50/p99, the mechanism's CPU per call), and the
   command line (``locald-shim --version`` and a cleanup of a missing path:
   wall time to exit, peak RSS); per figure the ratio working / baseline of
   the medians, "no worse" up to 1.05.

Everything it starts, mounts, installs or creates is undone in ``finally``.

The modules, one concern each:

  __main__    the command line: options, signals, the undo stack, the printed summary
  phases      the stacks the sections run on (polkit mock, real polkitd) and their order
  context     what the sections share: options, results, undo steps, the staged client, log
  load        the bench client's load protocol: start clients, one timed command to all, quit
  delete      section 1: Cleanup vs rm -rf vs shutil.rmtree on fresh trees
  latency     section 2: sequential small calls
  throughput  section 3: 32 clients, Cleanup vs direct polkit
  coldstart   section 4: spawn to first reply, the installed launcher, interpreter start-up
  rss         section 5: idle memory of the mechanism
  attack      section 6: another user's calls and the memory under attack
  inuse       section 7: the in-use check's cost with many processes and namespaces on the host
  installed   section 8: the in-use check under the installed unit, in a machine booted with systemd-nspawn
  baseline    section 9: the A/B against another commit, its rounds and its summary
  worktree    the commit a revision names, a detached git worktree of it and its removal
  staging     a tree's code laid out as make install does, built alike, and where each module comes from
  deps        a staged tree's runtime dependencies, beside its package
  cpuclock    other processes' CPU time to the nanosecond (for load.run_load's cpu_of), and the time
              their threads waited for a CPU (run_delay, load.run_load's waited)
  clitimes    the command line's wall time to exit and peak RSS
  report      the results table with the targets' verdicts
  targets     the targets and what makes a round quiet
  shapes      the trees deleted, and their parallel builder
  mounts      tmpfs mounts for a run, unmounting, the file system of a path
  sampling    CPU and memory readings from /proc
  stats       percentiles, summaries and how durations are written
  procs       child processes: the reaper, line reading with timeouts, stopping
  hostinfo    the machine the figures come from

The client (harness/programs/bench_client.py) runs as the unprivileged user
with Debian's python3; shutil.rmtree is timed by harness/programs/bench_rmtree.py.
scripts/bench_walk.py (the walks alone, no bus) uses shapes, mounts, sampling
and targets.
"""
