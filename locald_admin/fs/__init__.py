"""The fd-anchored file system code both sides run: the mechanism as root,
the client as the calling user for its own first attempt.

``fsops`` opens one component relative to a held directory fd (an ``Fs``:
``openat2`` or the fallback), ``mounts`` finds mounts at or below a held
directory, ``traverse`` is the safe traversal through held fds, ``walk`` the
removal done on it (its parts: ``report``, ``removal``, ``compiled``,
``split``; and ``count``, a listing that deletes nothing), ``owners`` the
rule for other users' directories, ``remove`` removes one entry of a held directory and refuses
mounts before deleting anything.  Nothing here knows about the bus, polkit
or anchors.
"""
