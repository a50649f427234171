"""attngen's layers import one way only: ir <- frontend <- passes <- codegen <- runtime <- autotune <- API.

Every module's imports are read with ``ast`` (function-level and ``TYPE_CHECKING`` imports
included, since a late import is still a dependency), resolved to attngen modules, and
checked three ways: no import from a lower layer into a higher one, no cycle between
subpackages, and no cycle between modules. Nothing is imported, so the test costs a parse.

Top-level modules not named in ``LAYERS`` (a new ``attngen/foo.py`` or subpackage) count as
API: they may import anything below them, and nothing below may import them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "attngen"

# Lowest first. A unit is a subpackage or a top-level module; the API layer holds the rest.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("support", ("attngen._resources", "attngen._version")),  # where templates/ etc. live on disk; the version
    ("ir", ("attngen.ir",)),
    ("frontend", ("attngen.frontend",)),
    ("passes", ("attngen.passes",)),
    ("codegen", ("attngen.codegen",)),
    # the float64 oracle and its input synthesis sit beside the runtime: both validate inputs
    # through runtime/validate.py, and the deterministic tensor gradients reuse the oracle
    ("runtime", ("attngen.runtime", "attngen.reference", "attngen.testing")),
    ("autotune", ("attngen.autotune",)),
    # everything else is API, attngen.distributed included: it compiles the variants it
    # rewrites through compiler.py, and only `import attngen.distributed` loads it
]
API = "api"
ORDER = [name for name, _ in LAYERS] + [API]

# Imports that break the rule today, each with what removes it. The test fails on any
# violation not listed here, and on a listed one that no longer exists (delete its line).
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
    ("attngen.runtime.attention", "attngen.autotune.select"):
        "a call reads its launch config from tuning records; moving select/records/device into "
        "runtime/ (the tuner stays in autotune/) removes the runtime <-> autotune cycle",
}

# Module cycles kept on purpose: a function-level import of the module that implements it,
# inside one layer. Each entry names the importer and the late import.
DELEGATIONS: set[tuple[str, str]] = {
    ("attngen.ir.nodes", "attngen.ir.text"),  # Variant.to_text() and .label print through the text form
    ("attngen.ir.text", "attngen.ir.parse"),  # text.py's loads/load/canonical_expr hand over to the parser
    ("attngen.cli_cache", "attngen.cli"),  # the cache subcommand raises the CLI's CLIError
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The attngen modules ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` depends on the submodule pkg.sub when there is one, else on pkg
            targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import attngen.ir.nodes.X` -> the module
                target = target.rpartition(".")[0]
            if target.startswith("attngen") and target != name:
                found.add(target)
    return found


def unit_of(module: str) -> str:
    """The subpackage (``attngen.ir``) or top-level module (``attngen.cli``) holding ``module``."""
    return ".".join(module.split(".")[:2])


def layer_of(module: str) -> str:
    unit = unit_of(module)
    for layer, units in LAYERS:
        if unit in units:
            return layer
    return API


def import_graph() -> nx.DiGraph:
    modules = all_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in imports_of(name, path, modules))
    return graph


def graph_without_known(graph: nx.DiGraph) -> nx.DiGraph:
    pruned = graph.copy()
    pruned.remove_edges_from(edge for edge in KNOWN_VIOLATIONS if pruned.has_edge(*edge))
    return pruned


def is_package_root_import(importer: str, imported: str) -> bool:
    """``attngen/__init__`` imports its own subpackages; that edge is how a package works."""
    return imported.startswith(importer + ".") and "." not in imported[len(importer) + 1:]


def test_the_graph_sees_late_imports():
    # a function-level import must count: the layering broke through them before
    graph = import_graph()
    assert graph.has_edge("attngen.runtime.attention", "attngen.autotune.select") == \
        (("attngen.runtime.attention", "attngen.autotune.select") in KNOWN_VIOLATIONS)
    assert graph.has_edge("attngen.frontend.trace", "attngen.ir.text")  # imported inside a function
    assert graph.has_edge("attngen.codegen.render", "attngen.codegen.render_linear")


def test_no_import_from_a_lower_layer_into_a_higher_one():
    graph = graph_without_known(import_graph())
    upward = []
    for importer, imported in graph.edges:
        if is_package_root_import(importer, imported) and importer == "attngen":
            continue
        if ORDER.index(layer_of(imported)) > ORDER.index(layer_of(importer)):
            upward.append(f"{importer} ({layer_of(importer)}) imports {imported} ({layer_of(imported)})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def test_no_cycle_between_subpackages():
    graph = graph_without_known(import_graph())
    units = nx.DiGraph()
    subpackages = {unit_of(m) for m, path in all_modules().items() if path.name == "__init__.py"} - {"attngen"}
    for importer, imported in graph.edges:
        a, b = unit_of(importer), unit_of(imported)
        if a != b and {a, b} <= subpackages:
            units.add_edge(a, b)
    cycles = list(nx.simple_cycles(units))
    assert not cycles, "subpackages importing each other: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_no_cycle_between_modules():
    graph = graph_without_known(import_graph())
    # the root package's own imports of its subpackages are not dependencies of theirs
    graph.remove_edges_from([e for e in graph.edges if e[0] == "attngen"] + sorted(DELEGATIONS))
    loops = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not loops, "modules importing each other: " + "; ".join(", ".join(c) for c in loops)


@pytest.mark.parametrize("edge", sorted(KNOWN_VIOLATIONS) + sorted(DELEGATIONS), ids=lambda e: f"{e[0]}->{e[1]}")
def test_known_violations_still_exist(edge):
    assert import_graph().has_edge(*edge), f"{edge[0]} no longer imports {edge[1]}: delete its entry"


def test_every_subpackage_is_installed():
    """pyproject.toml lists packages by name: a subpackage missing there imports from a
    checkout but not from an installed wheel (attngen.distributed once was)."""
    import tomllib

    config = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(PACKAGE_DIR.parent).parts)
        for init in PACKAGE_DIR.rglob("__init__.py")
    }
    assert on_disk - listed == set(), f"add these to [tool.setuptools] packages: {sorted(on_disk - listed)}"
