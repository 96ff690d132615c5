"""The trust rule (threat model S13, S14) in the walk: which directories
root enters and removes for a caller (``owners.OwnerRule``, given to
``remove.remove_entry``; None, the client's own attempt, means none).

* Another user's directory is removed only where the caller cannot have had
  it put: its parent neither owned by nor writable by the caller (their uid
  and subordinate uids; their groups and subordinate gids for group write;
  anyone for "other" write; an extended ACL counts as writable).
* Root's directory is removed when nobody else may write it, or when it is
  in root's directory that nobody else may write.
* Otherwise it is left in place, named, and the removal ends Failed; as the
  target itself, it is refused (``remove.Untrusted``) before anything goes.

Root tier: the trees belong to other uids.  Each test fails when its part of
the rule is taken away; those with ``mode`` run with both walks.
"""

import errno
import os
import pwd
import struct

import pytest

from harness.trees import snapshot, write
from harness.users import TEST_USER, ensure_user
from locald_admin.fs import fsops, owners, remove

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="root tier: needs uid 0 to give directories to other uids (chown)")

CALLER = 4321  # the unprivileged caller (no password entry: ids by number)
VICTIM = 4242  # another user
IMAGE_USER = 999  # a container image's user (a real user here or not: not the caller's either way)
SUB = 300000  # the caller's subordinate ids: SUB .. SUB + 65535
OTHER_GROUP = 4343  # a group the caller is not in

RULE = owners.OwnerRule(CALLER, frozenset({CALLER}), subuids=((SUB, 65536),), subgids=((SUB, 65536),))

REFUSED = "not the caller's, in a directory the caller could write: left in place"


def mkdir(path, uid, gid=None, mode=0o755):
    path.mkdir()
    os.chown(path, uid, uid if gid is None else gid)
    os.chmod(path, mode)
    return path


@pytest.fixture
def anchor(tmp_path):
    """<tmp>/proj/.locald, both the caller's (0755)."""
    os.chmod(tmp_path, 0o755)
    proj = mkdir(tmp_path / "proj", CALLER)
    return mkdir(proj / ".locald", CALLER)


def remove_in(parent, name, rule=RULE, **kw):
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return remove.remove_entry(fd, os.fsencode(name), f"{parent}/{name}", CALLER, owners=rule, **kw)
    finally:
        os.close(fd)


def refused_paths(e):
    return sorted(path for path, err in e.failures)


# -- the reproduction ----------------------------------------------------------

@pytest.mark.parametrize("drop_mode", [0o777, 0o1777], ids=["world-writable", "sticky"])
@pytest.mark.parametrize("threads", [1, 2])
def test_another_users_work_in_the_callers_drop_directory_survives(tmp_path, anchor, drop_mode, threads):
    """The caller owns a world-writable drop/; another user puts
    victim-work/report.txt in it (victim-work 0755, theirs); the caller
    moves drop/ below their anchor and asks for it to be removed.  The sticky
    bit changes nothing: the caller moves drop/ itself."""
    os.chmod(tmp_path, 0o777)
    drop = mkdir(tmp_path / "drop", CALLER, mode=drop_mode)
    work = mkdir(drop / "victim-work", VICTIM)
    write(work / "report.txt", b"the victim's report", uid=VICTIM)
    mkdir(drop / "mine", CALLER)
    write(drop / "mine" / "notes", uid=CALLER)
    write(drop / "a-file-of-theirs", b"files need no rule", uid=VICTIM)
    os.rename(drop, anchor / "drop")
    with pytest.raises(remove.RemoveFailed) as ei:
        remove_in(anchor, "drop", threads=threads)
    e = ei.value
    assert e.failures == [(f"{anchor}/drop/victim-work", None)]
    assert f"{anchor}/drop/victim-work: owned by uid {VICTIM}, {REFUSED}" in e.message
    assert (anchor / "drop" / "victim-work" / "report.txt").read_bytes() == b"the victim's report"
    assert sorted(snapshot(anchor / "drop")) == [b"victim-work", b"victim-work/report.txt"]
    assert e.removed == 3  # mine, mine/notes, a-file-of-theirs


