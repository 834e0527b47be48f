"""The pure part may not reach for I/O, clocks or chance: walk every import it makes.

Pure: everything in actors/, and fabric's node.py, detector.py, codec.py and routing.py (what the
simulator runs unchanged). Dependency direction: actors import only actors; fabric imports
actors, storage and fabric; the gateway sits on top; only fabric/server/cli.py (the composition
root) may import the gateway.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Modules that do I/O (logging too: a side effect), read a clock, or draw unseeded randomness
# (uuid and secrets draw from the OS).
IMPURE = {
    "logging",
    "uuid",
    "secrets",
    "aiohttp",
    "asyncio",
    "lmdb",
    "os",
    "prometheus_client",
    "select",
    "selectors",
    "signal",
    "socket",
    "subprocess",
    "sys",
    "threading",
    "time",
    "urllib",
    "uvloop",
    "zmq",
    "datetime",
    "multiprocessing",
    "shutil",
    "tempfile",
    "pathlib",
    "io",
}
# `random` is allowed only to name and build seeded generators: random.Random(seed).
RANDOM_ALLOWED = {"Random"}


def pure_files() -> list[Path]:
    return sorted((ROOT / "actors").glob("*.py")) + sorted((ROOT / "fabric" / "core").glob("*.py"))


def imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def type_checking_lines(path: Path) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks: imports there never run."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_do_no_io(path: Path) -> None:
    skip = type_checking_lines(path)
    bad = [(m, n) for m, n in imports(path) if m.split(".")[0] in IMPURE and n not in skip]
    assert not bad, f"{path.relative_to(ROOT)} imports I/O or clock modules: {bad}"


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_draw_no_unseeded_randomness(path: Path) -> None:
    tree = ast.parse(path.read_text())
    uses = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random"
    }
    assert uses <= RANDOM_ALLOWED, f"{path.name} uses random.{sorted(uses - RANDOM_ALLOWED)}"
    from_random = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "random"
        for alias in node.names
    ]
    assert set(from_random) <= RANDOM_ALLOWED, f"{path.name} imports {from_random} from random"


# What each folder may import of ours (prefixes of module names).
ALLOWED = {
    "actors": ("syncfab.actors",),
    "fabric/core": ("syncfab.actors", "syncfab.fabric.core"),
    "fabric/client": ("syncfab.actors", "syncfab.fabric.core", "syncfab.fabric.client"),
    "fabric/server": (
        "syncfab.actors",
        "syncfab.fabric.core",
        "syncfab.fabric.client",
        "syncfab.fabric.server",
        "syncfab.storage",
    ),
    "storage": ("syncfab.actors", "syncfab.storage"),
}
COMPOSITION_ROOT = ROOT / "fabric" / "server" / "cli.py"


def ours(path: Path) -> list[str]:
    skip = type_checking_lines(path)
    found = [m for m, n in imports(path) if m.startswith("syncfab") and n not in skip]
    # `from syncfab.fabric import x` imports the module syncfab.fabric.x
    found += [
        f"{node.module}.{a.name}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module in ("syncfab", "syncfab.fabric")
        for a in node.names
    ]
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_the_layers_below(folder: str) -> None:
    bad = []
    for path in sorted((ROOT / folder).glob("*.py")):
        allowed = ALLOWED[folder] + (("syncfab.gateway",) if path == COMPOSITION_ROOT else ())
        bad += [
            f"{path.relative_to(ROOT)}: {m}"
            for m in ours(path)
            if m not in ("syncfab", "syncfab.fabric") and not m.startswith(allowed)
        ]
    assert not bad, bad


# -- holes a list of imports does not see ----------------------------------------------------

PACKAGES = ("actors", "fabric", "storage", "gateway")
# Third-party I/O that the pure layer and the simulator must run without.
IO_PACKAGES = ("lmdb", "zmq", "aiohttp", "uvloop", "prometheus_client")


def all_files() -> list[Path]:
    return [p for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize("path", all_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_relative_imports(path: Path) -> None:
    """A relative import hides which layer a module reaches into from the rules above."""
    rel = [
        n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.level
    ]
    assert not rel, f"{path.relative_to(ROOT)}: relative imports on lines {rel}"


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_seed_every_generator(path: Path) -> None:
    """``random.Random()`` with no seed is as unseeded as the module-level functions."""
    unseeded = [
        n.lineno
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Attribute) and n.func.attr == "Random")
            or (isinstance(n.func, ast.Name) and n.func.id == "Random")
        )
        and (not n.args or (isinstance(n.args[0], ast.Constant) and n.args[0].value is None))
    ]
    assert not unseeded, f"{path.relative_to(ROOT)}: unseeded Random() on lines {unseeded}"


def test_the_pure_layer_and_the_simulators_store_import_without_io_packages() -> None:
    """Import them in a fresh interpreter where lmdb, zmq, aiohttp... cannot be imported: a
    package ``__init__`` (or anything else) that pulls one in fails here."""
    modules = [
        f"syncfab.actors.{p.stem}" for p in sorted((ROOT / "actors").glob("*.py")) if p.stem != "__init__"
    ]
    modules += [f"syncfab.fabric.core.{p.stem}" for p in sorted((ROOT / "fabric" / "core").glob("*.py"))]
    modules += ["syncfab.storage.memory_store"]
    script = (
        "import importlib, importlib.abc, sys\n"
        f"BLOCKED = {IO_PACKAGES!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is I/O: not importable here')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m.replace('__init__', '').rstrip('.'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


ORDER_FREE_CALLS = ("sorted", "sum", "min", "max", "len", "any", "all", "set", "frozenset")


def _set_names(tree: ast.AST) -> set[str]:
    """Names and attributes this module annotates as sets."""
    names: set[str] = set()
    for n in ast.walk(tree):
        ann, target = None, None
        if isinstance(n, ast.AnnAssign):
            ann, target = n.annotation, n.target
        elif isinstance(n, ast.arg):
            ann, target = n.annotation, n
        if ann is None:
            continue
        text = ast.unparse(ann)
        if text.startswith(("set[", "frozenset[", "Set[", "AbstractSet[")):
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, ast.Attribute):
                names.add(target.attr)
            elif isinstance(target, ast.arg):
                names.add(target.arg)
    return names


def _iterates_a_set(expr: ast.expr, set_names: set[str]) -> bool:
    if isinstance(expr, ast.Set | ast.SetComp):
        return True
    if (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Name)
        and expr.func.id in ("set", "frozenset")
    ):
        return True
    if isinstance(expr, ast.Name):
        return expr.id in set_names
    if isinstance(expr, ast.Attribute):
        return expr.attr in set_names
    return False


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_do_not_iterate_sets_where_order_could_matter(path: Path) -> None:
    """A set of strings iterates in an order that changes with every process (hash seeds), so
    a replica or a simulation run would decide differently each time. Iterate ``sorted(...)``,
    a dict or a list; a loop whose order truly cannot matter says so with ``# order-free``."""
    text = path.read_text()
    tree = ast.parse(text)
    lines = text.splitlines()
    set_names = _set_names(tree)
    # A comprehension handed straight to sorted(), sum(), set()... gives the same answer in
    # any order.
    consumed = {
        id(arg)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ORDER_FREE_CALLS
        for arg in n.args
    }
    found = []
    for n in ast.walk(tree):
        if id(n) in consumed:
            continue
        iters = []
        if isinstance(n, ast.For):
            iters = [n.iter]
        elif isinstance(n, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            iters = [g.iter for g in n.generators]
        for it in iters:
            if _iterates_a_set(it, set_names) and "order-free" not in lines[it.lineno - 1]:
                found.append(f"line {it.lineno}: {lines[it.lineno - 1].strip()}")
    assert not found, f"{path.relative_to(ROOT)} iterates sets:\n" + "\n".join(found)
