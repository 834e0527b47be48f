"""The pure part may not reach for I/O, clocks or chance: walk every import it makes.

Pure: everything in actors/, and fabric's node.py, detector.py, codec.py and routing.py (what the
simulator runs unchanged). Dependency direction: actors import only actors; fabric imports
actors, storage and fabric; the gateway sits on top; only fabric/cli.py (the composition
root) may import the gateway.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_FABRIC = ("node.py", "detector.py", "codec.py", "routing.py", "node_cache.py", "views.py", "balance.py")
# Modules that do I/O, read a clock, or draw unseeded randomness.
IMPURE = {
    "aiohttp", "asyncio", "lmdb", "os", "prometheus_client", "select", "selectors", "signal",
    "socket", "subprocess", "sys", "threading", "time", "urllib", "uvloop", "zmq", "datetime",
    "multiprocessing", "shutil", "tempfile", "pathlib", "io",
}
# `random` is allowed only to name and build seeded generators: random.Random(seed).
RANDOM_ALLOWED = {"Random"}


def pure_files() -> list[Path]:
    return sorted((ROOT / "actors").glob("*.py")) + [ROOT / "fabric" / f for f in PURE_FABRIC]


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


@pytest.mark.parametrize("path", sorted((ROOT / "actors").glob("*.py")), ids=lambda p: p.name)
def test_actors_import_only_actors(path: Path) -> None:
    ours = [m for m, _ in imports(path) if m.startswith("syncfab.")]
    assert all(m.startswith("syncfab.actors") for m in ours), f"{path.name} imports {ours}"


def test_pure_fabric_stays_below_the_runtime() -> None:
    for name in PURE_FABRIC:
        path = ROOT / "fabric" / name
        skip = type_checking_lines(path)
        ours = [m for m, n in imports(path) if m.startswith("syncfab.") and n not in skip]
        ours += [f"syncfab.fabric.{a.name}" for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module == "syncfab.fabric" for a in node.names]
        allowed = ("syncfab.actors", *(f"syncfab.fabric.{f.removesuffix('.py')}" for f in PURE_FABRIC))
        assert all(m.startswith(allowed) for m in ours), f"fabric/{name} imports {ours}"


def test_only_the_cli_imports_the_gateway() -> None:
    for path in sorted((ROOT / "fabric").glob("*.py")) + sorted((ROOT / "storage").glob("*.py")):
        if path.name == "cli.py":
            continue
        gateway = [m for m, _ in imports(path) if m.startswith("syncfab.gateway")]
        assert not gateway, f"{path.relative_to(ROOT)} imports the gateway: {gateway}"


def test_storage_does_not_import_the_runtime() -> None:
    for path in sorted((ROOT / "storage").glob("*.py")):
        ours = [m for m, _ in imports(path) if m.startswith(("syncfab.fabric", "syncfab.gateway"))]
        assert not ours, f"storage/{path.name} imports {ours}"