def test_without_a_rule_the_victims_work_goes(tmp_path, anchor):
    """owners=None (the client's own attempt, where the kernel decides): as
    root, everything goes.  What the rule changes, and nothing else."""
    drop = mkdir(anchor / "drop", CALLER, mode=0o777)
    work = mkdir(drop / "victim-work", VICTIM)
    write(work / "report.txt", uid=VICTIM)
    assert remove_in(anchor, "drop", rule=None) == 3


# -- who put it there: the parent decides -------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_an_image_users_directory_in_a_root_owned_directory_is_removed(anchor, threads):
    """A container runtime (root) unpacked an image whose files belong to uid
    999 into root-owned 0755 directories: the caller cannot have put them
    there, so they go."""
    rootfs = mkdir(anchor / "rootfs", 0)
    var = mkdir(rootfs / "var", 0)
    app = mkdir(var / "app", IMAGE_USER)
    data = mkdir(app / "data", IMAGE_USER, mode=0o700)
    write(data / "db", uid=IMAGE_USER)
    mkdir(app / "victim-inside", VICTIM)  # in a directory of uid 999's: its parent decides again
    assert remove_in(anchor, "rootfs", threads=threads) == 6
    assert not os.path.lexists(rootfs)


@pytest.fixture
def rootfs(anchor):
    """<anchor>/rootfs, root's 0755: where a runtime's directories are, so
    that root's directories others may write are trusted in it."""
    return mkdir(anchor / "rootfs", 0)


@pytest.mark.parametrize("how, uid, gid, mode", [
    ("the caller's", CALLER, CALLER, 0o755),
    ("other-writable", 0, 0, 0o757),
    ("group-writable, the caller's group", 0, CALLER, 0o775),
    ("group-writable, a subordinate gid", 0, SUB + 7, 0o775),
    ("a subordinate uid's", SUB, SUB, 0o755),
])
def test_another_users_directory_where_the_caller_could_write_stays(rootfs, how, uid, gid, mode):
    parent = mkdir(rootfs / "parent", uid, gid, mode)
    mkdir(parent / "theirs", VICTIM)
    write(parent / "theirs" / "f", uid=VICTIM)
    with pytest.raises(remove.RemoveFailed) as ei:
        remove_in(rootfs.parent, "rootfs")
    assert refused_paths(ei.value) == [f"{parent}/theirs"]
    assert (parent / "theirs" / "f").exists()


@pytest.mark.parametrize("how, gid, mode", [
    ("group-writable, a group not the caller's", OTHER_GROUP, 0o775),
    ("not writable", 0, 0o755),
])
def test_another_users_directory_where_the_caller_could_not_write_goes(rootfs, how, gid, mode):
    parent = mkdir(rootfs / "parent", 0, gid, mode)
    mkdir(parent / "theirs", VICTIM)
    write(parent / "theirs" / "f", uid=VICTIM)
    assert remove_in(rootfs.parent, "rootfs") == 4


# -- root's directories: only root may have put them there ---------------------------------

ROOT_REFUSED = "owned by root and writable by others (mode {:04o}) in a directory that is not root's alone"


