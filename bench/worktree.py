"""Another commit's files for the A/B (``--baseline REV``): the commit a
revision names, and a detached git worktree of it that is removed again
(``git worktree remove --force --force``; if that fails, the directory and
its administrative entry in .git/worktrees are removed by hand, so git lists
nothing left over, without pruning anyone else's worktrees)."""

import subprocess
from pathlib import Path

from harness import ROOT, trees


def git(*argv, check=True):
    return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=check,
                          stdin=subprocess.DEVNULL)


def resolve(rev):
    """The full commit id ``rev`` names in this repository; ValueError with
    git's reason if it names none."""
    cp = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        why = cp.stderr.strip() or "unknown revision, or not a commit"
        raise ValueError(f"{rev!r} names no commit in {ROOT} ({why})")
    return cp.stdout.strip()


def describe_working_tree():
    """HEAD's commit and the tracked files changed in the working tree."""
    head = git("rev-parse", "HEAD").stdout.strip()
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
    return {"head": head, "changed_files": changed}


def _admin_dirs(path):
    """The entries in .git/worktrees that belong to the worktree at ``path``."""
    common = Path(git("rev-parse", "--git-common-dir").stdout.strip())
    if not common.is_absolute():
        common = ROOT / common
    found = []
    for d in (common / "worktrees").glob("*"):
        try:
            if Path((d / "gitdir").read_text().strip()) == path / ".git":
                found.append(d)
        except OSError:
            continue
    return found


def remove(path):
    path = Path(path)
    cp = git("worktree", "remove", "--force", "--force", str(path), check=False)
    leftovers = _admin_dirs(path)
    if cp.returncode == 0 and not path.exists() and not leftovers:
        return
    # Interrupted half-way through `worktree add`, or git refused: by hand.
    trees.rm_rf(path)
    for d in leftovers:
        trees.rm_rf(d)


def add(ctx, commit, path):
    """A detached worktree of ``commit`` at ``path`` (not existing yet),
    removed at the end of the run or by the returned undo step."""
    path = Path(path)
    undo = ctx.cleanup_cb(f"remove git worktree {path}", remove, path)  # before: an interrupted add is undone too
    cp = git("-c", "core.hooksPath=/dev/null", "worktree", "add", "--detach", str(path), commit, check=False)
    if cp.returncode != 0:
        raise RuntimeError(f"git worktree add {path} {commit}: {cp.stderr.strip()}")
    return undo
