"""One import namespace: the top-level folders install as proad.*, never as edge/export/kernels."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from conftest import REPO


def test_distribution_installs_only_the_proad_namespace() -> None:
    dist = metadata.distribution("proad-edge")
    top = (dist.read_text("top_level.txt") or "").split()
    assert top == ["proad"]
    extras = set(dist.metadata.get_all("Provides-Extra") or [])
    assert {"train", "onnx", "tensorrt", "dev"} <= extras


def test_subpackages_map_to_the_top_level_folders() -> None:
    for name, folder in (("proad.kernels", "kernels"), ("proad.export", "export"), ("proad.edge", "edge")):
        module = importlib.import_module(name)
        assert Path(module.__file__).parent == REPO / folder


def test_generic_names_are_not_importable_outside_the_checkout(tmp_path: Path) -> None:
    code = (
        "import importlib.util, sys\n"
        "sys.path = [p for p in sys.path if p not in ('', '.')]\n"
        "import proad.kernels\n"
        "print([n for n in ('edge', 'export', 'kernels') if importlib.util.find_spec(n)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layering_is_one_way() -> None:
    """DESIGN §1: model code never imports edge (or export) code; kernels import nothing of ours."""
    for path in (REPO / "proad").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("proad.edge", "proad.export", "edge", "export"))}
        assert not bad, f"{path} imports {bad}"
    for path in (REPO / "kernels").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith("proad") and not m.startswith("proad.kernels")}
        assert not bad, f"{path} imports {bad}"


def test_edge_never_imports_training_code() -> None:
    training = ("proad.train", "proad.loss", "proad.evaluate", "proad.metrics", "proad.cli", "proad.export")
    for path in (REPO / "edge").rglob("*.py"):
        bad = {m for m in _imports(path) if any(m == t or m.startswith(t + ".") for t in training)}
        assert not bad, f"{path} imports {bad}"


def test_edge_runtime_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['timm'] = None; sys.modules['tensorrt'] = None\n"
        "import proad.edge.daemon, proad.edge.subscriber, proad.edge.cli\n"
        "import proad.edge.backends.onnxruntime_backend, proad.edge.backends.tensorrt_backend\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
