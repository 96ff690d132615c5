"""The trust rule through the bus (threat model S13, S14, S15): the red
team's attacks on issue 19, each as it was found, against the real mechanism
on a private bus, the caller the unprivileged test user, the moves made by
the caller (or the stranger) themselves.

* Another user's work moved in by the caller: paths *below* it were opened
  without the rule (finding 1).
* A root-owned directory that others may write, moved in from a shared team
  directory with root's files in it (finding 2).
* A stranger's directory in a container's world-writable ``tmp`` blocks the
  caller's cleanup: a refusal that names it, never a deletion (finding 3).
* What must still go: a rootful image's ``tmp``, ``run/lock``, ``var/mail``,
  ``var/local``, its uid-999 files in root-made directories, root-made mount
  points, runc's state directory (a rootless container's subordinate-id
  files: ``test_walk_owners.py``, which gives the rule its own subuid file).

Each runs with the compiled walk and with the Python walk (``--python-walk``).
Root tier: skipped unless the suite runs as root.
"""

import os

import pytest

from harness import IS_ROOT
from harness.mechanism import stack as mechanism_stack
from harness.trees import make_anchor, rm_rf, snapshot, write
from harness.users import OTHER_USER, ensure_user
from locald_admin import interface as i

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="root tier: needs uid 0 (other users' directories, "
                                "root-owned trees); run the suite as root, as CI does")

TEAM = 4343  # a group the caller and a teammate share (no /etc/group entry needed: ids by number)
IMAGE_USER = 999
MAIL = 8  # Debian's "mail" group, as in an image's var/mail


@pytest.fixture(scope="module", params=["compiled", "python"])
def stack(request):
    args = ["--python-walk"] if request.param == "python" else []
    with mechanism_stack(*args) as (b, _, mech):
        yield b, mech


@pytest.fixture(scope="module")
def other():
    return ensure_user(OTHER_USER)


@pytest.fixture
def anchor(top, clients):
    return make_anchor(top, clients.uid, clients.gid)


def mkdir(path, uid, gid=None, mode=0o755):
    path.mkdir()
    os.chown(path, uid, uid if gid is None else gid)
    os.chmod(path, mode)
    return path


def as_user(clients, stack, code, *args, user=None, extra_groups=()):
    """Run ``code`` (Python) as the caller (or ``user``); it must succeed:
    the attack's own steps are things the attacker can do."""
    cp = clients.run(["-c", code, *map(str, args)], stack[0].address, user=user, extra_groups=extra_groups)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")


MOVE = "import os, sys; os.rename(sys.argv[1], sys.argv[2])"
MKDIR = "import os, sys; os.mkdir(sys.argv[1], 0o700); open(sys.argv[1] + '/f', 'w').write('mine')"


def cleanup(clients, stack, path):
    return clients.shim("admin", "cleanup", str(path), bus_address=stack[0].address)


# -- finding 1: below another user's work the caller moved in ---------------------------------

@pytest.fixture
def victims_work_moved_in(anchor, clients, stack, other):
    """The caller's world-writable drop/, in which another user keeps
    victim-work/ (0700) with report.txt and sub/; the caller moves drop/
    below their anchor."""
    drop = mkdir(anchor.parent / "drop", clients.uid, clients.gid, 0o777)  # in the caller's project
    work = mkdir(drop / "victim-work", other.pw_uid, other.pw_gid, 0o700)
    write(work / "report.txt", b"the victim's report", uid=other.pw_uid)
    mkdir(work / "sub", other.pw_uid, other.pw_gid, 0o700)
    write(work / "sub" / "data", b"the victim's data", uid=other.pw_uid)
    as_user(clients, stack, MOVE, drop, anchor / "drop")
    return anchor / "drop" / "victim-work"