@pytest.mark.parametrize("mode_bits", [0o2775, 0o1777, 0o757, 0o777])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_root_directory_others_may_write_in_the_callers_directory_stays(mode, anchor, mode_bits, threads):
    """root:team 2775 from a shared team directory, holding root's 0755
    directory and file, moved in by a team member: others could have put it
    there, root's files with it (issue 19, finding 2)."""
    holder = mkdir(anchor / "holder", CALLER)
    mkdir(holder / "mine", CALLER)
    tools = mkdir(holder / "tools", 0, OTHER_GROUP, mode_bits)
    mkdir(tools / "bin", 0)
    write(tools / "bin" / "deploy", b"root's", uid=0)
    with pytest.raises(remove.RemoveFailed) as ei:
        remove_in(anchor, "holder", threads=threads)
    assert ei.value.failures == [(f"{tools}", None)]
    assert f"{tools}: {ROOT_REFUSED.format(mode_bits)}: left in place" in ei.value.message
    assert sorted(snapshot(holder)) == [b"tools", b"tools/bin", b"tools/bin/deploy"]
    # As the target itself: refused before anything is touched.
    with pytest.raises(remove.Untrusted) as ei:
        remove_in(holder, "tools", threads=threads)
    assert ei.value.message == f"{tools}: {ROOT_REFUSED.format(mode_bits)}; root removes nothing in it for the caller"
    assert (tools / "bin" / "deploy").read_bytes() == b"root's"


@pytest.mark.parametrize("threads", [1, 2])
def test_a_rootful_images_shared_directories_in_roots_directories_go(mode, rootfs, threads):
    """tmp and run/lock (1777), var/mail and var/local (2775) of a rootful
    image, in root's 0755 directories, with root's files and directories in
    them: only root can have put them there."""
    for d in ("run", "var"):
        mkdir(rootfs / d, 0)
    shared = [mkdir(rootfs / "tmp", 0, 0, 0o1777), mkdir(rootfs / "run" / "lock", 0, 0, 0o1777),
              mkdir(rootfs / "var" / "mail", 0, 8, 0o2775), mkdir(rootfs / "var" / "local", 0, 50, 0o2775)]
    for d in shared:
        write(d / "roots-file", uid=0, mode=0)
        mkdir(d / "roots-dir", 0, 0, 0o700)
        write(d / "roots-dir" / "f", uid=0)
    assert remove_in(rootfs.parent, "rootfs", threads=threads) == 3 + 4 * 4
    assert not os.path.lexists(rootfs)


def test_a_root_directory_others_may_write_in_a_root_tmp_stays(mode, rootfs):
    """The rule for root's directories applies at every level: a 1777
    directory of root's in tmp (1777) could have been moved there by anyone."""
    tmp = mkdir(rootfs / "tmp", 0, 0, 0o1777)
    x11 = mkdir(tmp / ".X11-unix", 0, 0, 0o1777)
    write(x11 / "X0", uid=0)
    mkdir(tmp / "roots", 0, 0, 0o755)
    with pytest.raises(remove.RemoveFailed) as ei:
        remove_in(rootfs.parent, "rootfs")
    assert refused_paths(ei.value) == [str(x11)]
    assert sorted(snapshot(rootfs)) == [b"tmp", b"tmp/.X11-unix", b"tmp/.X11-unix/X0"]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_strangers_directory_in_a_root_tmp_stays_and_is_named(mode, rootfs, threads):
    """Issue 11's rule in a root tmp (1777): the caller may write tmp, so
    another user's directory there stays, named with its owner."""
    tmp = mkdir(rootfs / "tmp", 0, 0, 0o1777)
    mkdir(tmp / "blocker", VICTIM, mode=0o700)
    write(tmp / "blocker" / "f", uid=VICTIM)
    write(tmp / "roots-file", uid=0)
    with pytest.raises(remove.RemoveFailed) as ei:
        remove_in(rootfs.parent, "rootfs", threads=threads)
    assert ei.value.failures == [(f"{tmp}/blocker", None)]
    assert f"{tmp}/blocker: owned by uid {VICTIM}, {REFUSED}" in ei.value.message
    assert sorted(snapshot(rootfs)) == [b"tmp", b"tmp/blocker", b"tmp/blocker/f"]


# -- subordinate ids -------------------------------------------------------------------------

