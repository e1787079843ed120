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
