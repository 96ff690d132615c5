"""Every attack of one hostile user at once, while another user is served:
the scenario of tests/test_under_attack.py and of the benchmark's ``attack``
section (threat model V8, V10-V13).

``Attack(bus, mech, attacker, victim, top, wide=..., deep=...)`` builds the
trees in ``top`` (a tmpfs: a directory's size shrinks with its entries there,
which shows a walk has started without listing it) and ``run()`` does, at
the same time, as the attacker:

1. 100 interactive calls whose authentication is never answered (the polkit
   mock ``tests/templates/polkitd_silent_agent.py`` must be running);
2. four connections sending calls with 8 MB paths;
3. deletes of two directories of ``wide`` entries with 200-byte names and of
   a chain ``deep`` levels deep;
7. a delete of a third such directory whose caller is killed 0.4 s after its
   walk started;

while the victim makes ``small`` small calls one after another.  The
mechanism's resident size is sampled every 10 ms.  The result says how each
part ended, the victim's latencies, and the memory figures (idle before,
peak, 10 s after the work ended).
"""

import contextlib
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from . import trees
from .waiting import poll_until

BIG_PATH = 8_000_000


def rss_kib(pid, field="VmRSS"):
    """``field`` of /proc/<pid>/status in KiB (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


class Sampler(threading.Thread):
    """The peak VmRSS of ``pid``, sampled every ``interval`` s until stopped."""

    def __init__(self, pid, interval=0.01):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        return self.peak


@dataclass
class Outcome:
    idle_kib: int = 0
    peak_kib: int = 0
    after_kib: int = 0  # AFTER_IDLE seconds after the last record
    victim: List[tuple] = field(default_factory=list)  # (report, seconds) per small call under attack
    victim_quiet: List[float] = field(default_factory=list)  # seconds per small call before the attack
    walks: dict = field(default_factory=dict)  # name -> the client's report
    records: List[dict] = field(default_factory=list)
    log: str = ""
    wide_left: int = 0  # size of the killed caller's directory afterwards (tmpfs: bytes of entries)


class Attack:
    AFTER_IDLE = 10.0

    def __init__(self, bus, mech, attacker, victim, top, wide=300_000, deep=70_000, small=10):
        self.bus, self.mech, self.attacker, self.victim = bus, mech, attacker, victim
        self.wide, self.deep, self.small = wide, deep, small
        self.mine = trees.make_anchor(top, attacker.uid, attacker.gid, name="attacker")
        self.theirs = trees.make_anchor(top, victim.uid, victim.gid, name="victim")
        for k in range(3):
            trees.make_wide(self.mine / f"wide{k}", wide)
        trees.make_chain(self.mine / "deep", deep, create_base=True)
        self.expected_records = 100 + 20 + 3 + 1 + 2 * small

    def _program(self, name, cfg):
        return self.attacker.popen([self.attacker.program(name), json.dumps(cfg)], self.bus.address,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def _api(self, runner, path):
        return runner.popen([runner.probe, "request", str(path), json.dumps({"timeout": 600})], self.bus.address,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self):
        out = Outcome()
        mech, mine = self.mech, self.mine
        for k in range(self.small):  # the same small calls, before the attack: for comparison
            (self.theirs / f"q{k}").mkdir()
            t0 = time.monotonic()
            self.victim.api("request", str(self.theirs / f"q{k}"), self.bus.address, timeout=60)
            out.victim_quiet.append(time.monotonic() - t0)
        time.sleep(1.0)
        out.idle_kib = rss_kib(mech.proc.pid)
        sampler = Sampler(mech.proc.pid)
        sampler.start()
        procs = []
        try:
            procs.append(self._program("flood.py", {"calls": 100, "connections": 2, "interactive": True,
                                                    "path": str(mine / "x")}))
            procs.append(self._program("flood.py", {"calls": 20, "connections": 4, "path": str(mine / "x"),
                                                    "pad_to": BIG_PATH}))
            killed = self._api(self.attacker, mine / "wide2")
            procs.append(killed)
            full = os.stat(mine / "wide2").st_size
            if not poll_until(lambda: os.stat(mine / "wide2").st_size < full, 120, 0.005):
                raise RuntimeError("the walk of wide2 never started")
            time.sleep(0.4)
            killed.kill()
            walks = {name: self._api(self.attacker, mine / name) for name in ("wide0", "wide1", "deep")}
            for k in range(self.small):
                (self.theirs / f"s{k}").mkdir()
                t0 = time.monotonic()
                r = self.victim.api("request", str(self.theirs / f"s{k}"), self.bus.address, timeout=60)
                out.victim.append((r, time.monotonic() - t0))
            for name, p in walks.items():
                out.walks[name] = json.loads(p.communicate(timeout=600)[0])
            for p in procs[:2]:  # the floods leave
                p.stdin.close()
                p.wait(60)
            if not poll_until(lambda: len(mech.audit_lines()) >= self.expected_records, 120, 0.1):
                raise RuntimeError(f"only {len(mech.audit_lines())} of {self.expected_records} records")
            time.sleep(self.AFTER_IDLE)
            out.after_kib = rss_kib(mech.proc.pid)
        finally:
            out.peak_kib = sampler.stop()
            for p in procs:
                with contextlib.suppress(Exception):
                    p.kill()
                    p.wait(10)
        out.records = mech.audits()
        out.log = mech.log()
        out.wide_left = os.stat(mine / "wide2").st_size if os.path.lexists(mine / "wide2") else 0
        return out
