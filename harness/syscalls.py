"""Races and failures at chosen system calls, driven from outside the code
under test: seccomp user notification.

``supervised(fn, on_call)`` runs ``fn()`` in a forked child whose calls of
the chosen system calls (by default the ones a walk makes: ``getdents64``,
``openat``, ``openat2``, ``unlinkat``) each stop before they run and are
handed to ``on_call(call)`` here, in the parent, while the child waits.
``on_call`` may change the file system (the race happens exactly there, not
"sometime") and returns None to let the call run as it is, or an errno to
make it fail with that error without running.  ``fn``'s return value (or
exception) comes back pickled.

This is how the tests race the walk and make it fail at a chosen point
without a hook in the product: the C walk and the Python walk make the same
system calls, so one test drives both, every time the same way.

Seccomp filters cannot be removed, so the child is a fork that exits after
``fn``; it sets no_new_privs first, which lets an unprivileged test install
the filter too (seccomp(2)).  The parent reads the child's memory
(``Call.string``) and its fds (``Call.fd_stat``) through /proc, which it
may as the child's parent.
"""

import contextlib
import ctypes
import errno as errnos
import os
import pickle
import platform
import select
import signal
import socket
import struct
import time
import traceback

__all__ = ["Call", "supervised", "share", "available", "fds_at_listings"]

# Per architecture: the seccomp(2) and the intercepted calls' numbers, and
# the AUDIT_ARCH the filter checks (a call of another ABI runs unwatched).
_ARCHES = {
    "x86_64": dict(arch=0xC000003E, seccomp=317,
                   calls={"getdents64": 217, "openat": 257, "openat2": 437, "unlinkat": 263,
                          "newfstatat": 262, "fstat": 5, "statx": 332}),
    "aarch64": dict(arch=0xC00000B7, seccomp=277,
                    calls={"getdents64": 61, "openat": 56, "openat2": 437, "unlinkat": 35,
                           "newfstatat": 79, "fstat": 80, "statx": 291}),
}
_THIS = _ARCHES.get(platform.machine())
WALK_CALLS = ("getdents64", "openat", "openat2", "unlinkat")

_PR_SET_NO_NEW_PRIVS = 38
_SET_MODE_FILTER, _GET_NOTIF_SIZES = 1, 3
_FLAG_NEW_LISTENER = 1 << 3
_RET_ALLOW, _RET_USER_NOTIF = 0x7FFF0000, 0x7FC00000
_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE
# struct seccomp_notif (80 bytes) and seccomp_notif_resp (24), as the ioctls encode them.
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags; data: nr, arch, instruction pointer, args
_RESP = struct.Struct("=QqiI")       # id, val, error, flags
_IOCTL_RECV, _IOCTL_SEND = 0xC0502100, 0xC0182101

_libc = ctypes.CDLL(None, use_errno=True)


def available():
    """Why seccomp user notification cannot be used here, or None if it can."""
    if _THIS is None:
        return f"no system call table for {platform.machine()}"
    return None


