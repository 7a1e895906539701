"""gw's dependency structure: which way imports point, and which modules a process loads.

Dependencies point one way (docs/architecture.md, Processes): proxy → policies → state; config never imports
proxy; nothing imports the supervisor. The static tests read every module of gw/ and supervisor/
with ast, imports inside functions and under TYPE_CHECKING included, so the structure cannot rot
one convenient import at a time; the last test imports the supervisor for real.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.gateway import REPO

# Low to high: a module may import its own unit (a package or top-level module) and units of a
# lower layer, never of its own layer or above. Every unit of gw/ and supervisor/ is listed.
LAYERS: tuple[tuple[str, ...], ...] = (
    # Foundations, importing nothing of gw's.
    (
        "gw",
        "gw.errors",
        "gw.stdio",
        "gw.children",
        "gw.control",
        "gw.listen",
        "gw.titles",
        "gw.observe",
        "gw.admin",
        "gw.demo_upstream",
    ),
    ("gw.routing", "gw.balancing", "gw.auth"),  # the structures a compiled config is made of; JWT machinery
    ("gw.config",),  # parse → validate → compile
    ("gw.state",),  # Redis: config versions, guard, scripts; handed what it needs from the settings
    ("gw.settings",),  # GW_* variables (checks a Redis URL with gw.state)
    ("gw.policies",),
    ("gw.proxy",),
    ("gw.worker",),
    ("gw.gunicorn_worker", "gw.supervisor", "gw.controller"),
    ("gw.commands",),  # the CLI's verbs: read the settings, call config, state or the supervisor
    ("gw.cli",),
    ("gw.__main__",),
)
# The supervisor never proxies: it sits above the data plane's layers but must not import them.
DATA_PLANE = ("gw.proxy", "gw.policies", "gw.worker")
# Nothing imports the supervisor but the verbs that start it (`gw run`, `gw demo`). Its code is
# the top-level supervisor/ folder, imported as gw.supervisor (gw/__init__.py, pyproject.toml).
SUPERVISOR_IMPORTERS = ("gw.commands",)
# (importer unit, imported unit) pairs allowed under `if TYPE_CHECKING:` only, for a type hint
# that would otherwise point upwards. None so far.
TYPE_ONLY: frozenset[tuple[str, str]] = frozenset()

# Import name → folder. `supervisor` itself is supervisord's name: no module of ours may import it.
ROOTS = {"gw": REPO / "gw", "gw.supervisor": REPO / "supervisor"}
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}


@dataclass(frozen=True)
class Import:
    importer: str  # module names
    imported: str
    path: Path
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        where = f"{self.path.relative_to(REPO)}:{self.line}"
        return f"{where}: {self.importer} imports {self.imported}{' (TYPE_CHECKING)' if self.type_only else ''}"


def modules() -> Iterator[tuple[str, Path]]:
    for root, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            module = ".".join((root, *parts))
            if root == "gw" or module.startswith("gw.supervisor"):  # gw/supervisor, were it there, is not ours
                yield module, path


def unit(module: str) -> str:
    """The layered unit a module belongs to: gw.config for gw.config.loader, gw.worker for itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gw" else parts[0]


def is_module(name: str) -> bool:
    root = "gw.supervisor" if name.startswith("gw.supervisor") else name.split(".")[0]
    if root not in ROOTS:
        return False
    base = ROOTS[root].joinpath(*name.removeprefix(root).split(".")[1:])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


class _Imports(ast.NodeVisitor):
    """Every import of gw's own modules in one file, with whether it sits under `if TYPE_CHECKING:`."""

    def __init__(self, module: str, path: Path) -> None:
        self.module, self.path = module, path
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.found: list[Import] = []
        self.type_only = False

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            outer, self.type_only = self.type_only, True
            for child in node.body:
                self.visit(child)
            self.type_only = outer
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: resolved against this module's package
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            name = ".".join([*base, *([node.module] if node.module else [])])
        else:
            name = node.module or ""
        for alias in node.names:  # `from gw import cli` imports the module gw.cli
            self._add(node, f"{name}.{alias.name}" if self._ours(name) and is_module(f"{name}.{alias.name}") else name)

    def _ours(self, name: str) -> bool:
        return name.split(".")[0] in ("gw", "supervisor")

    def _add(self, node: ast.stmt, name: str) -> None:
        if self._ours(name):
            self.found.append(Import(self.module, name, self.path, node.lineno, self.type_only))


