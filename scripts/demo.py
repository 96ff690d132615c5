"""locald-admin demo: the problem and the fix, on a private bus.

1. A private system bus (nothing installed system-wide), python-dbusmock's
   polkitd mock allowing org.locald.admin1.cleanup, and the real mechanism as
   root on that bus.
2. A project owned by the unprivileged user 'nobody' whose .locald holds
   what runc leaves: root-owned 0700 directories and a mode 000 file.
3. As 'nobody': shutil.rmtree fails with PermissionError (os error 13); then
   locald_admin.client.force_remove_dir_all removes it by delegating to the
   mechanism.  The leftover is gone.
"""

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test harness, harness/

USER = "nobody"

def step(text):
    print(f"==> {text}", flush=True)


def main():
    if os.geteuid() != 0:
        print("demo: needs root to set up root-owned leftovers and start the mechanism as root; "
              "run: sudo scripts/demo", file=sys.stderr)
        return 1
    from harness.buses import PolkitMock, PrivateBus
    from harness.mechanism import Mechanism
    from harness.trees import make_anchor, make_runc_leftovers, rm_rf, world_tmpdir
    from harness.users import ClientRunner

    bus = polkit = mech = clients = None
    top = world_tmpdir("locald-admin-demo-")
    try:
        step("starting a private system bus, the polkit mock and locald-admin-mechanism (as root)")
        bus = PrivateBus()
        polkit = PolkitMock(bus)
        polkit.allow(True)
        mech = Mechanism(bus)
        print(f"  bus: {bus.address}")

        clients = ClientRunner(user=USER)
        anchor = top / "project" / ".locald"
        step(f"creating {anchor} owned by {USER}, with root-owned leftovers as runc leaves them")
        make_anchor(top, clients.uid, clients.gid, name="project")
        shm = make_runc_leftovers(anchor, svc="web", secret="lock").parent
        print(subprocess.run(["ls", "-ld", str(anchor), str(shm)], capture_output=True, text=True).stdout, end="")

        target = anchor / "web"
        step(f"as {USER}: removing {target}")
        cp = clients.run_program("demo_client.py", str(target), bus_address=bus.address)
        print(cp.stdout.decode(), end="")
        if cp.returncode != 0:
            print(cp.stderr.decode(), file=sys.stderr)
            return 1
        audit = [ln for ln in mech.audit_lines()]
        print(f"  mechanism: {audit[-1] if audit else '(no audit line)'}")
        if target.exists():
            print(f"demo: FAILED, {target} still exists", file=sys.stderr)
            return 1
        step(f"{target} is gone; {anchor} is still there. Demo OK.")
        return 0
    finally:
        for part in (mech, polkit, bus):
            if part is not None:
                part.stop()
        if clients is not None:
            clients.close()
        rm_rf(top)


if __name__ == "__main__":
    sys.exit(main())
