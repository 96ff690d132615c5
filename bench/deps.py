"""A staged tree's runtime dependencies for the A/B (``--baseline``):
pyproject.toml's ``[project] dependencies``, at the versions the tree's
constraints.txt pins, placed into its site directory beside its package.
Copied from this interpreter's environment (the venv) when installed there
at that version, with what they require in turn; installed there by pip
otherwise (``--only-binary``, pip's cache or the package index).  So each
side brings what its own code imports, whatever the venv holds today
(scripts/bootstrap removes a library the working tree no longer needs), and
both sides import their libraries from their site alike."""

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip's copy
    from pip._vendor.packaging.requirements import Requirement


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(src):
    try:
        conf = tomllib.loads((Path(src) / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return [Requirement(s) for s in conf.get("project", {}).get("dependencies", [])]


def pins(src):
    """{canonical name: version} of the ``name==version`` lines of the tree's constraints.txt."""
    out = {}
    try:
        lines = (Path(src) / "constraints.txt").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def _applies(req):
    return req.marker is None or req.marker.evaluate({"extra": ""})


def _copy_distribution(dist, site):
    for f in dist.files or ():
        if ".." in f.parts or "__pycache__" in f.parts:
            continue  # scripts in bin/, bytecode (compiled again in the site)
        src = Path(dist.locate_file(f))
        if src.is_file():
            dst = Path(site) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def place(src, site):
    """Put the tree's dependencies into ``site``; returns [{name, version, how}]."""
    pinned = pins(src)
    todo = [r for r in declared(src) if _applies(r)]
    placed, missing, seen = [], [], set()
    while todo:
        req = todo.pop(0)
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        want = pinned.get(name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            dist = None
        if dist is not None and (dist.version == want if want else req.specifier.contains(dist.version, True)):
            _copy_distribution(dist, site)
            placed.append({"name": name, "version": dist.version, "how": "copied from the venv"})
            todo += [r for r in map(Requirement, dist.requires or ()) if _applies(r)]
        else:
            missing.append(f"{req.name}=={want}" if want else f"{req.name}{req.specifier}")
    if missing:
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-warn-script-location", "--only-binary", ":all:", "--target", str(site), *missing]
        if (Path(src) / "constraints.txt").is_file():
            argv[4:4] = ["-c", str(Path(src) / "constraints.txt")]
        cp = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        if cp.returncode != 0:
            raise RuntimeError(f"{src} needs {', '.join(missing)}, not in this environment, and pip could not "
                               f"install it: {cp.stderr.strip()[-1500:]}")
        shutil.rmtree(Path(site) / "bin", ignore_errors=True)
        wanted = {canonical(re.split(r"[=<>!~]", m)[0]) for m in missing}
        placed += [{"name": canonical(d.metadata["Name"]), "version": d.version, "how": "installed by pip"}
                   for d in md.distributions(path=[str(site)]) if canonical(d.metadata["Name"]) in wanted]
    return placed