class Call:
    """One intercepted system call, stopped before it runs."""

    def __init__(self, pid, nr, args):
        self.pid, self.nr, self.args = pid, nr, args
        self.name = _NAMES.get(nr, str(nr))

    def fd(self, i=0):
        """Argument ``i`` as an fd (AT_FDCWD is -100)."""
        return ctypes.c_int(self.args[i] & 0xFFFFFFFF).value

    def fd_stat(self, i=0):
        """The stat of what the child's fd in argument ``i`` is open on
        (None if it is not an open fd, e.g. AT_FDCWD)."""
        fd = self.fd(i)
        if fd < 0:
            return None
        try:
            return os.stat(f"/proc/{self.pid}/fd/{fd}")
        except OSError:
            return None

    def on(self, ino, *names):
        """Whether this call works on (its first argument is an fd of) the
        directory or file with inode ``ino``, and is one of ``names`` (any
        if none are given)."""
        if names and self.name not in names:
            return False
        st = self.fd_stat(0)
        return st is not None and st.st_ino == ino

    def fd_count(self):
        """How many fds the child has open now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def string(self, i):
        """The NUL-terminated string argument ``i`` points to, as bytes."""
        fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
        try:
            out = b""
            addr = self.args[i]
            while b"\0" not in out and len(out) < 1 << 16:
                chunk = os.pread(fd, 4096 - (addr + len(out)) % 4096, addr + len(out))
                if not chunk:
                    break
                out += chunk
            return out.split(b"\0", 1)[0]
        finally:
            os.close(fd)

    def __repr__(self):
        return f"Call({self.name}, pid={self.pid}, args={self.args[:4]})"


_NAMES = {nr: name for name, nr in (_THIS or {"calls": {}})["calls"].items()}

# Lists carried back from the child: what the child appends to a shared
# list (the mode fixture's counters of which walk ran) is appended to the
# parent's list when the child is done.
_shared = []


@contextlib.contextmanager
def share(*lists):
    """Within the block, what a supervised child appends to each of
    ``lists`` is appended to the parent's list when the child is done."""
    _shared.extend(lists)
    try:
        yield
    finally:
        for lst in lists:
            _shared.remove(lst)


def _filter(names):
    """A classic BPF program: the calls in ``names`` of this ABI go to the
    listener, everything else runs."""
    nrs = [_THIS["calls"][n] for n in names]
    ld, jeq, ret = 0x20, 0x15, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 0, len(nrs) + 1, _THIS["arch"]), (ld, 0, 0, 0)]
    for k, nr in enumerate(nrs):
        prog.append((jeq, len(nrs) - k, 0, nr))  # to the USER_NOTIF return
    prog += [(ret, 0, 0, _RET_ALLOW), (ret, 0, 0, _RET_USER_NOTIF)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog), len(prog)


