"""The package's shape: light modules stay light, imports form no cycles, layers point one way."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "selavpr_ros"
HEAVY = ("torch", "faiss", "onnxruntime", "rclpy", "cyclonedds", "cv2", "matplotlib")


def loaded_heavy(module: str) -> list[str]:
    """Heavy top-level packages in ``sys.modules`` after importing ``module`` in a fresh interpreter."""
    code = (
        f"import json, sys, {module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "selavpr_ros.node.params",  # what the rclpy node, the launch file and the CLI read first
        "selavpr_ros.types",
        "selavpr_ros.errors",
        "selavpr_ros.imaging",
        "selavpr_ros.retrieval.config",
        "selavpr_ros.loop_closure.config",
        "selavpr_ros.transport.image_decoding",
        "selavpr_ros.models",
        "selavpr_ros.models.registry",
        "selavpr_ros.inference",
        "selavpr_ros.mapdb",
        "selavpr_ros.cli",
    ],
)
def test_light_modules_load_no_heavy_dependency(module):
    assert loaded_heavy(module) == []


def test_onnx_backend_needs_no_torch():
    heavy = loaded_heavy("selavpr_ros.inference.onnx_backend")
    assert "torch" not in heavy and "faiss" not in heavy


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports, counting imports inside functions too."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
        graph.setdefault(name, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycles_between_subpackages():
    """Subpackages form layers (types -> models -> inference -> mapdb -> retrieval -> ... -> cli)."""
    layers: dict[str, set[str]] = defaultdict(set)

    def layer(module: str) -> str:
        return ".".join(module.split(".")[:2])

    for module, targets in import_graph().items():
        for target in targets:
            if layer(module) != layer(target) and target != "selavpr_ros":
                layers[layer(module)].add(layer(target))
    assert cycles(layers) == []


@pytest.mark.parametrize("lower,upper", [
    ("selavpr_ros.types", "selavpr_ros."),
    ("selavpr_ros.mapdb", "selavpr_ros.models"),
    ("selavpr_ros.mapdb", "selavpr_ros.inference"),
    ("selavpr_ros.retrieval", "selavpr_ros.models"),
    ("selavpr_ros.transport", "selavpr_ros.node"),
    ("selavpr_ros.loop_closure", "selavpr_ros.node"),
])
def test_lower_layers_do_not_import_upper_ones(lower, upper):
    offenders = {
        (m, t)
        for m, targets in import_graph().items()
        if m == lower or m.startswith(lower + ".")
        for t in targets
        if t.startswith(upper) and not t.startswith("selavpr_ros.errors") and not t.startswith("selavpr_ros.config")
        and t != lower and not t.startswith(lower + ".") and t != "selavpr_ros._version"
    }
    assert offenders == set()


def test_one_exception_hierarchy():
    """Every exception class the package defines lives in selavpr_ros/errors.py."""
    defined = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases
            ):
                defined.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert defined and all(d.startswith("selavpr_ros/errors.py:") for d in defined), defined


def test_every_subpackage_declares_its_api():
    """Each subpackage's ``__init__`` lists ``__all__``, and every listed name resolves."""
    import importlib

    for init in sorted(PACKAGE.glob("*/__init__.py")):
        name = _module_name(init)
        if name in ("selavpr_ros.ros", "selavpr_ros.models.methods"):
            continue  # rclpy wiring (importable only under ROS 2); the method modules register themselves
        module = importlib.import_module(name)
        assert getattr(module, "__all__", None), f"{name} has no __all__"
        if name in ("selavpr_ros.cli",):
            continue
        for attr in module.__all__:
            assert hasattr(module, attr), f"{name}.{attr}"
    assert (PACKAGE / "py.typed").is_file()