@pytest.mark.parametrize("below", ["report.txt", "sub", "sub/data", ""])
def test_a_path_below_another_users_work_moved_in_is_outside_scope(stack, clients, other,
                                                                   victims_work_moved_in, below):
    work = victims_work_moved_in
    before = snapshot(work)
    cp = cleanup(clients, stack, work / below if below else work)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
    assert f"victim-work is owned by uid {other.pw_uid} ({OTHER_USER}), not the caller's" in cp.stderr \
        or f"victim-work: owned by uid {other.pw_uid} ({OTHER_USER}), not the caller's" in cp.stderr, cp.stderr
    assert snapshot(work) == before
    assert (work / "report.txt").read_bytes() == b"the victim's report"


def test_removing_the_drop_directory_leaves_the_victims_work_and_names_it(stack, clients, other,
                                                                           victims_work_moved_in):
    work = victims_work_moved_in
    write(work.parent / "mine", uid=clients.uid)
    cp = cleanup(clients, stack, work.parent)
    assert cp.returncode == i.EXIT_FAILED, cp.stderr
    assert f"{work}: owned by uid {other.pw_uid} ({OTHER_USER})" in cp.stderr
    assert sorted(os.listdir(work.parent)) == ["victim-work"]
    assert (work / "sub" / "data").read_bytes() == b"the victim's data"


def test_a_teammates_directory_moved_in_from_a_shared_group_directory(top, anchor, stack, clients, other):
    """Without the victim's help: a teammate's 2775 directory in a shared
    setgid group directory, a 0700 directory of theirs inside it; the
    caller (in the group) moves the teammate's directory in, then names a
    path below it."""
    shared = mkdir(top / "shared", 0, TEAM, 0o2775)
    mate = mkdir(shared / "mate", other.pw_uid, TEAM, 0o2775)
    private = mkdir(mate / "private", other.pw_uid, TEAM, 0o700)
    write(private / "keys", b"the teammate's keys", uid=other.pw_uid)
    as_user(clients, stack, MOVE, mate, anchor / "mate", extra_groups=[TEAM])
    for target in (anchor / "mate" / "private" / "keys", anchor / "mate" / "private", anchor / "mate"):
        cp = cleanup(clients, stack, target)
        assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, (target, cp.stderr)
        assert f"owned by uid {other.pw_uid} ({OTHER_USER})" in cp.stderr
    assert (anchor / "mate" / "private" / "keys").read_bytes() == b"the teammate's keys"


# -- finding 2: a root directory others may write, moved in with root's files -------------------

@pytest.fixture
def roots_team_directory_moved_in(top, anchor, stack, clients):
    """A shared team directory (root:team 2775) holds a root-owned,
    group-writable directory whose root-owned 0755 subdirectory holds
    root's file; a member of the team moves it into their anchor."""
    team = mkdir(top / "team", 0, TEAM, 0o2775)
    tools = mkdir(team / "tools", 0, TEAM, 0o2775)
    bin_ = mkdir(tools / "bin", 0, 0, 0o755)
    write(bin_ / "deploy", b"root's deploy script", uid=0)
    as_user(clients, stack, MOVE, tools, anchor / "tools", extra_groups=[TEAM])
    return anchor / "tools"


@pytest.mark.parametrize("below", ["", "bin", "bin/deploy"])
def test_a_root_directory_others_may_write_moved_in_is_outside_scope(stack, clients,
                                                                     roots_team_directory_moved_in, below):
    tools = roots_team_directory_moved_in
    cp = cleanup(clients, stack, tools / below if below else tools)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
    assert "owned by root and writable by others (mode 2775)" in cp.stderr, cp.stderr
    assert (tools / "bin" / "deploy").read_bytes() == b"root's deploy script"