def test_a_subordinate_uid_tree_is_the_callers(tmp_path, anchor):
    """A rootless container's tree: its root is SUB, its users SUB + n; ids
    read from a subuid file (by the caller's uid, as a number)."""
    subuid = tmp_path / "subuid"
    subuid.write_text(f"someone:100000:65536\n{CALLER}:{SUB}:65536\nbad line\n")
    rule = owners.OwnerRule.for_caller(CALLER, subuid_path=str(subuid), subgid_path=str(tmp_path / "none"))
    assert rule.subuids == ((SUB, 65536),) and rule.subgids == ()
    ctr = mkdir(anchor / "ctr", SUB)
    home = mkdir(ctr / "home", SUB, mode=0o777)  # written by anyone: in the caller's own namespace
    mkdir(home / "app", SUB + 1000)
    write(home / "app" / "f", uid=SUB + 1000)
    assert remove_in(anchor, "ctr", rule=rule) == 4


def test_a_subordinate_range_over_a_real_user_does_not_make_them_the_callers(tmp_path, anchor):
    """/etc/subuid gives the caller a range holding a real user's uid (an
    administrator's mistake): that user's directory stays theirs."""
    real = pwd.getpwnam("nobody").pw_uid
    subuid = tmp_path / "subuid"
    subuid.write_text(f"{CALLER}:{real - 5}:10\n")
    rule = owners.OwnerRule.for_caller(CALLER, subuid_path=str(subuid), subgid_path=str(tmp_path / "none"))
    assert not rule.subordinate_uid(real)
    assert any(rule.subordinate_uid(i) for i in range(real - 5, real + 5) if not _is_real(i))
    mkdir(anchor / "nobodys", real)
    write(anchor / "nobodys" / "f", uid=real)
    with pytest.raises(remove.Untrusted) as ei:
        remove_in(anchor, "nobodys", rule=rule)
    assert f"owned by uid {real} (nobody), not the caller's, in a directory the caller could write" \
        in ei.value.message
    assert (anchor / "nobodys" / "f").exists()


def _is_real(uid):
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def test_for_caller_reads_the_databases_and_both_files_by_name_and_by_uid(tmp_path):
    user = ensure_user(TEST_USER)
    (tmp_path / "subuid").write_text(f"{user.pw_name}:{SUB}:65536\n{user.pw_uid}:{SUB + 70000}:10\n")
    (tmp_path / "subgid").write_text(f"{user.pw_name}:{SUB}:65536\n")
    rule = owners.OwnerRule.for_caller(user.pw_uid, subuid_path=str(tmp_path / "subuid"),
                                       subgid_path=str(tmp_path / "subgid"))
    assert rule.uid == user.pw_uid
    assert user.pw_gid in rule.gids
    assert rule.subuids == ((SUB, 65536), (SUB + 70000, 10))
    assert rule.subgids == ((SUB, 65536),)
    assert rule.callers(user.pw_uid) and rule.callers(SUB + 70005)
    assert not rule.callers(VICTIM) and not rule.callers(0)


# -- an extended ACL --------------------------------------------------------------------------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF


def give_write_by_acl(path, uid):
    """An access ACL with a named entry for ``uid`` (rwx), written as the
    kernel's xattr (no setfacl needed)."""
    entries = [(ACL_USER_OBJ, 7, UNDEFINED), (ACL_USER, 7, uid), (ACL_GROUP_OBJ, 5, UNDEFINED),
               (ACL_MASK, 7, UNDEFINED), (ACL_OTHER, 5, UNDEFINED)]
    data = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, owners.ACL_ACCESS, data)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"this file system has no POSIX ACLs: {e.strerror}")
        raise


def test_a_parent_with_an_extended_acl_counts_as_writable_by_the_caller(anchor, rootfs):
    parent = mkdir(rootfs / "parent", VICTIM + 1)
    give_write_by_acl(parent, CALLER)
    mkdir(parent / "theirs", VICTIM)
    with pytest.raises(remove.RemoveFailed) as ei:
        remove_in(anchor, "rootfs")
    assert refused_paths(ei.value) == [f"{parent}/theirs"]
    # An O_PATH fd (what scope holds above an anchor) is read through /proc.
    fd = os.open(parent, os.O_PATH | os.O_DIRECTORY)
    try:
        assert owners.has_acl(fd)
    finally:
        os.close(fd)
    fd = os.open(anchor, os.O_PATH | os.O_DIRECTORY)
    try:
        assert not owners.has_acl(fd)
    finally:
        os.close(fd)


