"""Imports flow one way: no module imports from a layer above its own, lazily (inside a function) or not.

The layers, lowest first, as the README's layout lists them. The one exception is the adaptive attack
(``attacks/adaptive.py``), which must model the defense it attacks: it reuses the diffusion sampler and the
compensation of ``defenses/`` rather than writing them again.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eclipse_ray"
LAYERS = [
    ("foundation", ("config", "registry", "storage", "checkpoint", "boundary", "tensors", "result_store", "rng",
                    "figures", "provenance", "__init__")),
    ("data", ("data",)),
    ("victim", ("victim",)),
    ("attacks", ("attacks",)),
    ("models", ("diffusion", "ebm")),
    ("defenses", ("defenses",)),
    ("trial", ("trial", "presets")),
    ("orchestration", ("distributed", "certify")),
    ("results", ("results",)),
    ("entry points", ("cli", "doctor")),
]
ALLOWED = {("attacks.adaptive", "diffusion"), ("attacks.adaptive", "defenses")}


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"eclipse_ray.{module} is in no layer: add it to LAYERS (and the README's layout)")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module relative to eclipse_ray) of every eclipse_ray import in ``path``, in functions too."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eclipse_ray"):
            mod = node.module[len("eclipse_ray"):].lstrip(".")
            if not mod:  # from eclipse_ray import storage, result_store
                out += [(node.lineno, a.name) for a in node.names]
            else:
                out.append((node.lineno, mod))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name[len("eclipse_ray."):]) for a in node.names
                    if a.name.startswith("eclipse_ray.")]
    return out


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 60
    for path in files:
        me = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for line, target in imports(path):
            if layer_of(target) > layer_of(me) and (me, target.split(".")[0]) not in ALLOWED:
                upward.append(f"eclipse_ray/{path.relative_to(PACKAGE)}:{line} imports eclipse_ray.{target} "
                              f"({LAYERS[layer_of(me)][0]} -> {LAYERS[layer_of(target)][0]})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_scan_sees_lazy_imports_and_would_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from eclipse_ray.distributed.study import run_study\n    return run_study\n")
    assert imports(bad) == [(2, "distributed.study")]
    assert layer_of("distributed.study") > layer_of("data.cache")


def module_graph() -> dict[str, set[str]]:
    """eclipse_ray module -> the eclipse_ray modules it imports (lazy imports included; ``from pkg import
    sub`` resolved to the submodule where one exists)."""
    files = {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for me, path in files.items():
        deps = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eclipse_ray"):
                base = node.module[len("eclipse_ray"):].lstrip(".")
                for a in node.names:
                    sub = f"{base}.{a.name}".lstrip(".")
                    deps.add(sub if sub in files else base)
            elif isinstance(node, ast.Import):
                deps |= {a.name[len("eclipse_ray."):] for a in node.names if a.name.startswith("eclipse_ray.")}
        graph[me] = {d for d in deps if d in files and d != me and not me.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules_lazy_imports_included():
    """A package's ``__init__`` re-exporting its modules is not a cycle (a module importing its own package
    is ignored); any other loop — also one closed by an import inside a function — is."""
    found = cycles(module_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
