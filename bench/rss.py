"""Section 5, idle memory: the mechanism's RSS after a few calls and 1 s idle."""

import time

from .context import log
from .load import load_clients, quit_clients, run_load
from .sampling import proc_status


def run(ctx, label, pid, address=None, calls=10):
    if address is not None:
        procs, readers = load_clients(ctx, address, 1, str(ctx.small_anchor / "rss"))
        try:
            run_load(procs, readers, "cleanup", calls, 0, {})
        finally:
            quit_clients(procs)
    time.sleep(1.0)
    st = proc_status(pid)
    out = {"VmRSS_kB": st.get("VmRSS"), "VmHWM_kB": st.get("VmHWM"), "RssAnon_kB": st.get("RssAnon"),
           "RssFile_kB": st.get("RssFile"), "Threads": st.get("Threads"),
           "VmRSS_MB": st["VmRSS"] / 1024 if "VmRSS" in st else None}
    ctx.results.setdefault("rss", {})[label] = out
    log(f"  RSS [{label}]: {out['VmRSS_MB']:.1f} MB (peak {st.get('VmHWM', 0) / 1024:.1f} MB, "
        f"{st.get('Threads')} threads)")
    ctx.flush()
    return out
