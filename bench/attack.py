"""Section 6, under attack (harness.attack): another user's small calls and
the mechanism's memory while one user attacks, on its own private bus with
the silent-agent polkit mock, a fresh mechanism and a tmpfs."""

from harness import ROOT
from harness.attack import Attack
from harness.buses import PolkitMock, PrivateBus
from harness.mechanism import Mechanism
from harness.users import OTHER_USER, ClientRunner

from .context import log
from .stats import stats

ATTACK_WIDE = 1_000_000
ATTACK_DEEP = 1_000_000


def run(ctx):
    """Private bus, the silent-agent polkit mock, a fresh mechanism, a tmpfs."""
    log("phase 3: under attack (building 3 x 1,000,000 entries and a 1,000,000-deep chain)")
    top, do_unmount = ctx.tmpfs("attack", "size=12g,nr_inodes=8m,mode=755")
    victim = ClientRunner(OTHER_USER)
    ctx.cleanup_cb("remove victim stage", victim.close)
    bus = ctx.enter("attack bus", PrivateBus())
    ctx.enter("silent-agent polkit mock",
              PolkitMock(bus, str(ROOT / "tests" / "templates" / "polkitd_silent_agent.py")))
    mech = ctx.enter("attack mechanism", Mechanism(bus))
    attack = Attack(bus, mech, ctx.runner, victim, top, wide=ATTACK_WIDE, deep=ATTACK_DEEP)
    log("  attacking")
    out = attack.run()
    lat = [t for _, t in out.victim]
    res = {"idle_mib": out.idle_kib / 1024, "peak_mib": out.peak_kib / 1024, "after_mib": out.after_kib / 1024,
           "victim_ms": stats([t * 1000 for t in lat]),
           "victim_quiet_ms": stats([t * 1000 for t in out.victim_quiet]),
           "victim_errors": [r for r, _ in out.victim if not r["ok"]],
           "walks": out.walks, "killed_walk_stopped": out.wide_left > 0}
    ctx.results["attack"] = res
    log(f"  memory: idle {res['idle_mib']:.1f} MiB, peak {res['peak_mib']:.1f} MiB, "
        f"10 s after {res['after_mib']:.1f} MiB; victim p50 {res['victim_ms']['median']:.0f} ms "
        f"(quiet {res['victim_quiet_ms']['median']:.0f} ms)")
    ctx.flush()
    do_unmount()
