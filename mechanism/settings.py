"""The mechanism's settings: one frozen object, built once from the command
line (``main.parse_args``) and passed down to whatever needs a value.

No module holds a setting of its own; tests build a ``Settings`` with the
values they need instead of patching modules.  Options that exist mainly for
tests (``--no-openat2``, ``--python-walk``, ``--progress-interval``, ``--long-job-after``) are
documented in ``--help`` like the others.
"""

import os
from dataclasses import dataclass, field
from typing import Optional

from locald_admin.fs import walk
from locald_admin.interface import MAX_QUEUED_PER_UID

from .config import DEFAULT_PATH
from .journal import SOCKET as JOURNAL_SOCKET


@dataclass(frozen=True)
class Settings:
    address: Optional[str] = None  # bus address; None: the system bus
    idle_timeout: float = 0.0  # exit after this long without a call (0: never)
    log_level: str = "info"
    config_path: str = DEFAULT_PATH  # the administrator's configuration
    journal_socket: str = JOURNAL_SOCKET  # where records go when stderr is the journal (JOURNAL_STREAM)
    workers: int = 4  # deletions running at once
    per_uid: int = 2  # deletions of one caller running at once
    long_job_after: float = 5.0  # a job running this long stops counting against `workers`
    # Threads removing one tree with the C walk (split.remove_in_parallel):
    # about one per core, at most 4 (beyond that the directory locks of one
    # tree and the other deletions running at once gain little).
    walk_threads: int = field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 4)))
    # How far one walk may go (walk.Limits, given to every walk as
    # ``walk_limits``): fds held at once by each walk thread, and levels
    # entered below the target.
    max_held_fds: int = walk.DEFAULT_LIMITS.max_held_fds
    max_depth: int = walk.DEFAULT_LIMITS.max_depth
    polkit_timeout: float = 15.0
    polkit_interactive_timeout: float = 300.0
    polkit_checks_in_flight: int = 96  # below the bus' 128 pending replies per connection
    polkit_checks_per_uid: int = 12  # non-interactive checks of one uid in flight
    polkit_interactive_per_uid: int = 4  # checks of one uid that may show an authentication dialog
    max_queued_per_uid: int = MAX_QUEUED_PER_UID  # requests of one uid at once; past it, Busy
    progress_interval: float = 1.0  # seconds between Progress signals
    openat2: bool = True  # False: the fallback even where the kernel has openat2
    python_walk: bool = False  # True: the Python (reference) walk even where the C walk is built

    def polkit_timeout_for(self, interactive):
        return self.polkit_interactive_timeout if interactive else self.polkit_timeout

    @property
    def walk_limits(self):
        return walk.Limits(max_held_fds=self.max_held_fds, max_depth=self.max_depth)