def imports() -> list[Import]:
    found: list[Import] = []
    for module, path in modules():
        visitor = _Imports(module, path)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        found += visitor.found
    return found


def test_every_unit_has_a_layer() -> None:
    units = {unit(module) for module, _ in modules()}
    assert sorted(units - LAYER.keys()) == [], "place each new package or module in LAYERS"
    assert sorted(LAYER.keys() - units) == [], "LAYERS names a unit that no longer exists"


def test_imports_point_down_the_layers() -> None:
    upwards = []
    for imp in imports():
        importer, imported = unit(imp.importer), unit(imp.imported)
        if imported not in LAYER:  # `supervisor`: supervisord's, wherever both are installed
            upwards.append(f"{imp}, which is not gw's")
            continue
        if importer == imported or LAYER[imported] < LAYER[importer]:
            continue
        if imp.type_only and (importer, imported) in TYPE_ONLY:
            continue
        upwards.append(str(imp))
    assert upwards == []


def test_the_proxy_policies_state_chain_and_config_below_them() -> None:
    """The directions docs/architecture.md names, whatever LAYERS says: the list must not drift from them."""
    assert LAYER["gw.proxy"] > LAYER["gw.policies"] > LAYER["gw.state"] > LAYER["gw.config"]


def test_nothing_imports_the_supervisor_but_the_commands_that_start_it() -> None:
    importers = {
        str(imp)
        for imp in imports()
        if unit(imp.imported) == "gw.supervisor" and unit(imp.importer) not in ("gw.supervisor", *SUPERVISOR_IMPORTERS)
    }
    assert importers == set()


def test_the_supervisor_imports_nothing_of_the_data_plane() -> None:
    supervisor = [imp for imp in imports() if unit(imp.importer) == "gw.supervisor"]
    found = [str(imp) for imp in supervisor if unit(imp.imported) in DATA_PLANE]
    assert found == []


def test_pyproject_installs_every_package_and_the_supervisor_as_gw_supervisor() -> None:
    """The package list is explicit (find cannot see a mapped folder): a new package must be in it."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"gw.supervisor": "supervisor"}
    folders = {
        ".".join((root, *path.relative_to(folder).parts))
        for root, folder in ROOTS.items()
        for path in (folder, *folder.rglob("*"))
        if path.is_dir() and path.name != "__pycache__" and (root == "gw") == (folder == ROOTS["gw"])
    }
    assert sorted(setuptools["packages"]) == sorted(folders)


def loaded_modules(statement: str, cwd: Path, path: str = str(REPO)) -> list[str]:
    """sys.modules after `statement` in a fresh interpreter running this checkout (PYTHONPATH=path).

    Run in `cwd`, not the checkout: `python -c` puts its working directory first on sys.path.
    """
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_the_supervisor_loads_no_data_plane_module(tmp_path: Path) -> None:
    """What the supervisor process loads: none of the proxy's modules, nor httptools under them."""
    modules = loaded_modules("import gw.supervisor.arbiter", tmp_path)
    assert "gw.supervisor.arbiter" in modules
    assert "supervisor" not in modules  # supervisord's name
    data_plane = (*DATA_PLANE, "httptools")
    assert [m for m in modules if m in data_plane or m.startswith(tuple(p + "." for p in data_plane))] == []


def test_gw_runs_beside_supervisords_package(tmp_path: Path) -> None:
    """supervisord's `supervisor` package first on the path: `gw run` still finds its supervisor,
    and `import supervisor` still means supervisord's."""
    (tmp_path / "supervisor").mkdir()
    (tmp_path / "supervisor" / "__init__.py").write_text("SUPERVISORD = True\n")
    path = f"{tmp_path}{os.pathsep}{REPO}"
    modules = loaded_modules("import gw.supervisor.arbiter, supervisor; assert supervisor.SUPERVISORD", tmp_path, path)
    assert "gw.supervisor.arbiter" in modules
    env = {**os.environ, "PYTHONPATH": path, "GW_CONFIG": ""}
    run = subprocess.run(
        [sys.executable, "-m", "gw", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    # The supervisor loaded and said what is missing (it asks for GW_CONFIG before anything starts).
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("gw: GW_CONFIG is not set"), run.stderr