def test_cleaning_the_anchor_leaves_roots_moved_in_directory_and_names_it(stack, clients, anchor,
                                                                          roots_team_directory_moved_in):
    write(anchor / "mine", uid=clients.uid)
    cp = cleanup(clients, stack, anchor)
    assert cp.returncode == i.EXIT_FAILED, cp.stderr
    assert f"{anchor}/tools: owned by root and writable by others (mode 2775)" in cp.stderr, cp.stderr
    assert os.listdir(anchor) == ["tools"]
    assert (anchor / "tools" / "bin" / "deploy").read_bytes() == b"root's deploy script"


# -- finding 3: a stranger's directory in a container's tmp ---------------------------------------

def rootful_image(ctr):
    """A rootful image's tree as a runtime unpacks it as root: root's 0755
    directories; tmp and run/lock 1777 and var/mail, var/local 2775 holding
    root's files; uid 999's 0700 data in a root-made directory."""
    rootfs = mkdir(ctr / "rootfs", 0)
    for d in ("etc", "run", "var", "var/lib"):
        mkdir(rootfs / d, 0)
    mkdir(rootfs / "tmp", 0, 0, 0o1777)
    mkdir(rootfs / "run" / "lock", 0, 0, 0o1777)
    mkdir(rootfs / "var" / "mail", 0, MAIL, 0o2775)
    mkdir(rootfs / "var" / "local", 0, 50, 0o2775)
    mkdir(rootfs / "var" / "tmp", 0, 0, 0o1777)
    for f in ("tmp/root-socket-dir-file", "run/lock/lockfile", "var/mail/root", "var/local/x", "etc/passwd"):
        write(rootfs / f, uid=0, mode=0o600)
    mkdir(rootfs / "tmp" / "roots-own", 0, 0, 0o700)  # root's 0700 directory in tmp: only root made it
    write(rootfs / "tmp" / "roots-own" / "secret", uid=0, mode=0)
    db = mkdir(rootfs / "var" / "lib" / "postgresql", IMAGE_USER, IMAGE_USER, 0o700)
    write(db / "PG_VERSION", uid=IMAGE_USER)
    return rootfs


def test_a_strangers_directory_in_a_containers_tmp_blocks_and_is_named(top, anchor, stack, clients, other):
    os.chmod(top, 0o755)  # a home anyone may traverse
    ctr = mkdir(anchor / "ctr", clients.uid, clients.gid)
    rootfs = rootful_image(ctr)
    blocker = rootfs / "tmp" / "blocker"
    as_user(clients, stack, MKDIR, blocker, user=other)
    cp = cleanup(clients, stack, ctr)
    assert cp.returncode == i.EXIT_FAILED, cp.stderr
    assert f"{blocker}: owned by uid {other.pw_uid} ({OTHER_USER}), not the caller's" in cp.stderr, cp.stderr
    # The refusal is the only thing left: the stranger's directory, and the
    # directories that hold it.
    assert sorted(snapshot(ctr)) == [b"rootfs", b"rootfs/tmp", b"rootfs/tmp/blocker", b"rootfs/tmp/blocker/f"]
    # Once the administrator removed it (docs/operator-guide.md), the
    # caller's next call finishes.
    rm_rf(blocker)
    cp = cleanup(clients, stack, ctr)
    assert cp.returncode == 0, cp.stderr
    assert not ctr.exists()


def test_a_rootful_images_tree_with_its_shared_directories_is_removed(anchor, stack, clients):
    ctr = mkdir(anchor / "ctr", clients.uid, clients.gid)
    rootful_image(ctr)
    # runc's leftovers beside it: root-made mount points (0755, 0700) and its
    # state directory.
    mkdir(ctr / "rootfs" / "app", 0, 0, 0o755)
    mkdir(ctr / "rootfs" / "run" / "shm", 0, 0, 0o700)
    state = mkdir(anchor / "runc-state", 0, 0, 0o700)
    mkdir(state / "web", 0, 0, 0o711)
    write(state / "web" / "state.json", uid=0, mode=0o600)
    cp = cleanup(clients, stack, anchor)
    assert cp.returncode == 0, cp.stderr
    assert not anchor.exists()
