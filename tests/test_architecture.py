"""The shape of the code (docs/architecture.md): no import circle, imports only go down the layers, small
modules, and algorithms use only the public trainer API."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "partitions", "algorithms", "harness")
MAX_LINES = 400

# layer of each module prefix (longest prefix wins); an import may only go to the same or a lower layer
LAYERS = {
    "protocol": 0,
    "partitions": 1,
    "algorithms": 2,
    "harness.models": 3, "harness.plugins": 3, "harness.interrupts": 3, "harness.plots": 3, "harness": 3,
    "harness.config": 4,
    "harness.engine": 5, "harness.tracking": 5,
    "harness.studies": 6, "harness.reports": 6, "harness.tuning": 6,
    "harness.cli": 7,
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module imported anywhere in the file (lazy imports included), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_no_import_circle_anywhere():
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a circle between layers: drop parent -> child
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_imports_only_go_down_the_layers():
    bad = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
           for m, targets in _graph().items() for t in targets
           if _layer(t) > _layer(m) and not t.startswith(m + ".")]
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules().values()}
    long = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not long, long


def test_no_algorithm_touches_trainer_internals():
    """Algorithms use the trainer API (protocol.trainer.Trainer): no private attribute, no assignment to it."""
    offences = []
    for path in (ROOT / "algorithms").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trainer":
                if node.attr.startswith("_"):
                    offences.append(f"{path.name}:{node.lineno} trainer.{node.attr}")
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for elt in (t.elts if isinstance(t, ast.Tuple | ast.List) else [t]):
                    while isinstance(elt, ast.Subscript):  # trainer.x[i] = ... mutates trainer.x too
                        elt = elt.value
                    if isinstance(elt, ast.Attribute) and isinstance(elt.value, ast.Name) and elt.value.id == "trainer":
                        offences.append(f"{path.name}:{node.lineno} assigns trainer.{elt.attr}")
    assert not offences, offences


def test_the_trainer_implements_every_method_of_the_trainer_api():
    from harness.engine.training import LocalTrainer
    from protocol.trainer import Trainer

    wanted = {n for n in dir(Trainer) if not n.startswith("_")}
    missing = {n for n in wanted if not hasattr(LocalTrainer, n) and n not in LocalTrainer.__init__.__code__.co_names}
    assert not missing, missing
