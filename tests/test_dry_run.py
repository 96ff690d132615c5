"""The dry run (CleanupWithOptions' ``dry-run``) without a bus: the engine's
sequence with the counting walk in place of the removal.

Nothing is removed; on a quiet tree the count is what a cleanup then
removes, with the compiled and the Python walk alike (``mode``); every check
a cleanup makes refuses a dry run the same way; a directory the trust rule
does not let root enter for the caller is named with its reason and nothing
inside it is listed (threat model L5); the mechanism's options and result
as they cross the bus.  The whole way over a bus is
test_cleanup_with_options.py's.
"""

import json
import os
import socket

import pytest

from harness import IS_ROOT, trees
from harness.users import LOGIN_USER, OTHER_USER, TEST_USER, ensure_login_user, ensure_user
from locald_admin import interface as i
from locald_admin import busproto, messages, wire
from locald_admin.mechanism import engine
from locald_admin.mechanism.config import Config
from locald_admin.mechanism.errors import InvalidArgs, MountPoint, OutsideScope
from locald_admin.mechanism.service import _options, _refused

ME = os.getuid()
root_only = pytest.mark.skipif(not IS_ROOT, reason="needs root: other users' directories, mounts")


def write(path, data=b"x", mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    trees.write(path, data, mode=mode)


def run(path, uid, dry_run):
    return engine.Engine().cleanup(str(path), uid, Config(), engine.Progress(), dry_run=dry_run)


def mixed_tree(t):
    """Directories, files, a symlink out of the tree, a fifo, a socket and
    an empty directory: the kinds a walk meets.  Returns the entries at and
    below ``t``."""
    write(t / "a" / "b" / "f1")
    write(t / "a" / "f2", mode=0)
    (t / "empty").mkdir()
    (t / "link").symlink_to("/etc/passwd")
    os.mkfifo(t / "a" / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fsdecode(t / "a" / "sock"))
    s.close()
    trees.make_chain(t / "deep", 20, create_base=True)
    return trees.count_entries(t)


def test_a_dry_run_removes_nothing_and_counts_what_the_cleanup_then_removes(mode, tmp_path):
    t = tmp_path / "proj" / ".locald" / "svc"
    t.mkdir(parents=True)
    entries = mixed_tree(t)
    before = trees.snapshot(tmp_path, trees.full)
    dry = run(t, ME, dry_run=True)
    assert trees.snapshot(tmp_path, trees.full) == before  # nothing removed, nothing changed
    assert dry.plan.would_remove == entries and not dry.plan.left_behind and dry.existed
    assert dry.removed == 0
    real = run(t, ME, dry_run=False)
    assert real.removed == dry.plan.would_remove and not t.exists()


def test_a_dry_run_of_a_file_or_of_nothing(mode, tmp_path):
    anchor = tmp_path / "proj" / ".locald"
    anchor.mkdir(parents=True)
    write(anchor / "f")
    dry = run(anchor / "f", ME, dry_run=True)
    assert (dry.plan.would_remove, dry.existed) == (1, True) and (anchor / "f").exists()
    missing = run(anchor / "nothing", ME, dry_run=True)
    assert (missing.existed, missing.plan) == (False, None)
    below_missing = run(anchor / "no" / "such", ME, dry_run=True)
    assert below_missing.existed is False


def test_the_anchor_kept_is_not_counted(tmp_path):
    """An anchor in a directory others may write (not sticky) is emptied and
    kept by a cleanup: the dry run counts what is in it, not itself."""
    holder = tmp_path / "shared"
    holder.mkdir()
    os.chmod(holder, 0o777)
    anchor = holder / ".locald"
    anchor.mkdir()
    write(anchor / "x" / "f")
    dry = run(anchor, ME, dry_run=True)
    assert dry.plan.would_remove == 2 and dry.notes == {"anchor_kept": "yes"}
    assert run(anchor, ME, dry_run=False).removed == 2 and anchor.is_dir()


@root_only
def test_an_untrusted_directory_is_named_with_its_reason_and_nothing_in_it_is_listed(mode, top):
    """Another user's directory in one the caller may write (the caller
    could have moved it there, S13): a cleanup leaves it, and its ancestors,
    in place; the dry run names it with the same reason, counts exactly what
    the cleanup then removes, and lists nothing inside it: the dry run's new
    read ability stops at the trust rule (L5)."""
    caller = ensure_user(TEST_USER)
    stranger = ensure_login_user(LOGIN_USER)
    anchor = trees.make_anchor(top, caller.pw_uid, caller.pw_gid)
    t = anchor / "svc"
    trees.make_runc_leftovers(anchor)  # root-owned rootfs/run/shm with a mode-000 file
    theirs = t / "home-of-someone"  # in svc, which is the caller's: it could have put it there
    theirs.mkdir()
    write(theirs / "their-secret-name", b"private")
    os.chown(theirs, stranger.pw_uid, stranger.pw_gid)
    os.chown(theirs / "their-secret-name", stranger.pw_uid, stranger.pw_gid)
    write(t / "rootfs" / "etc" / "hosts")
    before = trees.snapshot(top, trees.full)
    dry = run(t, caller.pw_uid, dry_run=True)
    assert trees.snapshot(top, trees.full) == before
    refused = _refused(str(t), dry.plan)
    assert [p for p, _ in refused] == [str(theirs)], refused
    assert "locald-stranger" in refused[0][1] or str(stranger.pw_uid) in refused[0][1]
    everything = repr((refused, dict(dry.plan.failures), dry.plan.mounts))
    assert "their-secret-name" not in everything  # not listed: never entered
    # what stays: their directory with its file, and svc holding it
    assert dry.plan.would_remove == trees.count_entries(t) - 3
    with pytest.raises(Exception) as real:
        run(t, caller.pw_uid, dry_run=False)
    assert real.value.removed == dry.plan.would_remove
    assert (theirs / "their-secret-name").read_bytes() == b"private"


@root_only
def test_every_check_refuses_a_dry_run_as_it_refuses_the_cleanup(mode, top, mounter):
    caller = ensure_user(TEST_USER)
    other = ensure_user(OTHER_USER)
    anchor = trees.make_anchor(top, caller.pw_uid, caller.pw_gid)
    # a mount below the target: MountPoint, nothing listed or removed
    write(anchor / "m" / "keep")
    (anchor / "m" / "mnt").mkdir()
    mounter("-t", "tmpfs", "tmpfs", target=anchor / "m" / "mnt")
    for dry_run in (True, False):
        with pytest.raises(MountPoint):
            run(anchor / "m", caller.pw_uid, dry_run)
    assert (anchor / "m" / "keep").exists()
    # another user's anchor: OutsideScope for both
    theirs = trees.make_anchor(top, other.pw_uid, other.pw_gid, name="theirs")
    write(theirs / "x")
    for dry_run in (True, False):
        with pytest.raises(OutsideScope):
            run(theirs / "x", caller.pw_uid, dry_run)
    assert (theirs / "x").exists()


COUNT_AS_USER = """
import json, os, sys
from pathlib import Path
from locald_admin.fs import count, fsops, walk
from locald_admin.fs import remove
t = Path(sys.argv[1]) / "proj" / ".locald" / "svc"
for d in ("ok", "closed"):
    (t / d).mkdir(parents=True)
    (t / d / "f").write_text("x")
os.chmod(t / "closed", 0)
parent = os.open(t.parent, os.O_RDONLY)
plan = count.count_tree(parent, b"svc", os.open(t, os.O_RDONLY), fsops.default(), limits=walk.DEFAULT_LIMITS)
try:
    removed = remove.remove_entry(parent, b"svc", str(t), os.getuid())
except remove.RemoveError as e:
    removed = e.removed
os.chmod(t / "closed", 0o700)
print(json.dumps({"left_behind": plan.left_behind, "would_remove": plan.would_remove, "removed": removed,
                  "left": sorted(str(p.relative_to(t)) for p in t.rglob("*"))}))
"""


def test_the_count_agrees_with_the_removal_when_something_cannot_be_listed(clients, top):
    """A directory the walk cannot list keeps itself and its ancestors, in
    the count as in the removal that follows: a mode-000 directory of the
    caller's own, counted then removed as the test user (root would list
    it; run as that user, the root tier runs it too)."""
    if IS_ROOT:
        os.chown(top, clients.uid, clients.gid)
    cp = clients.run(["-c", COUNT_AS_USER, str(top)], None, text=True)
    assert cp.returncode == 0, cp.stderr
    plan = json.loads(cp.stdout)
    # ok/f and ok go; closed (unlistable) stays, with what is in it, and so
    # does svc, which holds it.
    assert plan == {"left_behind": True, "would_remove": 2, "removed": 2, "left": ["closed", "closed/f"]}, plan


# -- the options and the result as they cross the bus ------------------------------------------

def test_options_are_read_by_the_table_and_anything_else_is_invalid_args_naming_it():
    assert _options({}) == (None, False)
    assert _options({"dry-run": True, "interactive": False}) == (False, True)
    with pytest.raises(InvalidArgs) as e:
        _options({"dry_run": True, "verbose": 1})
    assert "'dry_run'" in e.value.message and "'verbose'" in e.value.message
    assert "dry-run (b)" in e.value.message and e.value.dbus_name == i.ERROR_INVALID_ARGS
    with pytest.raises(InvalidArgs, match=r"wrong type 'dry-run'"):
        _options({"dry-run": 1})  # an int is not a b: a mechanism must not guess
    with pytest.raises(InvalidArgs, match="and 95 more"):
        _options({f"k{n:03}": True for n in range(100)})
    long = "x" * 10_000
    with pytest.raises(InvalidArgs) as e:
        _options({long: True})
    assert len(e.value.message) < 400


def test_the_result_crosses_the_wire_with_its_types():
    result = messages.cleanup_result(7, True, 1234, 5, [("/p/.locald/x/y", "why")])
    msg = wire.Message(wire.METHOD_RETURN, 2, 0, reply_serial=1, destination=":1.1", sender=":1.2",
                       signature="a{sv}", body=(result,))
    back = wire.decode(wire.encode(msg))
    values = messages.read_cleanup_result(messages.Reply(":1.2", None, "a{sv}", (busproto.unwrap(back.body[0]),)))
    assert values == {"removed": 7, "existed": True, "duration-usec": 1234, "would-remove": 5,
                      "refused": [("/p/.locald/x/y", "why")]}
    assert {k: v.signature for k, v in result.items()} == {k: s for k, (s, _) in i.CLEANUP_RESULT.items()}
    with pytest.raises(messages.BadReply):
        messages.read_cleanup_result(messages.Reply(":1.2", None, "a{sv}", ({"removed": "seven"},)))
    with pytest.raises(messages.BadReply):
        messages.read_cleanup_result(messages.Reply(":1.2", None, "", ()))
    # a newer mechanism's key is passed over
    assert messages.read_cleanup_result(messages.Reply(":1.2", None, "a{sv}", ({"removed": 1, "new": "x"},))) \
        == {"removed": 1}