def _install(names):
    """In the child: no_new_privs, then the filter; the listener fd."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    code, n = _filter(names)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", n, ctypes.addressof(buf))
    fprog_buf = ctypes.create_string_buffer(fprog, len(fprog))
    fd = _libc.syscall(_THIS["seccomp"], _SET_MODE_FILTER, _FLAG_NEW_LISTENER, fprog_buf)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER)")
    return fd


def _child(fn, names, sock):
    try:
        try:
            listener = _install(names)
        except OSError as e:  # no seccomp user notification here: the parent skips the test
            sock.sendall(b"E" + str(e).encode()[:1000])
            os._exit(0)
        socket.send_fds(sock, [b"L"], [listener])
        os.close(listener)
        shared_before = [len(lst) for lst in _shared]
        try:
            out = ("value", fn())
        except BaseException as e:  # noqa: B902 - carried to the parent whatever it is
            out = ("raise", e, traceback.format_exc())
        out += ([lst[k:] for lst, k in zip(_shared, shared_before)],)
        try:
            data = pickle.dumps(out)
        except Exception as e:
            data = pickle.dumps(("unpicklable", f"{out[1]!r} ({e})", out[2] if out[0] == "raise" else "", []))
        sock.sendall(struct.pack("=Q", len(data)) + data)
    except BaseException:  # noqa: B902 - nothing may escape a fork of the test process
        traceback.print_exc()
        os._exit(70)
    os._exit(0)


def _reply(listener, notif_id, error):
    resp = bytearray(_RESP.pack(notif_id, 0, -error if error else 0, 0 if error else _CONTINUE))
    try:
        _ioctl(listener, _IOCTL_SEND, resp)
    except OSError as e:
        if e.errno != errnos.ENOENT:  # the call is gone (the child was killed): nothing to answer
            raise


def _ioctl(fd, request, buf):
    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    if _libc.ioctl(fd, ctypes.c_ulong(request), cbuf) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def supervised(fn, on_call, syscalls=WALK_CALLS, timeout=60):
    """``fn()`` run in a forked child whose calls of ``syscalls`` each wait
    for ``on_call(Call)`` here (None: the call runs; an errno: it fails
    with it).  Returns what ``fn`` returned, or raises what it raised.  An
    exception of ``on_call`` (a check that failed, or a loop it caught) is
    raised at once and the child killed."""
    reason = available()
    if reason is not None:
        _skip(reason)
    parent_sock, child_sock = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child
        parent_sock.close()
        _child(fn, syscalls, child_sock)
    child_sock.close()
    listener = None
    data = b""
    try:
        parent_sock.settimeout(timeout)
        msg, fds, _, _ = socket.recv_fds(parent_sock, 1, 1)  # one byte: what follows is the result's
        if not fds:
            if msg == b"E":  # the reason follows, then the child exits
                why = b"".join(iter(lambda: parent_sock.recv(4096), b""))
                _skip(f"cannot install a seccomp filter with a listener: {why.decode(errors='replace')}")
            raise AssertionError("the supervised child could not install its seccomp filter (see stderr)")
        listener = fds[0]
        parent_sock.setblocking(False)
        poll = select.poll()
        poll.register(listener, select.POLLIN)
        poll.register(parent_sock, select.POLLIN)
        need = None
        deadline = time.monotonic() + timeout
        while need is None or len(data) < need + 8:
            left = deadline - time.monotonic()
            ready = poll.poll(max(0, left) * 1000) if left > 0 else []
            if not ready:  # (a walk that loops keeps making calls: the deadline is for the whole run)
                raise AssertionError(f"the supervised child did not finish in {timeout} s")
            for fd, events in ready:
                if fd == listener and events & select.POLLIN:
                    buf = bytearray(_NOTIF.size)
                    try:
                        _ioctl(listener, _IOCTL_RECV, buf)
                    except OSError as e:
                        if e.errno in (errnos.ENOENT, errnos.EINTR):
                            continue
                        raise
                    notif_id, tid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buf)
                    try:
                        error = on_call(Call(tid, nr, tuple(args)))
                    except BaseException:  # noqa: B902 - a failed check (or a loop caught): the child goes
                        _reply(listener, notif_id, errnos.EINTR)
                        raise
                    _reply(listener, notif_id, error)
                elif fd == listener and events & (select.POLLHUP | select.POLLERR):
                    poll.unregister(listener)
                elif fd == parent_sock.fileno():
                    chunk = parent_sock.recv(1 << 20)
                    if not chunk:
                        raise AssertionError("the supervised child ended without a result (see stderr)")
                    data += chunk
                    if need is None and len(data) >= 8:
                        need = struct.unpack_from("=Q", data)[0]
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        if listener is not None:
            os.close(listener)
        parent_sock.close()
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"the supervised child exited with status {os.waitstatus_to_exitcode(status)}")
    try:
        out = pickle.loads(data[8:])
    except Exception as e:
        raise AssertionError(f"the supervised function's outcome could not be read back: {e!r}") from None
    if out[0] == "unpicklable":
        raise AssertionError(f"the supervised function's outcome could not be carried back: {out[1]}\n{out[2]}")
    for lst, items in zip(_shared, out[-1]):
        lst.extend(items)
    if out[0] == "raise":
        raise out[1]
    return out[1]


def _skip(reason):
    import pytest  # (only tests supervise)
    pytest.skip(f"races at system calls need seccomp user notification (Linux 5.5+): {reason}")


def fds_at_listings(fn, dev):
    """``fn()`` supervised, with the child's count of open fds taken as it
    starts each ``getdents64`` of a directory on device ``dev``: (what
    ``fn`` returned, the child's fds before ``fn``, after it, the counts,
    the inodes listed).  The counts are what the walk holds while it lists:
    a bound on held fds shows in their maximum."""
    samples, listed = [], set()

    def run():
        before = _open_fds()
        value = fn()
        return value, before, _open_fds()

    def sample(call):
        st = call.fd_stat(0)
        if st is not None and st.st_dev == dev:
            samples.append(call.fd_count())
            listed.add(st.st_ino)

    (value, before, after) = supervised(run, sample, syscalls=("getdents64",))
    return value, before, after, samples, listed


def _open_fds():
    from harness.held import open_fds  # (the product's modules: imported only where a count is asked for)
    return open_fds()
