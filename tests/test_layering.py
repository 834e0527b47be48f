"""The pure part may not reach for I/O, clocks or chance: walk every import it makes.

Pure: everything in actors/, and fabric's node.py, detector.py, codec.py and routing.py (what the
simulator runs unchanged). Dependency direction: actors import only actors; fabric imports
actors, storage and fabric; the gateway sits on top; only fabric/server/cli.py (the composition
root) may import the gateway.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Modules that do I/O, read a clock, or draw unseeded randomness.
IMPURE = {
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
