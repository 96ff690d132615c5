"""locald-admin: a polkit-gated root mechanism that removes root-owned
leftovers below a user's ``.locald`` directory.

``locald_admin.interface`` is the contract both halves share;
``locald_admin.fs`` is the fd-anchored walk both halves run;
``locald_admin.mechanism`` is the root service; ``locald_admin.client`` is the
library and CLI that locald uses.
"""

# The release, in one place: pyproject.toml reads it (dynamic version), and
# --version and the mechanism's Version property show it.
__version__ = "0.3.0"
