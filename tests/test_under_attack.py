"""One user attacks in every way at once; another user is still served, and
the root daemon's memory stays bounded (threat model V8, V10-V13).

The scenario is ``harness.attack``: interactive checks never answered
(item 1), 8 MB paths (item 2), two wide directories and a chain past the
depth limit (item 3), and a caller killed 0.4 s into its delete (item 7),
all from one user, while a second user makes small calls.  Asserted: each
small call is answered without error within 5 s; the wide directories are
gone; the chain is refused past 65,536 levels; the killed caller's walk
stopped; the mechanism's peak resident size stays within idle + 64 MiB,
and ten seconds after the work within idle + 5 MiB.

The second bound rests on glibc's malloc (mechanism/memory.py): under
pymalloc this scenario left idle + 5.7 to 13 MiB (7 runs), under malloc
idle + 2.5 to 3.7 MiB (7 runs).  The benchmark's ``attack`` section reports
both figures at the issue's sizes (docs/performance.md).
"""

import os
from pathlib import Path

import pytest

from harness import IS_ROOT, trees
from harness.attack import Attack
from harness.buses import PolkitMock, PrivateBus
from harness.mechanism import Mechanism
from harness.users import OTHER_USER, ClientRunner

TEMPLATES = Path(__file__).resolve().parent / "templates"
PEAK_BOUND_KIB = 64 * 1024
AFTER_BOUND_KIB = 5 * 1024

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs uid 0: two users, a tmpfs, killing a client")


def test_everything_at_once_from_one_user(clients):
    victims = ClientRunner(OTHER_USER)
    top = trees.world_tmpdir("locald-admin-attack-")
    try:
        with trees.mounted_tmpfs(top / "fs", "size=8g,nr_inodes=8m,mode=755") as fs, PrivateBus() as bus, \
                PolkitMock(bus, str(TEMPLATES / "polkitd_silent_agent.py")), Mechanism(bus) as mech:
            attack = Attack(bus, mech, clients, victims, fs, wide=int(os.environ.get("ATTACK_WIDE", 300_000)))
            out = attack.run()
            for r, took in out.victim:
                assert r["ok"] and took < 5.0, (r, took)
            assert out.walks["wide0"]["ok"] and out.walks["wide1"]["ok"], out.walks
            deep = out.walks["deep"]
            assert deep["type"] == "CleanupFailedError" and "65536" in deep["message"], deep
            assert not (attack.mine / "wide0").exists() and not (attack.mine / "wide1").exists()
            # Its caller left: the walk stopped; the rest is there for the next call.
            assert [f["result"] for f in out.records if f["path"] == str(attack.mine / "wide2")] == ["cancelled"]
            assert out.wide_left > 0
            assert "Traceback" not in out.log
            assert out.peak_kib - out.idle_kib <= PEAK_BOUND_KIB, (out.idle_kib, out.peak_kib)
            assert out.after_kib - out.idle_kib <= AFTER_BOUND_KIB, (out.idle_kib, out.after_kib)
    finally:
        victims.close()
        trees.rm_rf(top)
