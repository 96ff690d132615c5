"""How many descriptors the service may hold: its soft RLIMIT_NOFILE raised
to its hard limit, once, at start.

systemd gives a service 1024 descriptors (the soft limit, for programs that
still use select(), whose fd_set ends at 1024) and allows 524288 (the hard
limit), for a program that needs more to raise its own (systemd.exec(5),
LimitNOFILE=).  This one needs more: every walk thread holds up to
--max-held-fds directories open (48 by default, 256 at most), a deletion
has up to --walk-threads of them, and a deletion running longer than
--long-job-after stops counting against --workers, so that five
deletions of four threads at 48 already hold 960 of the 1024.  The next
open of any kind would then fail with EMFILE: a Failed for whoever asked,
or a census that cannot read /proc.  Nothing here uses select() (asyncio
uses epoll), so the hard limit is safe to take.
"""

import logging
import resource

log = logging.getLogger(__name__)

# Where the hard limit is infinite (which the kernel allows for no
# RLIMIT_NOFILE but a test may pretend): systemd's own default hard limit.
FALLBACK = 524288


def raise_to_hard():
    """Raise the soft limit to the hard one; (soft before, soft after).  A
    limit that cannot be raised is logged and kept: the service still
    runs, with fewer descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, e)
            return soft, soft
        return soft, target
    return soft, soft
