"""The structure docs/architecture.md describes, checked on the source:
no module imports a D-Bus library, the import graph reads from the
tree, and the two halves share code only through ``locald_admin/``.
Runs anywhere (it only parses files)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = sorted(p for d in ("locald_admin", "mechanism", "client") for p in (ROOT / d).rglob("*.py"))


def imports(path):
    """(level, module) of every import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


def rel(path):
    return str(path.relative_to(ROOT))


def test_the_product_imports_no_dbus_library_and_only_busio_imports_wire():
    """The product speaks D-Bus itself: no module imports a D-Bus library,
    and the codec is known to the connection (busio, and busproto, its
    Sans-I/O part the client's blocking connection shares) and to messages
    (for Variant) alone."""
    libraries = {rel(p) for p in PRODUCT
                 if any(m.split(".")[0] in ("dbus_next", "dbus_fast", "dbus", "jeepney", "sdbus", "pydbus", "gi")
                        for _, m in imports(p))}
    assert libraries == set()
    names_wire = re.compile(r"^(from (\.|locald_admin) import .*\bwire\b|from (\.|locald_admin\.)wire import"
                            r"|import locald_admin\.wire)", re.M)
    codec = {rel(p) for p in PRODUCT if names_wire.search(p.read_text())}
    assert codec == {"locald_admin/busio.py", "locald_admin/busproto.py", "locald_admin/messages.py"}


@pytest.mark.parametrize("path", PRODUCT, ids=rel)
def test_modules_import_their_own_folder_relatively_and_the_rest_by_full_name(path):
    """``from ..x`` inside mechanism/ or client/ names a folder that is not
    the parent on disk, and inside locald_admin/fs/ hides where it goes:
    only same-folder relative imports are allowed, everywhere in the
    product (docs/architecture.md, "Layout")."""
    assert all(level <= 1 for level, _ in imports(path)), rel(path)


@pytest.mark.parametrize("half, other", [("mechanism", "client"), ("client", "mechanism")])
def test_the_halves_do_not_import_each_other(half, other):
    for p in (ROOT / half).rglob("*.py"):
        assert not any(m.startswith(f"locald_admin.{other}") for _, m in imports(p)), rel(p)


def test_the_shared_package_imports_neither_half():
    for p in (ROOT / "locald_admin").rglob("*.py"):
        assert not any(m.startswith(("locald_admin.mechanism", "locald_admin.client")) for _, m in imports(p)), rel(p)


# The walk, one module per concern (docs/architecture.md, "The rooms" and
# "The walk"): what each may import of the others.  Data flows one way.
WALK_PARTS = {
    "report": set(),
    "removal": {"report"},
    "count": {"report"},
    "compiled": {"removal", "report"},
    "split": {"compiled", "report"},
    "walk": {"compiled", "removal", "report", "split"},
}


def fs_imports(path):
    """The modules of ``locald_admin/fs/`` that ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and not node.module:
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module == "locald_admin.fs":
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("locald_admin.fs."):
            names.add(node.module.split(".")[2])
    return names


@pytest.mark.parametrize("part", sorted(WALK_PARTS))
def test_the_walks_modules_import_one_way(part):
    """``report`` imports none of the walk's modules, no part imports
    ``walk`` (the entry point), and each imports only the parts below it."""
    got = fs_imports(ROOT / "locald_admin" / "fs" / f"{part}.py") & set(WALK_PARTS)
    assert got == WALK_PARTS[part], part


def test_every_module_of_fs_is_in_the_rooms_table():
    """Each module of ``locald_admin/fs/`` (and each C file) is named in
    "The rooms": a row of its own, or in the ``locald_admin/fs/`` row."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("## The rooms")
    rooms = text[start:text.index("\n## ", start + 1)]
    named = set(re.findall(r"`locald_admin/fs/(\w+)\.(?:py|c)`", rooms))
    named |= set(re.findall(r"`(_?\w+)(?:\.c)?`", rooms))
    on_disk = {p.stem for p in (ROOT / "locald_admin" / "fs").glob("*.py") if p.stem != "__init__"}
    on_disk |= {p.stem for p in (ROOT / "locald_admin" / "fs").glob("*.c")}
    assert on_disk - named == set()