# -- the target itself ------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_a_target_owned_by_another_user_in_a_writable_parent_is_left_whole(anchor, threads):
    target = mkdir(anchor / "theirs", VICTIM)
    for d in ("a", "b"):
        mkdir(target / d, VICTIM)
        write(target / d / "f", uid=VICTIM)
    before = snapshot(target)
    with pytest.raises(remove.Untrusted) as ei:
        remove_in(anchor, "theirs", threads=threads)
    assert ei.value.removed == 0
    assert ei.value.message == (f"{target}: owned by uid {VICTIM}, not the caller's, in a directory the caller "
                                "could write; root removes nothing in it for the caller")
    assert snapshot(target) == before


def test_a_held_target_owned_by_another_user_in_a_writable_parent_is_left_whole(anchor):
    """As the mechanism removes an anchor: through its held fd, its parent an
    O_PATH fd."""
    fs = fsops.default()
    prefix_fd = fs.open_prefix(os.fsencode(anchor.parent).lstrip(b"/").split(b"/"))
    os.chown(anchor, VICTIM, VICTIM)
    write(anchor / "f", uid=VICTIM)
    anchor_fd = fs.open_beneath(prefix_fd, b".locald")
    try:
        with pytest.raises(remove.Untrusted) as ei:
            remove.remove_entry(prefix_fd, b".locald", str(anchor), CALLER, held_fd=anchor_fd, owners=RULE,
                                keep_dir=True, fs=fs)
    finally:
        os.close(anchor_fd)
        os.close(prefix_fd)
    assert ei.value.message.startswith(f"{anchor}: owned by uid {VICTIM}")
    assert (anchor / "f").exists()


def test_a_target_owned_by_another_user_in_a_root_owned_directory_goes(rootfs):
    target = mkdir(rootfs / "app", IMAGE_USER)
    write(target / "f", uid=IMAGE_USER)
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove.remove_entry(fd, b"app", str(target), CALLER, owners=RULE) == 2
    finally:
        os.close(fd)


# -- the databases are read only when a decision needs them ---------------------------------

def test_the_databases_are_read_only_for_a_directory_of_someone_else(tmp_path, anchor):
    """A tree of the caller's and root's directories is removed without
    reading the group database or the subordinate id files (the largest
    cost of a small request); the first directory of another uid reads them,
    once, and the rule is the same as one read up front."""
    reads = []
    original = owners.read_ranges

    def counting(path, name, uid):
        if path.startswith(str(tmp_path)):  # this rule's (the in-use check reads /etc/subuid for its own)
            reads.append(path)
        return original(path, name, uid)

    subuid = tmp_path / "subuid"
    subuid.write_text(f"{CALLER}:{SUB}:65536\n")
    rule = owners.OwnerRule.for_caller(CALLER, subuid_path=str(subuid), subgid_path=str(tmp_path / "none"))
    owners.read_ranges = counting
    try:
        mine = mkdir(anchor / "mine", CALLER)
        mkdir(mine / "roots", 0)
        write(mine / "roots" / "f", uid=0)
        assert remove_in(anchor, "mine", rule=rule) == 3
        assert not rule.loaded and reads == []
        ctr = mkdir(anchor / "ctr", SUB)
        mkdir(ctr / "app", SUB + 1000)
        assert remove_in(anchor, "ctr", rule=rule) == 2
        assert rule.loaded and reads == [str(subuid), str(tmp_path / "none")]
        assert rule.subuids == ((SUB, 65536),)
    finally:
        owners.read_ranges = original
