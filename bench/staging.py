"""A tree's code laid out as ``make install`` lays it out, for the A/B
(``--baseline``): both sides are staged the same way, each only from its
own files, so that they start the same way.

``stage_site(src, dest)``: the packages of pyproject.toml's
``[tool.setuptools.package-dir]`` (``locald_admin`` as is, ``mechanism/``
and ``client/`` below it), their ``.py`` files and ``py.typed``; every
``.c`` file in them compiled into an extension module beside it with the
Makefile's flags (so both sides' walk and scan of /proc are built alike,
and the working tree's in-place build plays no part).  Its dependencies go
beside it (bench/deps.py), then ``compile_bytecode``.
``import_check`` asks an interpreter started as the mechanism (or a client)
is where each module comes from, so a run cannot silently use the venv's
editable install of this checkout."""

import compileall
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

CFLAGS = ["-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit", "-fPIC", "-shared"]  # the Makefile's
DEFAULT_PACKAGE_DIRS = {"locald_admin": "locald_admin"}
MODULES = ("locald_admin", "locald_admin.busio", "locald_admin._cwire", "locald_admin.fs",
           "locald_admin.fs._cwalk", "locald_admin.fs._cprocscan", "locald_admin.mechanism", "locald_admin.mechanism.main",
           "locald_admin.client", "locald_admin.client.shim", "dbus_fast", "jeepney")

CHECK = r'''
import importlib, importlib.util, json, sys
out = {"executable": sys.executable, "modules": {}}
import locald_admin
out["version"] = getattr(locald_admin, "__version__", None)
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except Exception as e:
        spec = None
    out["modules"][name] = spec.origin if spec is not None else None
print(json.dumps(out))
'''


def package_dirs(src):
    """{package: directory relative to ``src``} from its pyproject.toml."""
    try:
        conf = tomllib.loads((src / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return dict(DEFAULT_PACKAGE_DIRS)
    dirs = conf.get("tool", {}).get("setuptools", {}).get("package-dir") or {}
    dirs = {k: v for k, v in dirs.items() if k}  # "" (a src layout's root) is not a package
    return dirs or dict(DEFAULT_PACKAGE_DIRS)


def _compile(c_source, out, built):
    """Build one extension module; ``built`` caches by the source's hash."""
    digest = hashlib.sha256(c_source.read_bytes()).hexdigest()
    if digest in built:
        shutil.copy2(built[digest], out)
        return
    cc = os.environ.get("CC", "cc")
    include = sysconfig.get_paths()["include"]
    cp = subprocess.run([cc, *CFLAGS, f"-I{include}", str(c_source), "-o", str(out)], capture_output=True,
                        text=True, stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise RuntimeError(f"building {c_source}: {cp.stderr.strip()[-2000:]}")
    built[digest] = out


def stage_site(src, dest, built=None, what=None):
    """Stage the packages of the tree at ``src`` into ``dest`` (created);
    returns what was staged: files, extension modules, a digest of the
    sources (equal digests: identical code) and each source's sha256."""
    src, dest = Path(src), Path(dest)
    built = {} if built is None else built
    have_cc = shutil.which(os.environ.get("CC", "cc")) is not None
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    digest = hashlib.sha256()
    files, extensions, hashes = [], [], {}
    for pkg, rel in sorted(package_dirs(src).items()):
        top = src / rel
        if not top.is_dir():
            continue
        target = dest.joinpath(*pkg.split("."))
        where = pkg.replace(".", "/")
        for path in sorted(top.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix not in (".py", ".c") and path.name != "py.typed":
                continue
            rel_path = path.relative_to(top)
            out = target / rel_path
            out.parent.mkdir(parents=True, exist_ok=True)
            data = path.read_bytes()
            digest.update(f"{where}/{rel_path}\0".encode() + data + b"\0")
            hashes[f"{where}/{rel_path}"] = hashlib.sha256(data).hexdigest()
            if path.suffix == ".c":
                if have_cc:
                    ext = out.with_name(path.stem + suffix)
                    _compile(path, ext, built)
                    extensions.append(str(ext.relative_to(dest)))
                continue
            shutil.copy2(path, out)
            files.append(f"{where}/{rel_path}")
    if "locald_admin/mechanism/__main__.py" not in files:
        raise RuntimeError(f"{what or src} has no mechanism package (locald_admin/mechanism/__main__.py) to run")
    return {"files": len(files), "extensions": extensions if have_cc else "no C compiler",
            "digest": digest.hexdigest(), "sha256": hashes}


def compile_bytecode(site):
    """The bytecode of everything in ``site``, as make install compiles it."""
    if not compileall.compile_dir(str(site), quiet=1):
        raise RuntimeError(f"compiling the bytecode in {site} failed")


def import_check(argv_prefix, env, cwd, site, run=None):
    """Where each of MODULES comes from for an interpreter started as
    ``argv_prefix`` with ``env`` in ``cwd`` (or through ``run(argv)``, a
    ClientRunner's); RuntimeError if locald_admin's modules come from
    anywhere but ``site``."""
    argv = ["-c", CHECK, *MODULES]
    if run is None:
        cp = subprocess.run([*argv_prefix, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
        stdout, stderr, rc = cp.stdout, cp.stderr, cp.returncode
    else:
        cp = run(argv)
        stdout, stderr, rc = (x.decode(errors="replace") if isinstance(x, bytes) else x
                              for x in (cp.stdout, cp.stderr, cp.returncode))
    if rc != 0:
        raise RuntimeError(f"import check failed: {stderr.strip()[-2000:]}")
    out = json.loads(stdout)
    site = os.path.realpath(site)
    wrong = {name: origin for name, origin in out["modules"].items()
             if name.startswith("locald_admin") and origin is not None
             and not os.path.realpath(origin).startswith(site + os.sep)}
    if wrong or out["modules"].get("locald_admin") is None:
        raise RuntimeError(f"modules not from {site}: {wrong or out['modules']}")
    return out


def mechanism_check(site):
    """The import check for a mechanism started as harness.mechanism starts
    it with ``site``: this interpreter, ``PYTHONPATH=site``, in ``site``."""
    return import_check([sys.executable], dict(os.environ, PYTHONPATH=str(site)), str(site), site)


def mapped_from(pid, site):
    """The locald_admin files process ``pid`` has mapped (its extension
    modules), and those not below ``site``."""
    site = os.path.realpath(site)
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return [], []
    paths = sorted({ln.split(None, 5)[5] for ln in lines if len(ln.split(None, 5)) == 6 and "locald_admin" in ln})
    return paths, [p for p in paths if not p.startswith(site + os.sep)]
