"""Orders and runs the compiler passes.

Each pass is a pure function ``KernelIR -> KernelIR`` registered with the facts it
``requires`` and ``provides``. The pipeline is the topological order of that dependency
graph (networkx, ties broken by name so the order is deterministic), computed once per
process for the registered passes: importing networkx costs 65-110 ms, more than lowering a
variant (2-8 ms), so it is imported only when an order is first needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..ir.kernel import KernelIR
from .errors import UnsupportedVariant

PassFn = Callable[[KernelIR], KernelIR]


@dataclass(frozen=True)
class Pass:
    name: str
    fn: PassFn
    requires: tuple[str, ...]
    provides: tuple[str, ...]
    doc: str


REGISTRY: dict[str, Pass] = {}


def compiler_pass(requires: Iterable[str] = (), provides: Iterable[str] = ()) -> Callable[[PassFn], PassFn]:
    """Register a pass; ``provides`` defaults to the pass's own name."""

    def register(fn: PassFn) -> PassFn:
        name = fn.__name__
        REGISTRY[name] = Pass(name, fn, tuple(requires), tuple(provides) or (name,),
                              (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        return fn

    return register


_REGISTERED_ORDER: tuple[tuple[str, ...], list[Pass]] | None = None  # (registered names, their order)


def pass_order(passes: dict[str, Pass] | None = None) -> list[Pass]:
    """The passes in dependency order; raises if a requirement has no provider or loops."""
    global _REGISTERED_ORDER
    if passes is None:
        names = tuple(REGISTRY)
        if _REGISTERED_ORDER is None or _REGISTERED_ORDER[0] != names:
            _REGISTERED_ORDER = (names, _dependency_order(REGISTRY))
        return list(_REGISTERED_ORDER[1])
    return _dependency_order(passes)


def _dependency_order(passes: dict[str, Pass]) -> list[Pass]:
    import networkx as nx

    providers = {fact: p.name for p in passes.values() for fact in p.provides}
    graph = nx.DiGraph()
    graph.add_nodes_from(passes)
    for p in passes.values():
        for need in p.requires:
            if need not in providers:
                raise RuntimeError(f"pass {p.name} requires '{need}', which no pass provides")
            graph.add_edge(providers[need], p.name)
    if not nx.is_directed_acyclic_graph(graph):
        raise RuntimeError(f"pass dependencies form a cycle: {nx.find_cycle(graph)}")
    return [passes[n] for n in nx.lexicographical_topological_sort(graph)]


def run_passes(ir: KernelIR, after_each: Callable[[str, KernelIR], None] | None = None) -> KernelIR:
    """Run every registered pass in order; ``after_each(name, ir)`` sees each result."""
    if after_each is not None:
        after_each("input", ir)
    for p in pass_order():
        try:
            ir = p.fn(ir).replace(passes=ir.passes + (p.name,))
        except RecursionError:  # sympy canonicalizing some conditions forever
            raise UnsupportedVariant(
                f"variant '{ir.name}': sympy cannot rewrite an expression of this variant (endless recursion "
                f"in pass {p.name}); restate the condition, e.g. move terms to one side") from None
        if after_each is not None:
            after_each(p.name, ir)
    return ir
