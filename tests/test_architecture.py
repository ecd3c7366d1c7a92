"""The package's shape: layers import one way (import-linter), no cycles, no private imports,
no module name used twice, every package and module described in docs/architecture.md.

The layer contract lives in pyproject.toml (``[tool.importlinter]``) and the README's test
command runs ``lint-imports``; these tests show that the contract catches a back-edge and check
what import-linter's layer contract does not: cycles inside a layer and imports of another
module's private names.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "rmtllmf"
LINT_IMPORTS = shutil.which("lint-imports")


def _lint_imports(root: Path, src: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS is not None
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [LINT_IMPORTS], cwd=root, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is a test extra")
def test_layer_contract_catches_a_back_edge(tmp_path: Path) -> None:
    """A copy of the package with channel importing the study breaks the contract (and the
    unmodified copy keeps it)."""
    shutil.copytree(SRC, tmp_path / "src" / "rmtllmf", ignore=shutil.ignore_patterns("*.so"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = _lint_imports(tmp_path, tmp_path / "src")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    units = tmp_path / "src" / "rmtllmf" / "channel" / "units.py"
    units.write_text(units.read_text() + "\nimport rmtllmf.study.sweep  # noqa: E402, F401\n")
    broken = _lint_imports(tmp_path, tmp_path / "src")
    assert broken.returncode != 0
    assert "rmtllmf.channel is not allowed to import rmtllmf.study" in broken.stdout
    assert "rmtllmf.channel.units -> rmtllmf.study.sweep" in broken.stdout


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    g = grimp.build_graph("rmtllmf")
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert _cycles(graph) == []


def _private_imports(source: str) -> list[str]:
    """``module.name`` of every ``from rmtllmf... import _name`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rmtllmf"):
            found += [
                f"{node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


def test_private_import_finder() -> None:
    source = "from rmtllmf.fusion import TaskVector, _hidden\nfrom rmtllmf import __version__\n"
    assert _private_imports(source) == ["rmtllmf.fusion._hidden"]


def test_no_module_imports_another_modules_private_names() -> None:
    found = {
        str(file.relative_to(SRC)): hits
        for file in sorted(SRC.rglob("*.py"))
        if (hits := _private_imports(file.read_text()))
    }
    assert found == {}


COMMANDS = {"reproduce", "export", "evaluate", "zoo"}
"""Commands whose two halves share a name: ``cli/<command>.py`` parses, ``app/<command>.py``
does the work (docs/architecture.md, "Names")."""


def _modules() -> list[Path]:
    return [
        p
        for p in SRC.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and "assets" not in p.parts
    ]


def _repeated_names(modules: list[Path]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for path in modules:
        by_name.setdefault(path.stem, []).append(str(path.parent.relative_to(SRC)))
    return {
        name: sorted(dirs)
        for name, dirs in by_name.items()
        if len(dirs) > 1 and not (name in COMMANDS and sorted(dirs) == ["app", "cli"])
    }


def test_the_name_check_finds_a_repeated_name(tmp_path: Path) -> None:
    paths = [tmp_path / "pools" / "tiny_vit.py", tmp_path / "models" / "tiny_vit.py"]
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        assert _repeated_names(paths) == {"tiny_vit": ["models", "pools"]}
        assert _repeated_names([tmp_path / "cli" / "zoo.py", tmp_path / "app" / "zoo.py"]) == {}
    finally:
        SRC = saved


def test_no_module_name_is_used_twice() -> None:
    assert _repeated_names(_modules()) == {}


def test_every_package_and_module_is_in_the_architecture_doc() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = [p.parent.relative_to(SRC) for p in SRC.rglob("__init__.py")]
    missing = [f"{p.name}/" for p in packages if p.parts and f"{p.name}/" not in doc]
    missing += [p.name for p in _modules() if p.name not in doc]
    assert not missing, f"docs/architecture.md does not describe {missing}"
